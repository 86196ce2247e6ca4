"""Rounding with a straight-through gradient: forward rounds, backward is the identity."""

import torch


def round_ste(x: torch.Tensor) -> torch.Tensor:
    """Round to nearest (ties to even, like ``torch.round``) with gradient 1."""
    return x + (torch.round(x) - x).detach()


def floor_ste(x: torch.Tensor) -> torch.Tensor:
    """Floor with gradient 1."""
    return x + (torch.floor(x) - x).detach()
