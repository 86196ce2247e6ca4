"""Turn a model spec into a float module: ``zoo:NAME``, a local HF folder, a state dict beside its
config, or a hub id (which needs network access). Quantized folders are loaded a layer above
(:func:`vitq.saving.load_any`)."""

from __future__ import annotations

import json
from pathlib import Path

from torch import nn

from ..errors import ModelError, install_hint
from .families import SUPPORTED_CLASSES

# PyTorch checkpoints are read only with torch.load(weights_only=True): tensors, never code.
_TORCH_SUFFIXES = (".pt", ".pth", ".bin")


def transformers_class(name: str):
    """The transformers model class of that name, or None."""
    import transformers
    from transformers import PreTrainedModel

    try:
        cls = getattr(transformers, name, None)
    except Exception:  # transformers' lazy module raises on a few names it cannot import here
        return None
    return cls if isinstance(cls, type) and issubclass(cls, PreTrainedModel) else None


def diffusers_class(name: str):
    """The diffusers model class of that name (a UNet), or None (also when diffusers is absent)."""
    try:
        import diffusers
        from diffusers import ModelMixin
    except ImportError:
        return None
    cls = getattr(diffusers, name, None)
    return cls if isinstance(cls, type) and issubclass(cls, ModelMixin) else None


def library_class(name: str):
    """The transformers or diffusers model class of that name, or None."""
    return transformers_class(name) or diffusers_class(name)


def library_class_name(model: nn.Module) -> str:
    """The transformers (or diffusers) class a model is or derives from: what a saved folder records
    to rebuild it."""
    for cls in type(model).__mro__:
        if library_class(cls.__name__) is cls:
            return cls.__name__
    raise ModelError(f"{type(model).__name__} is not a transformers or diffusers model, so vitq cannot save and rebuild it",
                     hint="quantize a transformers model or a diffusers UNet (or a subclass of one)")


def build_from_config(cls, config_path: Path) -> nn.Module:
    """An untrained model of ``cls`` from its config.json (transformers or diffusers)."""
    if hasattr(cls, "config_class"):
        return cls(cls.config_class.from_json_file(str(config_path)))
    return cls.from_config(json.loads(Path(config_path).read_text()))


def model_config_dict(model: nn.Module) -> dict:
    """The config a saved folder writes as config.json."""
    cfg = model.config
    if hasattr(cfg, "to_dict") and not isinstance(cfg, dict):
        return cfg.to_dict()
    return {"_class_name": type(model).__name__, **dict(cfg)}


def load_scheduler(source, kind: str = "ddim"):
    """The noise scheduler of a diffusion model as a DDIM (default) or DDPM sampler: ``source`` is
    ``zoo:NAME``, a folder holding scheduler_config.json (or a pipeline folder with ``scheduler/``),
    or the UNet itself (the folder it was loaded from)."""
    try:
        import diffusers
    except ImportError:
        raise ModelError("sampling a diffusion model needs diffusers", hint=install_hint("diffusion", "diffusers")) from None
    classes = {"ddim": diffusers.DDIMScheduler, "ddpm": diffusers.DDPMScheduler}
    if kind not in classes:
        raise ModelError(f"unknown scheduler {kind!r}", hint="use ddim or ddpm")
    if isinstance(source, nn.Module):
        folder = getattr(getattr(source, "config", None), "_name_or_path", None) or getattr(source, "name_or_path", None)
        if not folder:
            raise ModelError("this UNet does not say which folder it was loaded from, so its scheduler is unknown",
                             hint="pass the scheduler: option scheduler=FOLDER (with scheduler_config.json) or zoo:NAME")
        source = folder
    source = str(source)
    if source.startswith("zoo:"):
        from .. import zoo

        source = str(zoo.path(source[4:]))
    folder = Path(source).expanduser()
    for candidate in (folder, folder / "scheduler", folder.parent / "scheduler"):
        if (candidate / "scheduler_config.json").is_file():
            return classes[kind].from_pretrained(str(candidate))
    raise ModelError(f"no scheduler_config.json in {folder} (nor in a scheduler/ folder beside it)",
                     hint="pass the folder of the sampler's scheduler (option scheduler=FOLDER) or zoo:NAME")


def _class_for_folder(folder: Path):
    try:
        cfg = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError) as err:
        raise ModelError(f"cannot read {folder / 'config.json'}: {err}", hint="pass a folder written by save_pretrained") from None
    for arch in cfg.get("architectures") or []:
        cls = transformers_class(arch)
        if cls is not None:
            return cls
    if "_class_name" in cfg:  # a diffusers model folder (a UNet)
        cls = diffusers_class(cfg["_class_name"])
        if cls is not None:
            return cls
        raise ModelError(f"{folder} holds a diffusers {cfg['_class_name']}, which vitq cannot build here",
                         hint=install_hint("diffusion", "diffusers") + "; vitq quantizes UNet2DModel and UNet2DConditionModel")
    named = ", ".join(cfg.get("architectures") or [cfg.get("model_type", "unknown")])
    raise ModelError(f"{folder} holds a {named} model, which this transformers version cannot build",
                     hint="check config.json's architectures; vitq is tested on: " + ", ".join(SUPPORTED_CLASSES))


