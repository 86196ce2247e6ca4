"""Search units: what a per-point search (Liu et al. 2021's interval search, CLAMP-ViT's evolutionary
search) tunes together and scores together, in forward order.

A unit is a set of quantization points and a :class:`Probe`, the module they sit in reduced to the
outputs they affect: a linear's input point with the linear's weights (the linear's output); a
LayerNorm's output point with the weights of every linear it feeds (their outputs); both inputs of
an attention matmul (the attention probabilities for q·kᵀ, the output for softmax·v).
:func:`for_each_unit` walks the units on calibration data, recording each one's inputs with
everything upstream quantized (:func:`vitq.calib.recorder.capture_inputs`).
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from ..models.families import component_runner
from ..nn import QuantConv2d, QuantLayerNorm, QuantLinear, QuantMatMul, TensorQuantizer, points_disabled
from .recorder import Stream, StopForward, capture_inputs, on_device_of
from .sequential import points_in_order


class Probe(nn.Module):
    """What one search scores: a module run on its recorded inputs, reduced to the outputs the
    searched points affect (the linears fed by one point; an attention map; a matmul's output)."""

    def __init__(self, module: nn.Module, fn):
        super().__init__()
        self.module, self.fn = module, fn

    def forward(self, *args, **kwargs):
        return self.fn(self.module, args, kwargs)


def linears_probe(ln_or_linear: nn.Module, consumers: list[nn.Module]):
    if consumers == [ln_or_linear]:
        return lambda m, a, k: (m(*a, **k),)
    return lambda m, a, k: tuple(c(m(*a, **k)) for c in consumers)


def tap_attention(attention: nn.Module, which: str):
    """Run the attention module and return the attention probabilities (input of softmax·v) or the
    output of softmax·v, stopping the forward there."""

    def fn(m, a, k):
        seen = {}
        pv = attention.vitq_pv

        def pre(mod, args):
            seen["t"] = args[0]
            raise StopForward

        def post(mod, args, out):
            seen["t"] = out
            raise StopForward

        handle = pv.register_forward_pre_hook(pre) if which == "probs" else pv.register_forward_hook(post)
        try:
            m(*a, **k)
        except StopForward:
            pass
        finally:
            handle.remove()
        return (seen["t"],)

    return fn


def search_units(model: nn.Module, order: list[str], post_ln_consumers: dict[str, list[str]]) -> list[dict]:
    """Units in forward order: ``{"module", "probe", "points", "linears", "ranking"}``."""
    units, seen = [], set()
    for name in order:
        parent, _, attr = name.rpartition(".")
        owner = model.get_submodule(parent)
        if isinstance(owner, (QuantLinear, QuantConv2d)) and attr == "input_quantizer":
            linears = [parent]
            module = parent
        elif isinstance(owner, QuantLayerNorm) and attr == "output_quantizer":
            linears = list(post_ln_consumers.get(parent, []))
            module = parent
        elif isinstance(owner, QuantMatMul):
            if parent in seen:
                continue
            seen.add(parent)
            attention_name = parent.rpartition(".")[0]
            attention = model.get_submodule(attention_name)
            which = "probs" if owner is getattr(attention, "vitq_qk", None) else "output"
            points = [p for p in (owner.a_quantizer, owner.b_quantizer) if p is not None and p.enabled]
            units.append({"module": attention_name, "probe": Probe(attention, tap_attention(attention, which)), "points": points,
                          "linears": [], "ranking": which == "probs"})
            continue
        else:
            continue
        layers = [model.get_submodule(n) for n in linears]
        weights = [m.weight_quantizer for m in layers if m.weight_quantizer is not None and m.weight_quantizer.enabled]
        mod = model.get_submodule(module)
        units.append({"module": module, "probe": Probe(mod, linears_probe(mod, layers)),
                      "points": weights + [model.get_submodule(name)], "linears": linears, "ranking": False})
    return units


def set_scale(point: TensorQuantizer, scale: float) -> None:
    """A candidate interval; an unsigned point keeps its zero-point, so its range scales about 0."""
    q = point.quantizer
    q.set_params(torch.full_like(q.scale.detach(), scale), q.zero_point.detach().clone())


@torch.no_grad()
def disabled_outputs(probe: Probe, inputs: Stream, points: list[TensorQuantizer]) -> Stream:
    """The probe's outputs with the searched points off: the full-precision targets."""
    out = Stream()
    with points_disabled(only=points):
        for item in inputs:
            args, kwargs = on_device_of(probe, item)
            out.append(tuple(t.detach().cpu() for t in probe(*args, **kwargs)))
    return out


def scale_point(point: TensorQuantizer, base: torch.Tensor, factor: float) -> None:
    """Set the point's scale to ``factor`` times ``base`` (a copy of its scale), keeping its zero-point."""
    q = point.quantizer
    q.set_params((base * factor).to(q.scale), q.zero_point.detach().clone())


def token_masks(batches, component: str) -> list:
    """Per batch, the (batch, tokens) mask of the real tokens of a padded component (a text tower's
    ``attention_mask``), or None: statistics over token positions should skip the padding."""
    from ..models.adapter import OPTIONAL_INPUTS

    padded = "attention_mask" in OPTIONAL_INPUTS.get(component, ())
    return [b.get("attention_mask") if padded and isinstance(b, dict) else None for b in batches]


def token_rows(t: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """``t`` (..., channels) as rows of channels, only the real tokens where ``mask`` (batch,
    tokens) matches its leading axes."""
    if mask is not None and t.dim() == 3 and tuple(t.shape[:2]) == tuple(mask.shape):
        return t[mask.to(t.device).bool()]
    return t.reshape(-1, t.shape[-1])


def for_each_unit(model: nn.Module, batches, components, post_ln_consumers: dict[str, list[str]],
                  fn: Callable[[dict, Stream], None], desc: str = "search", progress: bool = True) -> int:
    """``fn(unit, inputs)`` for every unit of every component, in forward order, where ``inputs`` are
    the unit module's recorded inputs on ``batches`` with every point upstream as it is now (set
    the model to quantized mode first); ``unit["token_masks"]`` holds :func:`token_masks` of the
    batches. Returns the number of units."""
    from tqdm.auto import tqdm

    count = 0
    with Stream.of(batches) as cached:
        for comp in components:
            run = component_runner(model, comp)
            first = next(iter(cached), None)
            if first is None:
                continue
            units = search_units(model, points_in_order(model, run, first), post_ln_consumers)
            masks = token_masks(cached, comp)
            for unit in tqdm(units, desc=f"{desc} ({comp})", disable=not progress, leave=False):
                unit["token_masks"] = masks
                with capture_inputs(model, unit["probe"].module, cached, run) as inputs:
                    fn(unit, inputs)
                count += 1
    return count
