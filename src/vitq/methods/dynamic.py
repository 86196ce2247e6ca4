"""DQ-CLIP: dynamic int8 quantization on real int8 kernels (torchao).

Weights become int8 ahead of time (symmetric, one scale per output channel); activation scales are
computed at run time for every input (per token), so no calibration data is needed. The
Linear layers of the selected components (DQ-CLIP's "Image", "Text", "Combined") run through
torchao's ``Int8DynamicActivationInt8WeightConfig``. ``torch.ao.quantization.quantize_dynamic``
(what the DQ-CLIP paper used) is deprecated and appears only as a comparison in benchmarks.

Eager torchao kernels are slow on CPU; ``options={"compile": True}`` compiles the quantized
towers with ``torch.compile`` (the first call then takes a while), which is where the speed-up is.
"""

from __future__ import annotations

import contextlib
import io
import logging
from fnmatch import fnmatch

import torch
from torch import nn

from dataclasses import dataclass

from ..config import QuantConfig
from ..errors import ConfigError
from ..models.families import component_of, family_of
from ..models.prepare import resolve_components
from . import register
from .options import MethodOptions


@dataclass(frozen=True)
class DynamicOptions(MethodOptions):
    compile: bool = False

    HELP = {"compile": "torch.compile the quantized towers (slow first call; where the CPU speed-up is)"}


def _torchao():
    """Import torchao quietly (it logs about GPU kernels a CPU build cannot load)."""
    logging.getLogger("torchao").setLevel(logging.ERROR)
    logging.getLogger("torch.utils._pytree").setLevel(logging.ERROR)  # torchao registers enums the old way
    try:
        with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
            from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_
    except ImportError:
        raise ConfigError(
            "the dynamic method needs torchao", hint='pip install "vitq[dynamic]" (torchao)'
        ) from None
    return quantize_, Int8DynamicActivationInt8WeightConfig


def is_dynamic_weight(t) -> bool:
    return type(t).__name__ == "Int8Tensor" and hasattr(t, "qdata")


def apply_dynamic_int8(model: nn.Module, names: set[str]) -> int:
    """Swap the weights of the named Linear layers for torchao int8 tensors; returns how many."""
    quantize_, config = _torchao()
    quantize_(model, config(), filter_fn=lambda m, fqn: isinstance(m, nn.Linear) and fqn in names)
    return sum(1 for n, m in model.named_modules() if n in names and is_dynamic_weight(m.weight))


def dynamic_layers(model: nn.Module, components, exclude) -> set[str]:
    family = family_of(model)
    return {
        name for name, m in model.named_modules()
        if isinstance(m, nn.Linear) and component_of(family, name) in components and not any(fnmatch(name, p) for p in exclude)
    }


def compile_components(model: nn.Module, components) -> None:
    family = family_of(model)
    for comp in components:
        for prefix in family.components[comp]:
            target = model.get_submodule(prefix) if prefix else model
            target.compile()


@register("dynamic", "dq-clip", options=DynamicOptions, needs_calibration=False)
def dynamic_int8(model, calib, cfg: QuantConfig, opts: DynamicOptions, progress: bool = True):
    """DQ-CLIP: int8 weights, per-input activation scales at run time, on int8 kernels."""
    if (cfg.w_bits, cfg.a_bits) != (8, 8):
        raise ConfigError(f"dynamic quantization runs int8 kernels; {cfg.bits} is not available", hint="use --bits W8A8 with --method dynamic")
    comps = resolve_components(family_of(model), cfg.components)
    names = dynamic_layers(model, comps, cfg.exclude)
    with torch.no_grad():
        count = apply_dynamic_int8(model, names)
    if opts.compile:
        compile_components(model, comps)
    summary = {
        "family": family_of(model).name, "components": list(comps),
        "dynamic": {"backend": "torchao Int8DynamicActivationInt8Weight (per-row)", "layers": sorted(names), "count": count},
    }
    return model, summary

