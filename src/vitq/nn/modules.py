"""Fake-quantized layers: QuantLinear, QuantConv2d, QuantEmbedding, QuantMatMul and QuantLayerNorm,
and the per-channel InputAffine a scale reparameterization may put in front of a layer's input quantizer.

QuantLinear and QuantConv2d subclass the float layers and keep their parameter names, so a
state dict and any code that checks ``isinstance(m, nn.Linear)`` keep working.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .tensor_quantizer import TensorQuantizer



def _like(y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``y`` in ``x``'s dtype: scales stay float32, a bf16 layer stays bf16. No cast when they
    agree (an exported graph must not get a Cast between DequantizeLinear and its MatMul)."""
    return y if y.dtype == x.dtype else y.to(x.dtype)

class InputAffine(nn.Module):
    """``x * scale + shift`` per channel of the last axis, in float, before an input quantizer.

    RepQ-ViT folds its post-LayerNorm reparameterization into the LayerNorm where the LayerNorm
    feeds only linears. Where the LayerNorm output also feeds a residual (post-LN blocks such as
    BERT) or a layer kept in float, the linear branch gets this affine instead: one per-channel
    multiply-add that the runtime executes in float (declared in the export's notes).
    """

    def __init__(self, channels: int):
        super().__init__()
        self.register_buffer("scale", torch.ones(channels))
        self.register_buffer("shift", torch.zeros(channels))

    @property
    def channels(self) -> int:
        return self.scale.numel()

    def structure_meta(self) -> dict:
        return {"channels": self.channels}

    @classmethod
    def from_structure(cls, meta: dict, existing=None) -> "InputAffine":
        return cls(int(meta["channels"]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _like(x * self.scale + self.shift, x)

    def extra_repr(self) -> str:
        return f"channels={self.channels}"


class _WeightedQuantMixin:
    """Shared by QuantLinear and QuantConv2d: optional weight and input quantizers, and an optional
    per-channel affine on the input (before its quantizer)."""

    weight_quantizer: TensorQuantizer | None
    input_quantizer: TensorQuantizer | None
    input_affine: InputAffine | None

    def _attach(self, weight_q: TensorQuantizer | None, input_q: TensorQuantizer | None):
        self.weight_quantizer = weight_q
        self.input_quantizer = input_q
        self.input_affine = None
        self.output_quantizer = None  # FQ-ViT's scope also quantizes some layers' outputs
        # Inference reuses the fake-quantized weight until the weight or its scale changes.
        self._weight_cache: tuple | None = None

    def weight_parts(self) -> list[tuple[str, tuple]]:
        """(weight-quantizer attribute, index into the weight) of each separately quantized part of
        the weight: the whole weight here; two input-channel slices in a split layer."""
        return [("weight_quantizer", (slice(None),))]

    def quantized_output(self, y: torch.Tensor) -> torch.Tensor:
        return y if self.output_quantizer is None else self.output_quantizer(y)

    @classmethod
    def from_structure(cls, meta: dict, existing=None):
        return cls.from_float(existing)

    def calibrate_weight(self) -> None:
        """Weights need no data: observe them once and fix the weight scale."""
        if self.weight_quantizer is not None:
            self.weight_quantizer.observer = None
            self.weight_quantizer.observe(self.weight.detach(), keep_all=True)
            self.weight_quantizer.finish_calibration()

    def quantized_weight(self) -> torch.Tensor:
        wq = self.weight_quantizer
        if wq is None or not wq.active:
            return self.weight
        if torch.is_grad_enabled():
            return _like(wq.quantizer(self.weight), self.weight)
        # Inference: weights and scales are fixed, so quantize once and reuse until either changes.
        q = wq.quantizer
        key = (id(self.weight), self.weight._version, id(q.scale), q.scale._version, q.zero_point._version)
        cache = getattr(self, "_weight_cache", None)
        if cache is None or cache[0] != key:
            cache = (key, _like(q(self.weight), self.weight))
            self._weight_cache = cache
        return cache[1]

    def quantized_input(self, x: torch.Tensor) -> torch.Tensor:
        if self.input_affine is not None:
            x = self.input_affine(x)
        return x if self.input_quantizer is None else self.input_quantizer(x)


class QuantLinear(_WeightedQuantMixin, nn.Linear):
    @classmethod
    def from_float(cls, linear: nn.Linear, weight_q=None, input_q=None) -> "QuantLinear":
        new = cls.__new__(cls)
        nn.Module.__init__(new)
        new.in_features, new.out_features = linear.in_features, linear.out_features
        new.weight, new.bias = linear.weight, linear.bias
        new._attach(weight_q, input_q)
        return new

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.quantized_output(F.linear(self.quantized_input(x), self.quantized_weight(), self.bias))


class QuantConv2d(_WeightedQuantMixin, nn.Conv2d):
    @classmethod
    def from_float(cls, conv: nn.Conv2d, weight_q=None, input_q=None) -> "QuantConv2d":
        new = cls.__new__(cls)
        nn.Module.__init__(new)
        for attr in ("in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation",
                     "transposed", "output_padding", "groups", "padding_mode", "_reversed_padding_repeated_twice"):
            setattr(new, attr, getattr(conv, attr))
        new.weight, new.bias = conv.weight, conv.bias
        new._attach(weight_q, input_q)
        return new

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.quantized_output(self._conv_forward(self.quantized_input(x), self.quantized_weight(), self.bias))


class QuantEmbedding(_WeightedQuantMixin, nn.Embedding):
    """A lookup table (a text tower's token embedding) whose rows are quantized: the weight point is
    per row (axis 0), so each token's vector has its own scale. The token ids are integers: there is
    no input point. Exported, the graph gathers the int8 rows first and dequantizes only those."""

    @classmethod
    def from_float(cls, emb: nn.Embedding, weight_q=None) -> "QuantEmbedding":
        new = cls.__new__(cls)
        nn.Module.__init__(new)
        for attr in ("num_embeddings", "embedding_dim", "padding_idx", "max_norm", "norm_type", "scale_grad_by_freq", "sparse"):
            setattr(new, attr, getattr(emb, attr))
        new.weight = emb.weight
        new._attach(weight_q, None)
        return new

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(ids, self.quantized_weight(), self.padding_idx, self.max_norm, self.norm_type,
                           self.scale_grad_by_freq, self.sparse)


# Layers whose weight has a quantization point (stored as integer codes, counted at its bits).
WEIGHT_QUANT_LAYERS = (QuantLinear, QuantConv2d, QuantEmbedding)


class QuantMatMul(nn.Module):
    """``a @ b`` with both inputs quantized (q·kᵀ, and softmax·v where ``a`` is post-Softmax)."""

    def __init__(self, a_quantizer: TensorQuantizer | None = None, b_quantizer: TensorQuantizer | None = None):
        super().__init__()
        self.a_quantizer = a_quantizer
        self.b_quantizer = b_quantizer

    @classmethod
    def from_structure(cls, meta: dict, existing=None) -> "QuantMatMul":
        return cls()

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        if self.a_quantizer is not None:
            a = self.a_quantizer(a)
        if self.b_quantizer is not None:
            b = self.b_quantizer(b)
        return torch.matmul(a, b)


class QuantLayerNorm(nn.LayerNorm):
    """LayerNorm whose output is quantized once for every linear it feeds (q, k, v or fc1), and whose
    input may be quantized too (FQ-ViT's scope: the residual sum entering a LayerNorm).

    The output point is used only where the LayerNorm output feeds nothing but linears (pre-LN
    blocks), so quantizing it here is the same as quantizing the inputs of those linears.
    """

    @classmethod
    def from_float(cls, ln: nn.LayerNorm, output_q: TensorQuantizer | None = None) -> "QuantLayerNorm":
        new = cls.__new__(cls)
        nn.Module.__init__(new)
        new.normalized_shape, new.eps, new.elementwise_affine = ln.normalized_shape, ln.eps, ln.elementwise_affine
        new.weight, new.bias = ln.weight, ln.bias
        new.output_quantizer = output_q
        new.input_quantizer = None
        return new

    @classmethod
    def from_structure(cls, meta: dict, existing=None) -> "QuantLayerNorm":
        return cls.from_float(existing)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if getattr(self, "input_quantizer", None) is not None:
            x = self.input_quantizer(x)
        y = super().forward(x)
        return y if self.output_quantizer is None else self.output_quantizer(y)


def quantize_output_hook(module: nn.Module, args, output):
    """Forward hook: quantize a module's output with its ``vitq_output`` point (a block's residual
    sum, an embedding layer's output). Tuples keep their other items."""
    point = module.vitq_output
    if isinstance(output, tuple):
        return (point(output[0]), *output[1:])
    return point(output)


def attach_output_point(module: nn.Module, point: TensorQuantizer) -> None:
    module.vitq_output = point
    if quantize_output_hook not in module._forward_hooks.values():
        module.register_forward_hook(quantize_output_hook)


def reattach_output_points(model: nn.Module) -> None:
    """After rebuilding a saved model: every ``vitq_output`` point gets its hook again."""
    for m in model.modules():
        if isinstance(getattr(m, "vitq_output", None), TensorQuantizer):
            attach_output_point(m, m.vitq_output)
