"""Integer weight storage: codes shifted to unsigned and, at 4 bits or fewer, two per byte."""

from __future__ import annotations

import torch


def pack_codes(q: torch.Tensor, bits: int, qmin: int) -> torch.Tensor:
    """Integer codes in [qmin, qmin + 2^bits) → uint8 bytes (two 4-bit values per byte when bits <= 4)."""
    u = (q.reshape(-1).to(torch.int32) - qmin).to(torch.uint8)
    if bits > 4:
        return u
    if u.numel() % 2:
        u = torch.cat([u, torch.zeros(1, dtype=torch.uint8)])
    return u[0::2] | (u[1::2] << 4)


def unpack_codes(packed: torch.Tensor, bits: int, qmin: int, shape) -> torch.Tensor:
    """Inverse of :func:`pack_codes`: int32 codes of the given shape."""
    numel = 1
    for d in shape:
        numel *= int(d)
    if bits > 4:
        u = packed.to(torch.int32)
    else:
        low = (packed & 0x0F).to(torch.int32)
        high = (packed >> 4).to(torch.int32)
        u = torch.stack([low, high], dim=1).reshape(-1)
    return (u[:numel] + qmin).reshape(tuple(shape))
