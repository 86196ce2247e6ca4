"""Metrics from scores: top-k accuracy, retrieval recall@k, cosine similarity, agreement.

Ties are counted against the model: a target is "in the top k" only if fewer than k wrong
candidates score at least as high. A collapsed model (all scores equal) therefore scores 0, not a
lucky k/N.
"""

from __future__ import annotations

from typing import Sequence

import torch


def topk_accuracy(scores: torch.Tensor, targets: torch.Tensor, ks: Sequence[int] = (1, 5)) -> dict[str, float]:
    """``{"top1": …, "top5": …}`` for scores ``[N, C]`` and integer targets ``[N]`` (fractions in [0, 1])."""
    scores = scores.float()
    targets = torch.as_tensor(targets, dtype=torch.long)
    if len(targets) == 0:
        return {f"top{k}": float("nan") for k in ks}
    true = scores.gather(1, targets.view(-1, 1))
    rivals = (scores >= true).sum(1) - 1  # wrong classes scoring at least as high as the right one
    return {f"top{k}": (rivals < k).double().mean().item() for k in ks}


def retrieval_recall(similarity: torch.Tensor, caption_image: Sequence[int] | torch.Tensor,
                     ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
    """Recall@k both ways for a similarity matrix ``[images, captions]``.

    ``caption_image[j]`` is the image caption ``j`` describes. Image→text counts a hit when any of the
    image's captions is in its top k; text→image when the caption's image is in its top k.
    """
    sim = similarity.float()
    owner = torch.as_tensor(caption_image, dtype=torch.long)
    n_images, n_texts = sim.shape
    match = owner.view(1, -1) == torch.arange(n_images).view(-1, 1)  # [images, captions]
    # image → text: the best-scoring correct caption against all wrong ones
    best = sim.masked_fill(~match, float("-inf")).max(1, keepdim=True).values
    i2t_rivals = ((sim >= best) & ~match).sum(1)
    # text → image: the caption's own image against all other images
    true = sim.gather(0, owner.view(1, -1))
    t2i_rivals = (sim >= true).sum(0) - 1
    out = {}
    for k in ks:
        out[f"i2t_r{k}"] = (i2t_rivals < k).double().mean().item()
    for k in ks:
        out[f"t2i_r{k}"] = (t2i_rivals < k).double().mean().item()
    return out


def cosine_stats(a: torch.Tensor, b: torch.Tensor) -> dict[str, float]:
    """Row-wise cosine similarity of two ``[N, D]`` tensors: mean and min."""
    cos = torch.nn.functional.cosine_similarity(a.float(), b.float(), dim=1)
    return {"cosine": cos.mean().item(), "cosine_min": cos.min().item()}


def agreement(scores_a: torch.Tensor, scores_b: torch.Tensor) -> float:
    """Fraction of rows where both score matrices pick the same top-1."""
    return (scores_a.argmax(1) == scores_b.argmax(1)).double().mean().item()


def normalize(x: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.normalize(x.float(), dim=-1)
