"""Where a model's tensors live, and moving nested inputs (tensors in tuples, lists, dicts) there:
calibration, reconstruction, training and evaluation run on the model's device and dtype."""

from __future__ import annotations

import torch
from torch import nn


def device_of(module: nn.Module) -> torch.device:
    for p in module.parameters():
        return p.device
    for b in module.buffers():
        return b.device
    return torch.device("cpu")


def dtype_of(module: nn.Module) -> torch.dtype:
    """The floating dtype of the module's parameters (float32 when it has none)."""
    for p in module.parameters():
        if p.is_floating_point():
            return p.dtype
    return torch.float32


def to_device(obj, device: torch.device | str | None = None, dtype: torch.dtype | None = None):
    """``obj`` with every tensor on ``device``, floating tensors also in ``dtype`` (ids and masks
    keep theirs)."""
    if isinstance(obj, torch.Tensor):
        if dtype is not None and obj.is_floating_point():
            return obj.to(device=device, dtype=dtype)
        return obj.to(device) if device is not None else obj
    if isinstance(obj, tuple):
        return tuple(to_device(o, device, dtype) for o in obj)
    if isinstance(obj, list):
        return [to_device(o, device, dtype) for o in obj]
    if isinstance(obj, dict):
        return {k: to_device(v, device, dtype) for k, v in obj.items()}
    return obj
