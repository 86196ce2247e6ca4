"""Shortcut-splitting quantization (Q-Diffusion): a layer whose input is the concatenation of two
tensors with very different ranges quantizes each part on its own scale.

In a UNet up-block the input of a residual block is ``cat([h, skip], dim=1)``: the upsampled
features and the skip connection from the down path, whose ranges can differ by two orders of
magnitude. :class:`SplitQuantConv2d` quantizes channels ``[:split]`` and ``[split:]`` of its input
with separate points, and the matching input-channel slices of its weight with separate per-output-
channel scales, so that

    Q(X) * Q(W) = Q(X1) * Q(W1) + Q(X2) * Q(W2).

The fake-quantized simulation concatenates the two quantized halves again and runs one convolution,
which is exactly that sum.
"""

from __future__ import annotations

import torch
from torch import nn

from .modules import QuantConv2d, _like
from .tensor_quantizer import TensorQuantizer


class SplitQuantConv2d(QuantConv2d):
    """A QuantConv2d with separate input and weight points for input channels ``[:split]`` and
    ``[split:]`` (``input_quantizer``/``weight_quantizer`` for the first part,
    ``input_quantizer_2``/``weight_quantizer_2`` for the second)."""

    @classmethod
    def from_float(cls, conv: nn.Conv2d, weight_q=None, input_q=None, split: int = 0, weight_q2=None,
                   input_q2=None) -> "SplitQuantConv2d":
        if conv.groups != 1:
            raise ValueError("a split quantizer needs an ungrouped convolution")
        if not 0 < split < conv.in_channels:
            raise ValueError(f"split {split} must lie strictly between 0 and the {conv.in_channels} input channels")
        new = super().from_float(conv, weight_q, input_q)
        new.split = int(split)
        new.weight_quantizer_2 = weight_q2
        new.input_quantizer_2 = input_q2
        return new

    def structure_meta(self) -> dict:
        return {"split": self.split}

    @classmethod
    def from_structure(cls, meta: dict, existing=None) -> "SplitQuantConv2d":
        return cls.from_float(existing, split=int(meta["split"]))

    def weight_parts(self) -> list[tuple[str, tuple]]:
        """(weight-quantizer attribute, index into the weight) of each separately quantized part."""
        return [("weight_quantizer", (slice(None), slice(0, self.split))),
                ("weight_quantizer_2", (slice(None), slice(self.split, None)))]

    def calibrate_weight(self) -> None:
        for attr, index in self.weight_parts():
            wq = getattr(self, attr)
            if wq is not None:
                wq.observer = None
                wq.observe(self.weight.detach()[index], keep_all=True)
                wq.finish_calibration()

    def quantized_weight(self) -> torch.Tensor:
        parts = []
        for attr, index in self.weight_parts():
            wq, w = getattr(self, attr), self.weight[index]
            parts.append(w if wq is None or not wq.active else _like(wq.quantizer(w), w))
        return torch.cat(parts, dim=1)

    def quantized_input(self, x: torch.Tensor) -> torch.Tensor:
        if self.input_affine is not None:
            x = self.input_affine(x)
        first, second = x[:, :self.split], x[:, self.split:]
        if self.input_quantizer is not None:
            first = self.input_quantizer(first)
        if self.input_quantizer_2 is not None:
            second = self.input_quantizer_2(second)
        return torch.cat([first, second], dim=1)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, split={self.split}"


def split_points(point: TensorQuantizer | None) -> TensorQuantizer | None:
    """A second point with the same settings as ``point`` (for the other half of a split layer)."""
    if point is None:
        return None
    twin = TensorQuantizer(bits=point.bits, kind=point.kind, symmetric=point.quantizer.symmetric, axis=point.axis,
                           observer=point.observer_name, observer_options=point.observer_options,
                           learnable=point.learnable, role=point.role)
    twin.enabled = point.enabled
    return twin
