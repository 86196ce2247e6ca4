"""Whole-model helpers over quantization points: modes, calibration, and the QuantState."""

from __future__ import annotations

import contextlib
from typing import Iterable, Iterator

import torch
from torch import nn

from .modules import WEIGHT_QUANT_LAYERS
from .tensor_quantizer import TensorQuantizer


def quantizers(model: nn.Module) -> Iterator[tuple[str, TensorQuantizer]]:
    for name, m in model.named_modules():
        if isinstance(m, TensorQuantizer):
            yield name, m


@contextlib.contextmanager
def points_disabled(model: nn.Module | None = None, only: Iterable[TensorQuantizer] | None = None, keep=()):
    """Switch quantization points off for a while (every point of ``model``, or ``only`` these),
    except those in ``keep``; each point's own on/off state comes back afterwards."""
    points = list(only) if only is not None else [q for _, q in quantizers(model)]
    saved = [q.enabled for q in points]
    kept = {id(q) for q in keep}
    try:
        for q in points:
            q.enabled = q.enabled and id(q) in kept
        yield
    finally:
        for q, e in zip(points, saved):
            q.enabled = e


def set_mode(model: nn.Module, mode: str) -> None:
    """Put every quantization point of ``model`` in ``fp``, ``calib`` or ``quant`` mode."""
    for _, q in quantizers(model):
        q.set_mode(mode)


def calibrate_weights(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, WEIGHT_QUANT_LAYERS):
            m.calibrate_weight()


def finish_calibration(model: nn.Module) -> None:
    for _, q in quantizers(model):
        q.finish_calibration()


def quant_state(model: nn.Module) -> dict[str, dict]:
    """The QuantState: for each quantization point, its kind, bits, axis and scale range.

    The tensors (scales, zero-points) themselves live in the model's state dict under
    ``<point>.quantizer.scale`` and ``<point>.quantizer.zero_point``.
    """
    return {name: q.describe() for name, q in quantizers(model)}


def quant_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """Scales and zero-points of every quantization point, keyed as in the state dict."""
    out = {}
    for name, q in quantizers(model):
        for key, t in q.quantizer.state_dict().items():
            out[f"{name}.quantizer.{key}"] = t.detach().clone()
    return out


def kind_of(q: TensorQuantizer) -> str:
    """``uniform per-tensor``, ``uniform per-channel``, ``log2_parity``, ...: how a point quantizes."""
    return q.kind if q.kind != "uniform" else f"uniform {'per-tensor' if q.axis is None else 'per-channel'}"


def summarize_points(model: nn.Module) -> dict[str, dict]:
    """Which tensors are quantized, by role: how many points, at which bits, with which quantizers.

    Published numbers are only comparable when this matches, so every result JSON carries it.
    """
    out: dict[str, dict] = {}
    for _, q in quantizers(model):
        if not q.enabled:
            continue
        role = q.role or "other"
        entry = out.setdefault(role, {"count": 0, "bits": set(), "quantizers": set()})
        entry["count"] += 1
        entry["bits"].add(q.bits)
        entry["quantizers"].add(kind_of(q))
    return {r: {"count": e["count"], "bits": sorted(e["bits"]), "quantizers": sorted(e["quantizers"])} for r, e in sorted(out.items())}
