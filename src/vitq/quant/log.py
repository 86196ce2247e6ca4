"""Logarithmic quantizers for post-Softmax values in [0, 1].

- ``log2``:       A_q = clip(round(-log2(A / s)), 0, 2^b - 1),       A' = s * 2^(-A_q)
- ``logsqrt2``:   A_q = clip(round(-log_sqrt2(A / s)), 0, 2^b - 1),  A' = s * sqrt(2)^(-A_q)
- ``log2_parity``: RepQ-ViT's reparameterized log-sqrt2 (Eq. 18-20): the same codes, dequantized
  as A' = s_parity * 2^(-ceil(A_q / 2)) with s_parity = s for even codes and sqrt(2) * s for odd
  ones, so A'·V needs only bit shifts of V and one of two scales. It gives the same values as
  ``logsqrt2``.

Values too small for the last level (and exact zeros) dequantize to 0, as in RepQ-ViT and FQ-ViT.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .uniform import check_bits

SQRT2 = math.sqrt(2.0)


def log_codes(x: torch.Tensor, scale: torch.Tensor, bits: int, step: float) -> torch.Tensor:
    """Integer exponents; values beyond the last level get the code 2^b, which means zero."""
    levels = 2**bits - 1
    ratio = (x / scale).clamp_min(1e-30)
    q = torch.clamp(torch.round(-torch.log2(ratio) / step), min=0)
    return torch.where((q > levels) | (x <= 0), torch.full_like(q, levels + 1), q)


def parity_scales(scale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """RepQ-ViT's two de-quantization scales of a log-sqrt2 quantizer: even codes, odd codes."""
    return scale, scale * SQRT2


class LogQuantizer(nn.Module):
    """Power-of-base quantizer (see the module docstring for the three kinds).

    ``LogQuantizer(bits, kind)`` builds the subclass of that kind (:class:`Log2Quantizer`,
    :class:`LogSqrt2Quantizer`, :class:`ParityLog2Quantizer`).
    """

    kind = "log"
    step = 1.0  # log2 of the base whose powers the codes count

    def __new__(cls, bits: int = 4, kind: str | None = None):
        if cls is LogQuantizer:
            if kind not in LOG_KINDS:
                raise ValueError(f"unknown log quantizer {kind!r}: use one of {sorted(LOG_KINDS)}")
            cls = LOG_KINDS[kind]
        return super().__new__(cls)

    def __init__(self, bits: int = 4, kind: str | None = None):
        super().__init__()
        if kind is not None and kind != self.kind:
            raise ValueError(f"{type(self).__name__} is a {self.kind} quantizer, not {kind}")
        self.bits = check_bits(bits)
        self.axis = None
        self.symmetric = False
        # Softmax outputs are at most 1; calibration may set a smaller scale.
        self.register_buffer("scale", torch.ones(1))

    calibrated = True

    def set_range(self, lo, hi) -> None:
        self.scale = torch.as_tensor(hi, dtype=torch.float32).reshape(-1).max().clamp_min(1e-8).reshape(1)

    def quantize(self, x: torch.Tensor) -> torch.Tensor:
        return log_codes(x, self.scale, self.bits, self.step).to(torch.int32)

    def _values(self, q: torch.Tensor) -> torch.Tensor:
        return self.scale * torch.pow(2.0, -q.float() * self.step)

    def dequantize(self, q: torch.Tensor) -> torch.Tensor:
        value = self._values(q)
        return torch.where(q > 2**self.bits - 1, torch.zeros_like(value), value)

    def simulate(self, rows: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
        """Fake-quantize with scale ``hi`` (used by range searches), leaving this quantizer as it is."""
        scale = hi.reshape(-1, 1).clamp_min(1e-8)
        q = log_codes(rows, scale, self.bits, self.step)
        value = scale * torch.pow(2.0, -q * self.step)
        return torch.where(q > 2**self.bits - 1, torch.zeros_like(value), value)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        deq = self.dequantize(self.quantize(x.detach()))
        return x + (deq - x).detach()  # straight-through

    def _base(self) -> str:
        return "2"

    def extra_repr(self) -> str:
        return f"bits={self.bits}, base={self._base()}, scale={float(self.scale):.4g}"


class Log2Quantizer(LogQuantizer):
    """A' = s * 2^(-A_q)."""

    kind = "log2"


class LogSqrt2Quantizer(LogQuantizer):
    """A' = s * sqrt(2)^(-A_q): twice the resolution of log2 near 1."""

    kind = "logsqrt2"
    step = 0.5

    def _base(self) -> str:
        return f"{SQRT2:.4f}"

    def to_parity(self) -> "ParityLog2Quantizer":
        """RepQ-ViT's reparameterization: the same codes and values, as shift-only log2."""
        out = ParityLog2Quantizer(self.bits)
        out.scale = self.scale.detach().clone()
        return out


class ParityLog2Quantizer(LogQuantizer):
    """RepQ-ViT's log-sqrt2 as 2^(-ceil(A_q / 2)) with a parity-dependent scale (see the module
    docstring): the values of :class:`LogSqrt2Quantizer`, computed with shifts."""

    kind = "log2_parity"
    step = 0.5

    def _values(self, q: torch.Tensor) -> torch.Tensor:
        even, odd = parity_scales(self.scale)
        return torch.where(q % 2 == 1, odd, even) * torch.pow(2.0, -torch.ceil(q.float() / 2))

    def _base(self) -> str:
        return "2 (parity scales)"


LOG_KINDS = {cls.kind: cls for cls in (Log2Quantizer, LogSqrt2Quantizer, ParityLog2Quantizer)}
