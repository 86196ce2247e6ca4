"""Reshaping helpers for per-tensor and per-channel statistics along any axis."""

from __future__ import annotations

import torch


def channels_first(x: torch.Tensor, axis: int | None) -> torch.Tensor:
    """View ``x`` as (channels, values): one row per channel, or a single row when ``axis`` is None."""
    if axis is None:
        return x.reshape(1, -1)
    return x.movedim(axis, 0).reshape(x.shape[axis], -1)


def broadcast_to_axis(p: torch.Tensor, x: torch.Tensor, axis: int | None) -> torch.Tensor:
    """Shape a per-channel parameter (C,) so that it broadcasts against ``x`` along ``axis``."""
    if axis is None or p.numel() == 1:
        return p.reshape(())
    shape = [1] * x.dim()
    shape[axis] = -1
    return p.reshape(shape)
