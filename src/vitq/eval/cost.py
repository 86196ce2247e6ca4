"""Size and compute: bytes on disk, the model size papers report, FLOPs and bit-operations per image.

Bits are read defensively: a layer counts at the bit width of its ``weight_quantizer`` /
``input_quantizer`` (a ``QuantMatMul``: ``a_quantizer`` / ``b_quantizer``) when that quantizer exists
and is active, and at 32 bits otherwise, so plain models and quantized ones are measured alike.

FLOPs follow the convention of the ViT literature (fvcore, DeiT, Swin, the PTQ papers): one
multiply-accumulate counts as one FLOP, so ViT-B/16 at 224² is ~17.6 GFLOPs. BOPs = FLOPs × weight
bits × activation bits, summed per layer.
"""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path
from typing import Callable

import torch
from torch.utils.flop_counter import FlopCounterMode

from ..data.preprocess import image_size_of
from ..errors import ModelError
from ..models.families import family_of, size_group_of
from .features import device_of, is_dual_encoder

FULL_BITS = 32


def quantizer_bits(quantizer) -> int:
    """The bits a quantizer applies, or 32 when there is none or it is switched off."""
    if quantizer is None:
        return FULL_BITS
    active = getattr(quantizer, "active", True)
    if callable(active):
        active = active()
    bits = getattr(quantizer, "bits", None)
    if not active or isinstance(bits, bool) or not isinstance(bits, int):
        return FULL_BITS
    return bits


def folder_bytes(path: str | Path) -> int:
    """Bytes on disk of a saved model folder (all files, recursively) or of one file."""
    path = Path(path)
    if path.is_file():
        return path.stat().st_size
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def _guess_group(name: str) -> str:
    """For modules of no supported family: ``image``, ``text`` or ``heads`` guessed from the name."""
    top = name.split(".")[0].lower()
    if "projection" in top or top in ("classifier", "head", "heads", "fc", "logit_scale", "logit_bias"):
        return "heads"
    if "text" in top:
        return "text"
    return "image"


def _family_or_none(model):
    try:
        return family_of(model)
    except ModelError:
        return None


def size_grouper(model) -> Callable[[str], str]:
    """Parameter name -> ``image``, ``text`` or ``heads``: from the model's family (models/families.py)."""
    try:
        family = family_of(model)
    except ModelError:
        return _guess_group
    return lambda name: size_group_of(family, name)


def _packed_tensors(module_name: str, module) -> list[tuple[str, int, int]]:
    """(name, numel, bits) of the weight and bias a torch.ao dynamic Linear keeps packed, not as parameters."""
    from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear

    if not isinstance(module, DynamicLinear):
        return []
    weight, bias = module._weight_bias()
    out = [(f"{module_name}.weight", weight.numel(), 8)]
    if bias is not None:
        out.append((f"{module_name}.bias", bias.numel(), FULL_BITS))
    return out


def model_size(model) -> dict:
    """Parameters and bytes per component at the bits each weight is stored with (fp32 = 32 bits).

    Quantizer parameters (scales, zero-points) are reported apart as overhead, so ``params`` matches
    the full-precision model.
    """
    components: dict[str, dict] = {}
    group_of = size_grouper(model)
    overhead_bits = 0
    seen: set[int] = set()
    for module_name, module in model.named_modules():
        if module_name.split(".")[-1].endswith("quantizer"):  # scales and zero-points, stored as buffers
            overhead_bits += sum(b.numel() * b.element_size() * 8 for b in module.buffers(recurse=False))
        for full, numel, bits in _packed_tensors(module_name, module):  # quantize_dynamic's packed Linears
            entry = components.setdefault(group_of(full), {"params": 0, "bits": 0})
            entry["params"] += numel
            entry["bits"] += numel * bits
        for param_name, param in module.named_parameters(recurse=False):
            if id(param) in seen:  # tied weights are stored once
                continue
            seen.add(id(param))
            full = f"{module_name}.{param_name}" if module_name else param_name
            if any(part.endswith("quantizer") for part in module_name.split(".")):
                overhead_bits += param.numel() * param.element_size() * 8
                continue
            bits = quantizer_bits(getattr(module, "weight_quantizer", None)) if param_name == "weight" else FULL_BITS
            if _is_dynamic_int8(param):
                bits = 8  # the dynamic method's torchao int8 weights
            entry = components.setdefault(group_of(full), {"params": 0, "bits": 0})
            entry["params"] += param.numel()
            entry["bits"] += param.numel() * bits
    out = {}
    for name in sorted(components):
        entry = components[name]
        out[name] = {"params": entry["params"], "bytes": entry["bits"] / 8,
                     "avg_bits": entry["bits"] / entry["params"] if entry["params"] else 0.0}
    params = sum(c["params"] for c in out.values())
    size = sum(c["bytes"] for c in out.values())
    return {"components": out, "params": params, "bytes": size, "fp32_bytes": params * 4,
            "compression": (params * 4 / size) if size else 0.0, "quantizer_overhead_bytes": overhead_bits / 8}


def _sdpa_flops(query_shape, key_shape, value_shape, *args, **kwargs) -> int:
    # FlopCounterMode has no formula for the CPU flash-attention kernel: Q·Kᵀ plus A·V, 2 FLOPs per MAC.
    batch = math.prod(query_shape[:-2])
    length, dim = query_shape[-2], query_shape[-1]
    return 2 * batch * length * key_shape[-2] * (dim + value_shape[-1])


def _extra_formulas() -> dict:
    ops = ("_scaled_dot_product_flash_attention_for_cpu",)
    return {getattr(torch.ops.aten, op): _sdpa_flops for op in ops if hasattr(torch.ops.aten, op)}


