"""Refit a trained dual encoder's zero-shot head on a frozen image body (minutes on cached features).

Zero-shot evaluation builds each class vector from prompts with the class's own name only, while
the main loss of train_clip_tiny.py targets the ensemble of all its captions, WordNet synonyms
included. The body learns fine, but the text projection learns to point the synonym-rich
ensemble at each class's images, not the plain-name prompts a user (and the evaluation) writes.
This stage freezes the ViT body, computes its final-LayerNorm [CLS] features once for a clean
and a few augmented views of every training image, and trains only the head (image pooler,
both projections, temperature) against class vectors made from training templates with the
primary name. No evaluation template is used.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from tqdm import tqdm

import zoo_training as zt


@torch.no_grad()
def cache_features(features: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor, labels: torch.Tensor,
                   aug: zt.AugConfig, seed: int, views: int, batch: int = 500) -> tuple[torch.Tensor, torch.Tensor]:
    """``features`` of the clean images and of ``views`` augmented copies (seeded); fp32 plus labels."""
    out = [zt.batched(features, images, batch)]
    for view in range(views):
        g = zt.epoch_generator(seed, 10_000 + view)  # far from the training epochs' generators
        parts = []
        for i in tqdm(range(0, len(images), batch), desc=f"refit view {view + 1}/{views}", mininterval=10, leave=False):
            with torch.autocast("cpu", dtype=torch.bfloat16):
                parts.append(features(zt.augment(images[i : i + batch], g, aug)).float())
        out.append(torch.cat(parts))
    return torch.cat(out), labels.repeat(views + 1)


def refit(params: list[torch.nn.Parameter], logits: Callable[[torch.Tensor], torch.Tensor | tuple[torch.Tensor, ...]],
          feats: torch.Tensor, labels: torch.Tensor, seed: int, epochs: int, lr: float, batch: int,
          evaluate: Callable[[], dict]) -> dict:
    """Cross-entropy on ``logits(features)``, AdamW one-cycle over ``params`` only; returns the history.

    ``logits`` may return several logit tensors (the same images scored against different class
    vectors); the loss is then the mean of their cross-entropies."""
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    steps = len(feats) // batch
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, lr, total_steps=epochs * steps, pct_start=0.1)
    history = [{"epoch": 0, **evaluate()}]
    print("refit", history[0], flush=True)
    for epoch in range(epochs):
        g = zt.epoch_generator(seed, 20_000 + epoch)
        order = torch.randperm(len(feats), generator=g)
        total = 0.0
        for step in tqdm(range(steps), desc=f"refit epoch {epoch + 1}/{epochs}", mininterval=10, leave=False):
            idx = order[step * batch : (step + 1) * batch]
            loss = mean_cross_entropy(logits(feats[idx]), labels[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            total += loss.item()
        history.append({"epoch": epoch + 1, "loss": round(total / steps, 4), **evaluate()})
        print("refit", history[-1], flush=True)
    return {"epochs": epochs, "lr": lr, "batch": batch, "history": history}


def mean_cross_entropy(logits: torch.Tensor | tuple[torch.Tensor, ...], labels: torch.Tensor) -> torch.Tensor:
    parts = (logits,) if isinstance(logits, torch.Tensor) else logits
    return torch.stack([F.cross_entropy(part, labels) for part in parts]).mean()
