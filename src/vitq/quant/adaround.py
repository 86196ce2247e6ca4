"""AdaRound (Nagel et al., ICML 2020): learn, for each weight, whether it rounds up or down.

A calibrated uniform quantizer (scale s, zero-point z) keeps its grid; the rounding of W/s becomes
floor(W/s) + h(V) with a soft variable V per weight and the rectified sigmoid
h(V) = clip(sigmoid(V)(zeta - gamma) + gamma, 0, 1), zeta = 1.1, gamma = -0.1. V starts where h(V)
equals the fractional part of W/s, so the soft quantizer starts at the float weight's own value.
The regulariser sum(1 - |2h(V) - 1|^b), with b annealed from large to small, pushes every h(V) to
0 or 1; :meth:`AdaRoundQuantizer.codes` then takes the hard decision V >= 0.
"""

from __future__ import annotations

import torch
from torch import nn

from .channels import broadcast_to_axis
from .uniform import UniformQuantizer, int_range

ZETA, GAMMA = 1.1, -0.1


def rectified_sigmoid(v: torch.Tensor) -> torch.Tensor:
    return torch.clamp(torch.sigmoid(v) * (ZETA - GAMMA) + GAMMA, 0.0, 1.0)


def rounding_regularizer(v: torch.Tensor, b: float) -> torch.Tensor:
    """AdaRound's f_reg: zero when every soft rounding is 0 or 1, largest at 1/2."""
    return (1 - (2 * rectified_sigmoid(v) - 1).abs().pow(b)).sum()


class AdaRoundQuantizer(nn.Module):
    """Soft (training) or hard (final) learned rounding of one weight tensor on ``base``'s grid."""

    kind = "uniform"

    def __init__(self, base: UniformQuantizer, weight: torch.Tensor):
        super().__init__()
        if not base.calibrated:
            raise RuntimeError("AdaRound needs a calibrated weight quantizer (its scale fixes the grid)")
        self.base = base
        self.bits, self.symmetric, self.axis = base.bits, base.symmetric, base.axis
        self.soft = True
        scaled = weight.detach().float() * (1.0 / self._scale(weight))
        rest = (scaled - torch.floor(scaled)).clamp(1e-6, 1 - 1e-6)
        # sigmoid(V) = (rest - gamma) / (zeta - gamma): h(V) = rest
        self.alpha = nn.Parameter(-torch.log((ZETA - GAMMA) / (rest - GAMMA) - 1))

    @property
    def scale(self) -> torch.Tensor:
        return self.base.scale

    @property
    def zero_point(self) -> torch.Tensor:
        return self.base.zero_point

    def _scale(self, w: torch.Tensor) -> torch.Tensor:
        return broadcast_to_axis(self.base.scale.detach().float(), w, self.axis)

    def rounding(self) -> torch.Tensor:
        """h(V) in training, the hard 0/1 decision otherwise."""
        return rectified_sigmoid(self.alpha) if self.soft else (self.alpha >= 0).float()

    def regularizer(self, b: float) -> torch.Tensor:
        return rounding_regularizer(self.alpha, b)

    def _grid(self, w: torch.Tensor, rounding: torch.Tensor) -> torch.Tensor:
        qmin, qmax = int_range(self.bits, self.symmetric)
        z = broadcast_to_axis(self.base.zero_point.float(), w, self.axis)
        return torch.clamp(torch.floor(w.detach().float() * (1.0 / self._scale(w))) + rounding + z, qmin, qmax) - z

    @torch.no_grad()
    def codes(self, w: torch.Tensor) -> torch.Tensor:
        """The hard integer codes (int32, within the quantizer's range)."""
        z = broadcast_to_axis(self.base.zero_point.float(), w, self.axis)
        return (self._grid(w, (self.alpha >= 0).float()) + z).round().to(torch.int32)

    @torch.no_grad()
    def hardened_weight(self, w: torch.Tensor) -> torch.Tensor:
        """The weight on the grid with the learned rounding: the base quantizer maps it back to
        exactly :meth:`codes`, so the model needs no AdaRound module afterwards."""
        return (self._grid(w, (self.alpha >= 0).float()) * self._scale(w)).to(w.dtype)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return self._grid(w, self.rounding()) * self._scale(w)

    def extra_repr(self) -> str:
        return f"bits={self.bits}, {'soft' if self.soft else 'hard'}, weights={self.alpha.numel()}"