def _is_dynamic_int8(param) -> bool:
    return any(type(t).__name__ == "Int8Tensor" for t in (param, getattr(param, "data", None)))


def _is_matmul_module(module) -> bool:
    return hasattr(module, "a_quantizer") and hasattr(module, "b_quantizer")


def _layer_cost(module, args, output, upstream_bits: int | None = None) -> tuple[str, int, int, int] | None:
    """(kind, MACs, weight bits, activation bits) of one call of a counted layer. ``upstream_bits``: the
    bits its input was quantized to before it arrived (a LayerNorm's output point feeding q, k, v)."""
    if _is_matmul_module(module) and len(args) >= 2:
        a, b = args[0], args[1]
        batch = math.prod(torch.broadcast_shapes(a.shape[:-2], b.shape[:-2]))
        macs = batch * a.shape[-2] * a.shape[-1] * b.shape[-1]
        return "matmul", macs, quantizer_bits(module.a_quantizer), quantizer_bits(module.b_quantizer)
    w_bits = quantizer_bits(getattr(module, "weight_quantizer", None))
    a_bits = quantizer_bits(getattr(module, "input_quantizer", None))
    if a_bits == FULL_BITS and upstream_bits is not None:
        a_bits = upstream_bits
    if _is_dynamic_int8(getattr(module, "weight", None)):
        w_bits = a_bits = 8  # torchao dynamic int8: int8 weights and int8 activations at run time
    out = output if torch.is_tensor(output) else output[0]
    if isinstance(module, torch.nn.Linear):
        return "linear", out.numel() // module.out_features * module.in_features * module.out_features, w_bits, a_bits
    if isinstance(module, torch.nn.Conv2d):
        kh, kw = module.kernel_size
        return "conv", out.numel() * (module.in_channels // module.groups) * kh * kw, w_bits, a_bits
    return None


def compute_cost(model, image_size: int | None = None) -> dict:
    """FLOPs (MACs) and BOPs of one image through the image tower (or the whole classifier; a
    diffusion UNet: one denoising step of one sample).

    Linear, Conv2d and QuantMatMul layers are counted by forward hooks with their own bits; whatever
    else ``FlopCounterMode`` sees (the attention matmuls of an unquantized attention) counts at 32×32 bits.
    """
    family = _family_or_none(model)
    if family is not None and family.kind == "unet":  # one denoising step on a sample of the model's size
        inputs = family.example_inputs(model)
        size = int(inputs["sample"].shape[-1])
    else:
        size = image_size or image_size_of(model.config)
        x = torch.zeros(1, 3, size, size, device=device_of(model), dtype=next(model.parameters()).dtype)
    calls: list[tuple[str, int, int, int]] = []
    # Tensors that left an active quantization point, with its bits: a linear fed one of them (q, k, v
    # after a LayerNorm's output point) computes on quantized inputs though it has no point of its own.
    quantized: dict[int, tuple[torch.Tensor, int]] = {}

    def mark(module, args, output):
        if torch.is_tensor(output) and getattr(module, "active", False) and module.role != "weight":
            quantized[id(output)] = (output, module.bits)

    def record(module, args, output):
        seen = quantized.get(id(args[0])) if args and torch.is_tensor(args[0]) else None
        cost = _layer_cost(module, args, output, seen[1] if seen is not None and seen[0] is args[0] else None)
        if cost is not None:
            calls.append(cost)

    from ..nn import TensorQuantizer

    handles = [m.register_forward_hook(record) for m in model.modules()
               if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d)) or _is_matmul_module(m)]
    handles += [m.register_forward_hook(mark) for m in model.modules() if isinstance(m, TensorQuantizer)]
    counter = FlopCounterMode(display=False, custom_mapping=_extra_formulas())
    was_training = model.training
    # FlopCounterMode's module tracker hooks autograd for tensors that require grad, which fails under
    # no_grad when a module takes a parameter as input (a weight quantizer): freeze them instead.
    frozen = [p for p in model.parameters() if p.requires_grad]
    for p in frozen:
        p.requires_grad_(False)
    model.eval()
    try:
        with counter:
            if family is not None and family.kind == "unet":
                model(**inputs)
            elif is_dual_encoder(model):
                model.get_image_features(pixel_values=x)
            else:
                model(pixel_values=x)
    finally:
        for h in handles:
            h.remove()
        for p in frozen:
            p.requires_grad_(True)
        model.train(was_training)
    by_kind: dict[str, int] = defaultdict(int)
    by_bits: dict[str, int] = defaultdict(int)
    bops = 0
    for kind, macs, w_bits, a_bits in calls:
        by_kind[kind] += macs
        by_bits[f"W{w_bits}A{a_bits}"] += macs
        bops += macs * w_bits * a_bits
    total = counter.get_total_flops() // 2
    other = max(0, total - sum(by_kind.values()))
    if other:
        by_kind["other_matmul"] += other
        by_bits[f"W{FULL_BITS}A{FULL_BITS}"] += other
        bops += other * FULL_BITS * FULL_BITS
    flops = sum(by_kind.values())
    return {"image_size": size, "flops": flops, "bops": bops, "flops_by_kind": dict(by_kind),
            "flops_by_bits": dict(by_bits)}


def cost_report(model, folder: str | Path | None = None) -> dict:
    """Size per component, disk bytes (when the model has a folder) and per-image FLOPs/BOPs."""
    report = {"size": model_size(model), "compute": compute_cost(model)}
    folder = folder or getattr(model, "name_or_path", None)
    if folder and Path(str(folder)).is_dir():
        report["disk_bytes"] = folder_bytes(folder)
    return report
