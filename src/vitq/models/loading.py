"""Turn a model spec into a module: ``zoo:NAME``, a vitq quantized folder, a local HF folder, or a
hub id (which needs network access)."""

from __future__ import annotations

import json
from pathlib import Path

from torch import nn

from ..errors import ModelError
from .families import SUPPORTED_CLASSES

_REFUSED_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".pkl", ".pickle")


def _class_for_folder(folder: Path):
    import transformers

    try:
        cfg = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError) as err:
        raise ModelError(f"cannot read {folder / 'config.json'}: {err}", hint="pass a folder written by save_pretrained") from None
    for arch in cfg.get("architectures") or []:
        if arch in SUPPORTED_CLASSES:
            return getattr(transformers, arch)
    named = ", ".join(cfg.get("architectures") or [cfg.get("model_type", "unknown")])
    raise ModelError(f"{folder} holds a {named} model, which vitq does not support", hint="supported: " + ", ".join(SUPPORTED_CLASSES))


def load_model(spec: str, **from_pretrained_kwargs) -> nn.Module:
    """Load a model in float32 eval mode from a spec string."""
    from ..saving import is_saved_folder, load

    spec = str(spec)
    if spec.startswith("zoo:"):
        from .. import zoo

        return load_model(str(zoo.path(spec[4:])), **from_pretrained_kwargs)
    path = Path(spec).expanduser()
    if path.is_file():
        if path.suffix.lower() in _REFUSED_SUFFIXES:
            raise ModelError(
                f"{path} is a pickled checkpoint; vitq reads only safetensors and JSON",
                hint="load it yourself with torch.load(..., weights_only=True), build the transformers model, and save it with save_pretrained (safetensors)",
            )
        raise ModelError(f"{path} is a file, not a model folder", hint="pass a folder with config.json and model.safetensors, a hub id, or zoo:NAME")
    if path.is_dir():
        if is_saved_folder(path):
            return load(path)
        if not (path / "config.json").is_file():
            raise ModelError(f"{path} has no config.json", hint="pass a folder written by save_pretrained or by vitq save")
        cls = _class_for_folder(path)
        return cls.from_pretrained(str(path), use_safetensors=True, **from_pretrained_kwargs).float().eval()
    if spec.count("/") > 1 or spec.startswith((".", "/", "~")):
        raise ModelError(f"model folder {spec} does not exist", hint="check the path")
    return _from_hub(spec, **from_pretrained_kwargs)


def _from_hub(hub_id: str, **kwargs) -> nn.Module:
    import transformers

    try:
        cfg = transformers.AutoConfig.from_pretrained(hub_id)
        archs = [a for a in (cfg.architectures or []) if a in SUPPORTED_CLASSES]
        if not archs:
            raise ModelError(f"{hub_id} is a {cfg.model_type} model, which vitq does not support", hint="supported: " + ", ".join(SUPPORTED_CLASSES))
        return getattr(transformers, archs[0]).from_pretrained(hub_id, use_safetensors=True, **kwargs).float().eval()
    except ModelError:
        raise
    except OSError as err:
        raise ModelError(
            f"cannot load {hub_id!r} from the Hugging Face hub ({str(err).splitlines()[0][:200]})",
            hint="this needs network access to the hub; offline, download the model elsewhere and pass its local folder, or use a zoo model (zoo:clip-tiny)",
        ) from None
