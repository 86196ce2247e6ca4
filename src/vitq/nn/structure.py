"""Record and rebuild where a model's quantization points are, so a saved model can be reloaded
exactly as it was quantized, whatever method placed the points."""

from __future__ import annotations

from torch import nn

from .modules import QuantConv2d, QuantLayerNorm, QuantLinear, QuantMatMul
from .tensor_quantizer import TensorQuantizer

_WRAPPERS = {"QuantLinear": QuantLinear, "QuantConv2d": QuantConv2d, "QuantLayerNorm": QuantLayerNorm}


def describe_structure(model: nn.Module) -> dict[str, str]:
    """Module name → vitq wrapper class, for every wrapped layer and attention matmul."""
    out = {}
    for name, m in model.named_modules():
        if type(m).__name__ in _WRAPPERS or isinstance(m, QuantMatMul):
            out[name] = type(m).__name__
    return out


def rebuild_structure(model: nn.Module, structure: dict[str, str], points: dict[str, dict]) -> None:
    """Wrap the named layers, add the attention matmuls, and create each point from its description."""
    for name, kind in structure.items():
        if kind == "QuantMatMul":
            parent, _, attr = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, attr, QuantMatMul())
            continue
        if kind not in _WRAPPERS:
            raise ValueError(f"unknown wrapper {kind!r} for {name}")
        model.set_submodule(name, _WRAPPERS[kind].from_float(model.get_submodule(name)))
    for name, desc in points.items():
        parent, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent), attr, TensorQuantizer.from_description(desc))
