"""Learned prompts and low-bit adapters that P4Q trains on top of a frozen quantized CLIP.

- :class:`LearnedPrompt`: M context vectors shared by all classes (CoOp). They replace the
  hand-written template in the token-embedding sequence of each class prompt; the assembled
  sequence passes a quantization point (role ``embed``) before the quantized text encoder.
- :class:`QAdapter`: two low-bit fully connected layers (QFC) in a bottleneck with a ReLU.
- :class:`AdaptedProjection`: a projection followed by the residual mix
  ``f' = ratio * adapter(f) + (1 - ratio) * f``; it takes the place of the image projection, so
  every caller of ``get_image_features`` (evaluation, export) sees the adapted features.

All three are saveable (:func:`vitq.nn.structure.saveable`): a saved P4Q model rebuilds them.
"""

from __future__ import annotations

import torch
from torch import nn

from .modules import QuantLinear
from .tensor_quantizer import TensorQuantizer

POSITIONS = ("end", "middle", "front")


class LearnedPrompt(nn.Module):
    def __init__(self, n_ctx: int, dim: int, position: str = "end", bits: int = 8):
        super().__init__()
        if position not in POSITIONS:
            raise ValueError(f"unknown class-token position {position!r}: use one of {POSITIONS}")
        self.ctx = nn.Parameter(torch.zeros(n_ctx, dim))
        self.position = position
        self.input_quantizer = TensorQuantizer(bits=bits, symmetric=False, role="embed")

    @property
    def n_ctx(self) -> int:
        return self.ctx.shape[0]

    def structure_meta(self) -> dict:
        return {"n_ctx": self.n_ctx, "dim": self.ctx.shape[1], "position": self.position, "bits": self.input_quantizer.bits}

    @classmethod
    def from_structure(cls, meta: dict, existing=None) -> "LearnedPrompt":
        return cls(int(meta["n_ctx"]), int(meta["dim"]), meta["position"], int(meta["bits"]))

    def assemble(self, token_embeds: torch.Tensor, ctx_index: torch.Tensor) -> torch.Tensor:
        """``token_embeds`` [C, L, D] with every slot ``ctx_index >= 0`` replaced by that context vector."""
        slots = ctx_index >= 0
        out = token_embeds.clone()
        out[slots] = self.ctx[ctx_index[slots]].to(out.dtype)
        return out

    def forward(self, token_embeds: torch.Tensor, ctx_index: torch.Tensor) -> torch.Tensor:
        return self.input_quantizer(self.assemble(token_embeds, ctx_index))

    def extra_repr(self) -> str:
        return f"n_ctx={self.n_ctx}, dim={self.ctx.shape[1]}, position={self.position}"


def _qfc(in_features: int, out_features: int, bits: int) -> QuantLinear:
    layer = nn.Linear(in_features, out_features)
    return QuantLinear.from_float(layer, TensorQuantizer(bits, symmetric=True, axis=0, role="weight"),
                                  TensorQuantizer(bits, symmetric=False, role="input"))


class QAdapter(nn.Module):
    """``fc2(relu(fc1(x)))`` with both layers quantized at ``bits`` (weights per output channel,
    inputs per tensor). While training, each weight scale follows its weight (min/max every step);
    the input scales are set by :meth:`calibrate_inputs`."""

    def __init__(self, dim: int, hidden: int, bits: int = 8):
        super().__init__()
        self.fc1 = _qfc(dim, hidden, bits)
        self.act = nn.ReLU()
        self.fc2 = _qfc(hidden, dim, bits)
        nn.init.zeros_(self.fc2.weight)  # starts as the identity of the residual mix: the PTQ model as it was
        nn.init.zeros_(self.fc2.bias)

    def structure_meta(self) -> dict:
        return {"dim": self.fc1.in_features, "hidden": self.fc1.out_features, "bits": self.fc1.weight_quantizer.bits}

    @classmethod
    def from_structure(cls, meta: dict, existing=None) -> "QAdapter":
        return cls(int(meta["dim"]), int(meta["hidden"]), int(meta["bits"]))

    def layers(self) -> tuple[QuantLinear, QuantLinear]:
        return self.fc1, self.fc2

    def refresh_weight_scales(self) -> None:
        with torch.no_grad():
            for fc in self.layers():
                fc.calibrate_weight()
                fc.weight_quantizer.set_mode("quant")

    @torch.no_grad()
    def calibrate_inputs(self, features: torch.Tensor, batch_size: int = 4096) -> None:
        """Fix both input scales from ``features`` (min/max; the second layer's from what the first
        gives now)."""
        self.refresh_weight_scales()
        chunks = features.split(batch_size)
        self.fc1.input_quantizer.calibrate_on(chunks)
        self.fc2.input_quantizer.calibrate_on(self.act(self.fc1(x)) for x in chunks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and torch.is_grad_enabled():  # a training step: the weight scales follow the weights
            self.refresh_weight_scales()
        return self.fc2(self.act(self.fc1(x)))


class AdaptedProjection(nn.Module):
    def __init__(self, projection: nn.Module, adapter: QAdapter, ratio: float = 0.2):
        super().__init__()
        self.projection = projection
        self.adapter = adapter
        self.ratio = float(ratio)

    def structure_meta(self) -> dict:
        return {"ratio": self.ratio, **{f"adapter_{k}": v for k, v in self.adapter.structure_meta().items()}}

    @classmethod
    def from_structure(cls, meta: dict, existing=None) -> "AdaptedProjection":
        adapter = QAdapter(int(meta["adapter_dim"]), int(meta["adapter_hidden"]), int(meta["adapter_bits"]))
        return cls(existing, adapter, float(meta["ratio"]))

    def mix(self, features: torch.Tensor) -> torch.Tensor:
        """The residual mix on projected features (P4Q's f')."""
        return self.ratio * self.adapter(features) + (1 - self.ratio) * features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mix(self.projection(x))

    def extra_repr(self) -> str:
        return f"ratio={self.ratio}"
