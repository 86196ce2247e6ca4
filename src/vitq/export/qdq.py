"""Export mode: every active quantization point becomes an op that ONNX knows.

Uniform points become ``torch.fake_quantize_per_{tensor,channel}_affine`` with vitq's own scale and
zero-point, which the TorchScript exporter writes as QuantizeLinear/DequantizeLinear. ONNX QDQ
(opset < 21) has only 8-bit types, so a b-bit point (b < 8) uses the int8/uint8 type and clamps its
input in float to the b-bit range first: the codes are then exactly the b-bit ones.
Log points (post-Softmax log2 / log-sqrt2) have no ONNX op; they are written as the equivalent
float ops (log2, round, pow), so the runtime computes the same values without integer kernels.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from ..nn import WEIGHT_QUANT_LAYERS, QuantConv2d, TensorQuantizer
from ..quant.uniform import int_range


def onnx_int_range(bits: int, symmetric: bool) -> tuple[int, int]:
    """The 8-bit ONNX range that holds a b-bit quantizer's codes: int8 when signed, uint8 when not."""
    return (-128, 127) if symmetric else (0, 255)


class _ExportPoint(nn.Module):
    # vitq's layers call ``point.quantizer(w)`` for weights and check ``point.active``.
    active = True

    @property
    def quantizer(self):
        return self


class QDQPoint(_ExportPoint):
    """A uniform quantization point in export form (same numbers, exportable ops)."""

    def __init__(self, tq: TensorQuantizer, weight_codes_exact: bool = False):
        super().__init__()
        uq = tq.quantizer
        self.bits, self.symmetric, self.axis = uq.bits, uq.symmetric, uq.axis
        self.role = tq.role
        self.register_buffer("scale", uq.scale.detach().float().reshape(-1).clone())
        self.register_buffer("zero_point", uq.zero_point.detach().round().to(torch.int32).reshape(-1).clone())
        self.qmin, self.qmax = int_range(self.bits, self.symmetric)
        self.onnx_min, self.onnx_max = onnx_int_range(self.bits, self.symmetric)
        # A sub-8-bit activation needs the float clamp; weights stored as vitq's own fake-quantized
        # values (weight_codes_exact) recover vitq's codes without it.
        self.needs_clamp = (self.qmin, self.qmax) != (self.onnx_min, self.onnx_max) and not weight_codes_exact

    def _clamp(self, x: torch.Tensor) -> torch.Tensor:
        if not self.needs_clamp:
            return x
        lo = self.scale * (self.qmin - self.zero_point).float()
        hi = self.scale * (self.qmax - self.zero_point).float()
        if self.axis is not None:
            shape = [1] * x.dim()
            shape[self.axis] = -1
            lo, hi = lo.reshape(shape), hi.reshape(shape)
        else:
            lo, hi = lo.reshape(()), hi.reshape(())
        return torch.minimum(torch.maximum(x, lo), hi)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self._clamp(x)
        if self.axis is None:
            return torch.fake_quantize_per_tensor_affine(x, self.scale, self.zero_point, self.onnx_min, self.onnx_max)
        axis = self.axis % x.dim()
        return torch.fake_quantize_per_channel_affine(x, self.scale, self.zero_point, axis, self.onnx_min, self.onnx_max)


class LogPoint(_ExportPoint):
    """A log quantizer written with float ops (ONNX has no logarithmic quantization type)."""

    def __init__(self, tq: TensorQuantizer):
        super().__init__()
        self.log = copy.deepcopy(tq.quantizer)
        self.role = tq.role

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.log.dequantize(self.log.quantize(x))


class PatchLinear(nn.Module):
    """A patch-embedding convolution (kernel = stride, no padding) written as patches @ Wᵀ.

    ONNX Runtime fuses a QDQ MatMul into an integer kernel even when its output stays float, but a
    QDQ Conv only when its output is quantized too; as a MatMul the patch embedding runs on int8.
    Per-tensor input quantization commutes with cutting the image into patches, so the values are
    the same as the convolution's.
    """

    def __init__(self, conv: QuantConv2d):
        super().__init__()
        self.kernel = tuple(conv.kernel_size)
        self.out_channels = conv.out_channels
        self.weight = nn.Parameter(conv.weight.detach().reshape(conv.out_channels, -1).clone(), requires_grad=False)
        self.bias = conv.bias
        self.weight_quantizer, self.input_quantizer = conv.weight_quantizer, conv.input_quantizer

    @staticmethod
    def applies_to(conv: nn.Module) -> bool:
        iq = getattr(conv, "input_quantizer", None)
        return (isinstance(conv, QuantConv2d) and tuple(conv.kernel_size) == tuple(conv.stride) and conv.groups == 1
                and tuple(conv.dilation) == (1, 1) and conv.padding in ((0, 0), 0, "valid")
                and (iq is None or not iq.active or iq.axis is None))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        kh, kw = self.kernel
        nh, nw = h // kh, w // kw
        x = x[:, :, : nh * kh, : nw * kw]  # a convolution ignores the incomplete border too
        patches = x.reshape(b, c, nh, kh, nw, kw).permute(0, 2, 4, 1, 3, 5).reshape(b, nh * nw, c * kh * kw)
        if self.input_quantizer is not None:
            patches = self.input_quantizer(patches)
        weight = self.weight if self.weight_quantizer is None else self.weight_quantizer.quantizer(self.weight)
        y = torch.nn.functional.linear(patches, weight, self.bias)
        return y.reshape(b, nh, nw, self.out_channels).permute(0, 3, 1, 2)


def export_point(tq: TensorQuantizer, weight_codes_exact: bool = False) -> nn.Module | None:
    """What a quantization point becomes in the exported graph (None, as if absent, when inactive)."""
    if not tq.active:
        return None
    if tq.kind == "uniform":
        return QDQPoint(tq, weight_codes_exact)
    return LogPoint(tq)


def to_export_mode(model: nn.Module) -> nn.Module:
    """A copy of ``model`` whose quantization points are exportable (the original is untouched)."""
    model = copy.deepcopy(model).float().eval()  # graphs run in float32, whatever the model was calibrated in
    exact: set[int] = set()  # weight points whose layer now stores vitq's fake-quantized weight
    with torch.no_grad():
        for m in model.modules():
            wq = getattr(m, "weight_quantizer", None)
            if isinstance(m, WEIGHT_QUANT_LAYERS) and wq is not None and wq.active and wq.kind == "uniform":
                # Store vitq's own fake-quantized weight: the graph's QuantizeLinear (folded to int8
                # codes at export) then recovers exactly vitq's codes, clamping included.
                m.weight.data = wq.quantizer(m.weight.detach())
                exact.add(id(wq))
    for name, m in list(model.named_modules()):
        if PatchLinear.applies_to(m):
            model.set_submodule(name, PatchLinear(m))
    for name, m in list(model.named_modules()):
        if isinstance(m, TensorQuantizer):
            parent, _, attr = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, attr, export_point(m, id(m) in exact))
    return model
