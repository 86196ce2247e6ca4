"""Stochastic depth (Huang et al. 2016; DeiT's "drop path") for the reference models' HF ViT.

transformers' ``ViTLayer`` passes each residual branch (attention, then MLP) through
``self.dropout`` just before adding it to the residual stream, so swapping that module for
``DropPath`` drops whole branches per sample: exactly stochastic depth. The rate grows linearly
with depth, from 0 at the first block to ``--drop-path`` at the last (DeiT-Ti uses 0.1).

Draws come from the epoch generator (``train_loop`` hands it over each epoch), so runs stay
deterministic and resumable; with ``--drop-path 0`` nothing is swapped and nothing is drawn.
DropPath holds no tensors: checkpoints and exported weights are those of the plain ViT.
"""

from __future__ import annotations

import torch


class DropPath(torch.nn.Module):
    """Zero a sample's branch with probability ``rate`` while training, scale kept ones by 1/(1-rate)."""

    def __init__(self, rate: float):
        super().__init__()
        if not 0.0 <= rate < 1.0:
            raise ValueError(f"drop-path rate must lie in [0, 1), got {rate}")
        self.rate = rate
        self.generator: torch.Generator | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.rate == 0.0:
            return x
        if self.generator is None:
            raise RuntimeError("DropPath draws from a generator: call use_generator(model, g) before training")
        keep = torch.rand(x.shape[0], generator=self.generator) >= self.rate
        mask = keep.to(device=x.device, dtype=x.dtype).view(-1, *([1] * (x.dim() - 1)))
        return x * mask / (1.0 - self.rate)

    def extra_repr(self) -> str:
        return f"rate={self.rate:.4f}"


def add_drop_path(layers, rate: float) -> list[float]:
    """Swap each ``ViTLayer.dropout`` for DropPath, rates linear in depth up to ``rate``; returns them.

    Refuses layers whose dropout is live (``hidden_dropout_prob`` > 0): the swap would remove it.
    """
    layers = list(layers)
    if rate == 0.0:
        return [0.0] * len(layers)
    rates = [rate * i / max(len(layers) - 1, 1) for i in range(len(layers))]
    for layer, r in zip(layers, rates):
        dropout = getattr(layer, "dropout", None)
        if not isinstance(dropout, torch.nn.Dropout) or dropout.p != 0.0:
            raise ValueError(f"{type(layer).__name__} has no zero-rate dropout before its residual adds to swap "
                             "for DropPath; use hidden_dropout_prob=0 with --drop-path")
        layer.dropout = DropPath(r)
    return rates


def use_generator(model: torch.nn.Module, g: torch.Generator) -> None:
    """Point every DropPath of ``model`` at ``g`` (the epoch generator)."""
    for module in model.modules():
        if isinstance(module, DropPath):
            module.generator = g
