"""Losses for training and distillation from a full-precision teacher."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def soft_distillation(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """KL(teacher ‖ student) of the temperature-softened distributions, times T² (Hinton et al.)."""
    t = temperature
    return F.kl_div(F.log_softmax(student_logits / t, -1), F.log_softmax(teacher_logits / t, -1), log_target=True,
                    reduction="batchmean") * (t * t)


def soft_cross_entropy(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """Cross-entropy between the teacher's softmax and the student's (P4Q's L_kd): the KL above plus
    the teacher's entropy, which has no gradient."""
    return -(F.softmax(teacher_logits, -1) * F.log_softmax(student_logits, -1)).sum(-1).mean()


def hard_distillation(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """Cross-entropy against the teacher's top class (DeiT's hard distillation)."""
    return F.cross_entropy(student_logits, teacher_logits.argmax(-1))


def feature_distillation(student: torch.Tensor, teacher: torch.Tensor, kind: str = "mse") -> torch.Tensor:
    """Match features: ``mse``, or ``cosine`` (1 - cosine similarity, per sample)."""
    if kind == "mse":
        return F.mse_loss(student, teacher)
    if kind == "cosine":
        return (1 - F.cosine_similarity(student.flatten(1), teacher.flatten(1), dim=-1)).mean()
    raise ValueError(f"unknown feature distillation {kind!r}: use mse or cosine")


def contrastive(image_embeds: torch.Tensor, text_embeds: torch.Tensor, logit_scale: torch.Tensor | float) -> torch.Tensor:
    """CLIP's symmetric image-text InfoNCE over the batch (pair i matches pair i)."""
    img = F.normalize(image_embeds, dim=-1)
    txt = F.normalize(text_embeds, dim=-1)
    scale = logit_scale.exp() if isinstance(logit_scale, torch.Tensor) else float(logit_scale)
    logits = scale * img @ txt.T
    target = torch.arange(len(logits), device=logits.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))
