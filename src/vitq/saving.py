"""Save and load quantized models as inspectable folders (safetensors + JSON, never pickle).

Folder layout::

    vitq_config.json     how the model was quantized, its class, where the points are
    config.json          the original transformers model config
    quant_state.json     per point: kind, bits, axis, symmetric, scales and zero-points
    vitq_weights.safetensors  float tensors, and integer weight codes (two 4-bit codes per byte);
                         not named model.safetensors, so that plain transformers refuses the folder
                         instead of loading the codes as weights (format v1 used that name)
    manifest.json        SHA-256 of every file, checked on load
    (the tokenizer and image-processor files of the source model, from its folder or the hub cache)

Writing goes to a temporary folder renamed into place, so an interrupted save never leaves a
half-written folder nor damages the previous one.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ._version import __version__
from .io_utils import atomic_folder, check_output_dir, file_sha256
from .errors import IntegrityError, ModelError
from .nn import WEIGHT_QUANT_LAYERS, quant_state, quantizers
from .nn.structure import describe_structure, rebuild_structure
from .quant.packing import pack_codes, unpack_codes
from .quant.uniform import int_range

FORMAT = "vitq-quantized"
FORMAT_VERSION = 2
WEIGHTS_FILES = {1: "model.safetensors", 2: "vitq_weights.safetensors"}  # by format version


def weights_file(folder: str | Path) -> Path:
    """The weights file of a saved folder, whichever format version wrote it."""
    folder = Path(folder)
    for name in reversed(WEIGHTS_FILES.values()):
        if (folder / name).is_file():
            return folder / name
    return folder / WEIGHTS_FILES[FORMAT_VERSION]


def _packed_weights(model: nn.Module) -> dict[str, dict]:
    """Weights stored as integer codes: those of layers whose uniform weight quantizer is active."""
    out = {}
    for name, m in model.named_modules():
        if isinstance(m, WEIGHT_QUANT_LAYERS) and m.weight_quantizer is not None and m.weight_quantizer.active:
            if len(m.weight_parts()) > 1:
                continue  # a split layer's halves have their own scales: its weight is stored as it is
            wq = m.weight_quantizer.quantizer
            if wq.kind != "uniform" or not wq.calibrated:
                continue
            qmin, _ = int_range(wq.bits, wq.symmetric)
            out[f"{name}.weight"] = {"bits": wq.bits, "qmin": qmin, "shape": list(m.weight.shape), "quantizer": f"{name}.weight_quantizer",
                                     "dtype": str(m.weight.dtype).removeprefix("torch.")}
    return out


def _write_json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n", encoding="utf-8")


def save(model: nn.Module, out: str | Path, overwrite: bool = False) -> Path:
    """Save a quantized model (from :func:`vitq.quantize`) to a folder; returns the folder."""
    info = getattr(model, "vitq_info", None)
    if info is None:
        raise ModelError("this model was not quantized by vitq", hint="call vitq.quantize(model, config, calib) first")
    out = check_output_dir(out, overwrite)
    with atomic_folder(out) as tmp:
        _write_folder(model, info, tmp)
    return out


def _write_folder(model: nn.Module, info: dict, folder: Path) -> None:
    from .methods.dynamic import is_dynamic_weight, is_paper_dynamic, paper_dynamic_tensors
    from .models.loading import library_class_name, model_config_dict

    packed = _packed_weights(model)
    state = model.state_dict()
    tensors, dynamic = {}, []
    # DQ-CLIP's paper variant: quantize_dynamic Linears hold packed params, stored as codes + scale.
    paper = {n: m for n, m in model.named_modules() if is_paper_dynamic(m)}
    for name, module in paper.items():
        for part, t in paper_dynamic_tensors(module).items():
            tensors[f"{name}.paper_int8.{part}"] = t
    for key, t in state.items():
        if any(key.startswith(f"{name}.") for name in paper):  # packed params and an unused output scale
            continue
        if is_dynamic_weight(t):  # torchao int8 weight of the dynamic method: codes and per-row scales
            tensors[key + ".int8"] = t.qdata.contiguous()
            tensors[key + ".int8_scale"] = t.scale.reshape(-1).float().contiguous()
            dynamic.append(key[: -len(".weight")])
        elif key in packed:
            meta = packed[key]
            wq = model.get_submodule(meta["quantizer"]).quantizer
            tensors[key + ".codes"] = pack_codes(wq.quantize(t.detach()), meta["bits"], meta["qmin"]).contiguous()
        else:
            tensors[key] = t.detach().contiguous().clone()
    save_file(tensors, str(folder / WEIGHTS_FILES[FORMAT_VERSION]), metadata={"format": FORMAT})
    _write_json(folder / "config.json", model_config_dict(model))
    points = quant_state(model)
    _write_json(folder / "vitq_config.json", {
        "format": FORMAT, "format_version": FORMAT_VERSION, "vitq_version": __version__,
        "model_class": library_class_name(model), "info": info,
        "structure": describe_structure(model), "points": points, "packed_weights": packed,
        "dynamic_weights": dynamic, "paper_dynamic_layers": sorted(paper),
        "attn_implementation": getattr(model.config, "_attn_implementation", None),
    })
    detail = {}
    for name, q in quantizers(model):
        detail[name] = dict(points[name], scale=q.quantizer.scale.detach().reshape(-1).tolist(),
                            zero_point=getattr(q.quantizer, "zero_point", torch.zeros(1)).reshape(-1).tolist())
    _write_json(folder / "quant_state.json", detail)
    from .models.side_files import save_side_files

    save_side_files(model, folder)
    manifest = {p.name: file_sha256(p) for p in sorted(folder.iterdir()) if p.is_file()}
    _write_json(folder / "manifest.json", {"sha256": manifest})


def verify_folder(folder: str | Path) -> dict:
    """Check every file against the manifest written at save time; return the vitq config."""
    folder = Path(folder)
    manifest_path = folder / "manifest.json"
    if not manifest_path.is_file():
        raise IntegrityError(f"{folder} has no manifest.json", hint="it is not a folder written by vitq.save, or it was damaged; save the model again")
    try:
        manifest = json.loads(manifest_path.read_text())["sha256"]
    except (ValueError, KeyError) as err:
        raise IntegrityError(f"{manifest_path} is unreadable: {err}", hint="save the model again") from None
    for name, digest in manifest.items():
        path = folder / name
        if not path.is_file():
            raise IntegrityError(f"{path} is missing", hint="the saved folder is incomplete; save the model again")
        if file_sha256(path) != digest:
            raise IntegrityError(f"{path} was changed after saving (checksum mismatch)", hint="restore the file or save the model again")
    return json.loads((folder / "vitq_config.json").read_text())


def is_saved_folder(path: str | Path) -> bool:
    return (Path(path) / "vitq_config.json").is_file()


def float_source(quantized: nn.Module) -> nn.Module | None:
    """The float model a saved vitq model was quantized from, when its folder records it and it
    loads here; else None."""
    from .errors import VitqError
    from .models.loading import load_model

    source = (getattr(quantized, "vitq_info", None) or {}).get("source")
    if not source:
        return None
    try:
        return load_model(source)
    except (VitqError, OSError):
        return None


def _add_folded_biases(model: nn.Module, tensors: dict) -> None:
    """A reparameterization may give a bias-free layer (Swin's patch-merging reduction) a bias."""
    expected = set(model.state_dict())
    for key in tensors:
        if key not in expected and key.endswith(".bias"):
            owner = model.get_submodule(key[: -len(".bias")])
            if getattr(owner, "bias", 0) is None:
                owner.bias = nn.Parameter(torch.zeros_like(tensors[key]))


def _restore_dtypes(model: nn.Module, tensors: dict) -> None:
    """A model calibrated in bf16 keeps its layers in bf16 (its quantizer scales stay float32):
    each tensor takes the dtype it was saved in, which load_state_dict would cast away."""
    for key, t in tensors.items():
        owner, _, leaf = key.rpartition(".")
        module = model.get_submodule(owner) if owner else model
        current = getattr(module, leaf, None)
        if isinstance(current, torch.Tensor) and current.is_floating_point() and current.dtype != t.dtype:
            current.data = current.data.to(t.dtype)


def load_any(spec: str | Path, dtype: str | None = None) -> nn.Module:
    """A model from any spec the CLI takes: a vitq quantized folder (:func:`load`), or a float model
    (``zoo:NAME``, a local HF folder, a state dict, a hub id: :func:`vitq.models.loading.load_model`)
    in ``dtype`` (float32 by default)."""
    from .models.loading import load_model, model_dtype

    if is_saved_folder(spec):
        if dtype is not None and model_dtype(dtype) != torch.float32:
            raise ModelError(f"{spec} is a quantized folder; --dtype applies to float models only",
                             hint="drop --dtype: a quantized model loads in the dtype it was calibrated in")
        return load(spec)
    return load_model(str(spec), dtype=dtype)


def load(folder: str | Path) -> nn.Module:
    """Load a folder written by :func:`save`; the model gives the same outputs as when it was saved."""
    import transformers

    from .models.attention import use_quant_attention
    from .models.families import family_of
    from .models.loading import build_from_config, library_class

    folder = Path(folder)
    if not is_saved_folder(folder):
        raise ModelError(f"{folder} is not a vitq quantized-model folder (no vitq_config.json)", hint="pass a folder written by `vitq quantize` or vitq.save")
    meta = verify_folder(folder)
    if meta.get("format") != FORMAT or meta.get("format_version", 0) > FORMAT_VERSION:
        raise ModelError(f"{folder} was written in format {meta.get('format')} v{meta.get('format_version')} by vitq "
                         f"{meta.get('vitq_version', '(unknown version)')}; this vitq {__version__} reads {FORMAT} up to v{FORMAT_VERSION}",
                         hint=f"upgrade vitq to {meta.get('vitq_version', 'the version that wrote it')} or later")
    cls_name = meta["model_class"]
    cls = library_class(cls_name)
    if cls is None:
        raise ModelError(f"{folder} holds a {cls_name}, which this transformers version ({transformers.__version__}) cannot build",
                         hint="install the transformers (or, for a UNet, diffusers) version it was saved with")
    model = build_from_config(cls, folder / "config.json").eval()
    if hasattr(model.config, "to_json_file"):
        model.config._name_or_path = str(folder)
        attn = meta.get("attn_implementation", "vitq_eager")
        if attn == "vitq_eager":
            use_quant_attention(model)
        elif attn:
            model.set_attn_implementation(attn)
    else:  # a diffusers UNet: its folder (for the scheduler beside it) and vitq's attention processor
        model.register_to_config(_name_or_path=str(folder))
        family_of(model).hook_attention(model)
    rebuild_structure(model, meta["structure"], meta["points"])
    tensors = load_file(str(folder / WEIGHTS_FILES.get(meta.get("format_version", 1), WEIGHTS_FILES[1])))
    for key, packed in meta["packed_weights"].items():
        codes = unpack_codes(tensors.pop(key + ".codes"), packed["bits"], packed["qmin"], packed["shape"])
        wq = model.get_submodule(packed["quantizer"]).quantizer
        wq.set_params(tensors[packed["quantizer"] + ".quantizer.scale"], tensors[packed["quantizer"] + ".quantizer.zero_point"])
        tensors[key] = wq.dequantize(codes).to(getattr(torch, packed.get("dtype", "float32")))
    dynamic = {name: (tensors.pop(f"{name}.weight.int8"), tensors.pop(f"{name}.weight.int8_scale"))
               for name in meta.get("dynamic_weights", [])}
    for name, (codes, scale) in dynamic.items():
        tensors[f"{name}.weight"] = codes.float() * scale[:, None]
    paper = {}
    for name in meta.get("paper_dynamic_layers", []):
        prefix = f"{name}.paper_int8."
        paper[name] = {k[len(prefix):]: tensors.pop(k) for k in [k for k in tensors if k.startswith(prefix)]}
        tensors[f"{name}.weight"] = (paper[name]["int8"].float() - paper[name]["int8_zero_point"].float()) * paper[name]["int8_scale"].float()
        if "bias" in paper[name]:
            tensors[f"{name}.bias"] = paper[name]["bias"]
    _add_folded_biases(model, tensors)
    model.load_state_dict(tensors, strict=True)
    _restore_dtypes(model, tensors)
    if paper:
        from .methods.dynamic import apply_paper_dynamic, restore_paper_dynamic

        apply_paper_dynamic(model, set(paper))
        for name, parts in paper.items():  # the stored codes and scale, not a re-quantization
            restore_paper_dynamic(model.get_submodule(name), parts)
    if dynamic:
        from .methods.dynamic import apply_dynamic_int8

        with torch.no_grad():
            apply_dynamic_int8(model, set(dynamic))
            for name, (codes, scale) in dynamic.items():  # the stored codes, not a re-quantization
                weight = model.get_submodule(name).weight
                weight.qdata.copy_(codes)
                weight.scale.copy_(scale.view_as(weight.scale))
    model.eval()  # the modules rebuilt above were created in training mode
    model.vitq_info = meta["info"]
    return model
