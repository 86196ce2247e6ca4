"""Logarithmic quantizers for post-Softmax values in [0, 1].

log2:     A_q = clip(round(-log2(A / s)), 0, 2^b - 1),      A' = s * 2^(-A_q)
log-sqrt2: A_q = clip(round(-log_sqrt2(A / s)), 0, 2^b - 1), A' = s * sqrt(2)^(-A_q)

Values too small for the last level (and exact zeros) dequantize to 0, as in RepQ-ViT and FQ-ViT.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .uniform import check_bits

_BASE_LOG2 = {"log2": 1.0, "logsqrt2": 0.5}  # log2(base) for each kind


class LogQuantizer(nn.Module):
    """Power-of-base quantizer: base 2 (``kind="log2"``) or sqrt(2) (``kind="logsqrt2"``)."""

    def __init__(self, bits: int = 4, kind: str = "log2"):
        super().__init__()
        if kind not in _BASE_LOG2:
            raise ValueError(f"unknown log quantizer {kind!r}: use one of {sorted(_BASE_LOG2)}")
        self.kind = kind
        self.bits = check_bits(bits)
        self.axis = None
        self.symmetric = False
        # Softmax outputs are at most 1; calibration may set a smaller scale.
        self.register_buffer("scale", torch.ones(1))

    calibrated = True

    def set_range(self, lo, hi) -> None:
        self.scale = torch.as_tensor(hi, dtype=torch.float32).reshape(-1).max().clamp_min(1e-8).reshape(1)

    def quantize(self, x: torch.Tensor) -> torch.Tensor:
        """Integer exponents; values beyond the last level get 2^b (a code meaning zero)."""
        levels = 2**self.bits - 1
        ratio = (x / self.scale).clamp_min(1e-30)
        q = torch.round(-torch.log2(ratio) / _BASE_LOG2[self.kind])
        q = torch.clamp(q, min=0)
        q = torch.where((q > levels) | (x <= 0), torch.full_like(q, levels + 1), q)
        return q.to(torch.int32)

    def dequantize(self, q: torch.Tensor) -> torch.Tensor:
        levels = 2**self.bits - 1
        value = self.scale * torch.pow(2.0, -q.float() * _BASE_LOG2[self.kind])
        return torch.where(q > levels, torch.zeros_like(value), value)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        deq = self.dequantize(self.quantize(x.detach()))
        return x + (deq - x).detach()  # straight-through

    def extra_repr(self) -> str:
        base = "2" if self.kind == "log2" else f"{math.sqrt(2):.4f}"
        return f"bits={self.bits}, base={base}, scale={float(self.scale):.4g}"
