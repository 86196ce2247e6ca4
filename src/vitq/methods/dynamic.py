"""DQ-CLIP: dynamic int8 quantization on real int8 kernels, in two variants.

Weights become int8 ahead of time; activation scales are computed at run time for every input, so
no calibration data is needed. The Linear layers of the selected components (DQ-CLIP's "Image",
"Text", "Combined") are converted.

- ``variant=torchao`` (default): torchao's ``Int8DynamicActivationInt8WeightConfig``, symmetric
  int8 weights with one scale per output channel and one activation scale per token: finer, and
  more accurate, than the paper's setting.
- ``variant=paper``: what the DQ-CLIP paper ran, PyTorch's ``torch.ao.quantization.quantize_dynamic``
  with its default dynamic qconfig: one int8 scale per weight tensor and one uint8 scale per
  activation tensor (fbgemm/x86 kernels). PyTorch has deprecated this API; it still runs.

Eager torchao kernels are slow on CPU; ``options={"compile": True}`` compiles the quantized
towers with ``torch.compile`` (the first call then takes a while), which is where the speed-up is.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from dataclasses import dataclass
from fnmatch import fnmatch

import torch
from torch import nn

from ..config import QuantConfig
from ..errors import ConfigError, install_hint
from ..models.families import component_of, family_of
from ..models.prepare import resolve_components
from . import MethodResult, register
from .options import MethodOptions


VARIANTS = ("torchao", "paper")


@dataclass(frozen=True)
class DynamicOptions(MethodOptions):
    variant: str = "torchao"
    compile: bool = False

    CHOICES = {"variant": VARIANTS}
    HELP = {
        "variant": "torchao: per-channel weights, per-token activations; paper: DQ-CLIP's quantize_dynamic, "
                   "per-tensor weights and activations",
        "compile": "torch.compile the quantized towers (slow first call; where the CPU speed-up is)",
    }


def _dynamic_linear_class():
    from torch.ao.nn.quantized.dynamic import Linear

    return Linear


def is_paper_dynamic(module) -> bool:
    return isinstance(module, _dynamic_linear_class())


def apply_paper_dynamic(model: nn.Module, names: set[str]) -> int:
    """Convert the named Linear layers with ``torch.ao.quantization.quantize_dynamic`` and its default
    dynamic qconfig (per-tensor int8 weights, per-tensor dynamic uint8 activations); returns how many."""
    from torch.ao.quantization import default_dynamic_qconfig, quantize_dynamic

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # its deprecation notice: the paper's API on purpose
        quantize_dynamic(model, {name: default_dynamic_qconfig for name in names}, dtype=torch.qint8, inplace=True)
    return sum(1 for n, m in model.named_modules() if n in names and is_paper_dynamic(m))


def paper_dynamic_tensors(module) -> dict[str, torch.Tensor]:
    """The codes, scale, zero-point and bias of a quantize_dynamic Linear, as plain tensors."""
    weight, bias = module._weight_bias()
    out = {"int8": weight.int_repr().contiguous(), "int8_scale": torch.tensor([weight.q_scale()], dtype=torch.float64),
           "int8_zero_point": torch.tensor([weight.q_zero_point()], dtype=torch.int64)}
    if bias is not None:
        out["bias"] = bias.detach().contiguous()
    return out


def restore_paper_dynamic(module, tensors: dict[str, torch.Tensor]) -> None:
    """Put stored codes back into a quantize_dynamic Linear (no re-quantization)."""
    weight = torch._make_per_tensor_quantized_tensor(tensors["int8"], float(tensors["int8_scale"][0]), int(tensors["int8_zero_point"][0]))
    module.set_weight_bias(weight, tensors.get("bias"))


def _torchao():
    """Import torchao quietly (it logs about GPU kernels a CPU build cannot load)."""
    logging.getLogger("torchao").setLevel(logging.ERROR)
    logging.getLogger("torch.utils._pytree").setLevel(logging.ERROR)  # torchao registers enums the old way
    try:
        with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
            from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_
    except ImportError:
        raise ConfigError(
            "the dynamic method needs torchao", hint=install_hint("dynamic", "torchao")
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


@register("dynamic", "dq-clip", options=DynamicOptions, needs_calibration=False, dtypes=("float32",))
def dynamic_int8(model, calib, cfg: QuantConfig, opts: DynamicOptions, progress: bool = True):
    """DQ-CLIP: int8 weights, per-input activation scales at run time, on int8 kernels."""
    if cfg.bit_plan:
        raise ConfigError("dynamic quantization runs int8 kernels everywhere; it takes no bit plan",
                          hint="drop --layer-bits, or keep layers in float with --exclude")
    if (cfg.w_bits, cfg.a_bits) != (8, 8):
        raise ConfigError(f"dynamic quantization runs int8 kernels; {cfg.bits} is not available", hint="use --bits W8A8 with --method dynamic")
    comps = resolve_components(family_of(model), cfg.components)
    names = dynamic_layers(model, comps, cfg.exclude)
    with torch.no_grad():
        if opts.variant == "paper":
            count = apply_paper_dynamic(model, names)
            backend = "torch.ao quantize_dynamic (per-tensor int8 weights, per-tensor dynamic uint8 activations)"
        else:
            count = apply_dynamic_int8(model, names)
            backend = "torchao Int8DynamicActivationInt8Weight (per-channel weights, per-token activations)"
    if opts.compile:
        compile_components(model, comps)
    return model, MethodResult(family_of(model).name, list(comps),
                               details={"dynamic": {"variant": opts.variant, "backend": backend, "layers": sorted(names), "count": count}})