def _from_torch_checkpoint(path: Path) -> nn.Module:
    """A state dict saved with torch.save, next to the config.json of its transformers model."""
    import pickle

    import torch

    if not (path.parent / "config.json").is_file():
        raise ModelError(
            f"{path} is a bare state dict; vitq needs the model's config.json beside it to know the architecture",
            hint="put the transformers config.json in the same folder, or save the model with save_pretrained",
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError) as err:
        raise ModelError(
            f"refused to load {path}: it is not a plain tensor checkpoint ({str(err).splitlines()[0][:160]})",
            hint="vitq never unpickles code; re-save the weights as a state dict of tensors or as safetensors",
        ) from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelError(f"{path} does not hold a state dict of tensors", hint="save model.state_dict() with torch.save")
    cls = _class_for_folder(path.parent)
    model = cls(cls.config_class.from_json_file(str(path.parent / "config.json")))
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or [k for k in missing if not k.endswith("position_ids")]:
        raise ModelError(
            f"{path} does not match the {cls.__name__} of its config.json "
            f"({len(missing)} missing, {len(unexpected)} unexpected tensors, e.g. {(missing + unexpected)[0]})",
            hint="check that the checkpoint and config.json belong to the same model",
        )
    return model.eval()


# A folder written by vitq.save (its quantized weights are stored as codes that from_pretrained
# would not read); loaded by vitq.load / vitq.saving.load_any, above this layer.
VITQ_FOLDER_MARKER = "vitq_config.json"


# Float dtypes a model can be loaded in (bf16 halves the memory of a big model; methods say which they accept).
MODEL_DTYPES = ("float32", "bfloat16", "float16")


def model_dtype(name: str | None):
    """The torch dtype for a ``--dtype`` name (``None``: float32)."""
    import torch

    name = "float32" if name is None else str(name).removeprefix("torch.")
    name = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16", "half": "float16"}.get(name, name)
    if name not in MODEL_DTYPES:
        raise ModelError(f"unknown model dtype {name!r}", hint="choose one of: " + ", ".join(MODEL_DTYPES))
    return getattr(torch, name)


def load_model(spec: str, dtype: str | None = None, **from_pretrained_kwargs) -> nn.Module:
    """Load a float model in eval mode from a spec: ``zoo:NAME``, a local HF folder, a
    ``.pt``/``.bin`` state dict beside its config.json, or a hub id; in float32 unless ``dtype``
    (``"bfloat16"``, ``"float16"``) says otherwise."""
    target = model_dtype(dtype)
    # from_pretrained builds the model in the target dtype: a bf16 ViT-L never exists in fp32 here
    model = _load_float(str(spec), dtype=target, **from_pretrained_kwargs)
    if next(model.parameters()).dtype != target:  # diffusers warns on a .to() that changes nothing
        model = model.to(target)
    return model.eval()


def _load_float(spec: str, **from_pretrained_kwargs) -> nn.Module:
    if spec.startswith("zoo:"):
        from .. import zoo

        return _load_float(str(zoo.path(spec[4:])), **from_pretrained_kwargs)
    path = Path(spec).expanduser()
    if path.is_file():
        if path.suffix.lower() in _TORCH_SUFFIXES:
            from_pretrained_kwargs.pop("dtype", None)
            return _from_torch_checkpoint(path)
        raise ModelError(
            f"{path} is a {path.suffix or 'suffix-less'} file, not a model vitq can read",
            hint="pass a model folder (config.json + model.safetensors), a .pt/.bin state dict beside a config.json, a hub id, or zoo:NAME",
        )
    if path.is_dir():
        if (path / VITQ_FOLDER_MARKER).is_file():
            raise ModelError(f"{path} is a vitq quantized-model folder, not a float model",
                             hint="load it with vitq.load(PATH); vitq eval, info and export take it as --model; to quantize again, start from the float model")
        if not (path / "config.json").is_file() and (path / "model_index.json").is_file() and (path / "unet" / "config.json").is_file():
            path = path / "unet"  # a diffusers pipeline folder: vitq quantizes its UNet
        if not (path / "config.json").is_file():
            raise ModelError(f"{path} has no config.json", hint="pass a folder written by save_pretrained or by vitq save")
        cls = _class_for_folder(path)
        if diffusers_class(cls.__name__) is cls and "dtype" in from_pretrained_kwargs:
            from_pretrained_kwargs["torch_dtype"] = from_pretrained_kwargs.pop("dtype")
        return cls.from_pretrained(str(path), use_safetensors=True, **from_pretrained_kwargs)
    if spec.count("/") > 1 or spec.startswith((".", "/", "~")):
        raise ModelError(f"model folder {spec} does not exist", hint="check the path")
    return _from_hub(spec, **from_pretrained_kwargs)


def _from_hub(hub_id: str, **kwargs) -> nn.Module:
    import transformers

    try:
        cfg = transformers.AutoConfig.from_pretrained(hub_id)
        classes = [c for c in (transformers_class(a) for a in (cfg.architectures or [])) if c is not None]
        if not classes:
            raise ModelError(f"{hub_id} is a {cfg.model_type} model that names no transformers model class",
                             hint="vitq is tested on: " + ", ".join(SUPPORTED_CLASSES))
        return classes[0].from_pretrained(hub_id, use_safetensors=True, **kwargs)
    except ModelError:
        raise
    except OSError as err:
        raise ModelError(
            f"cannot load {hub_id!r} from the Hugging Face hub ({str(err).splitlines()[0][:200]})",
            hint="this needs network access to the hub; offline, download the model elsewhere and pass its local folder, or use a zoo model (zoo:clip-tiny)",
        ) from None
