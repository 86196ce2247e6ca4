"""Training checkpoints as safetensors + JSON (never pickle), written atomically.

A checkpoint is a folder::

    tensors.safetensors   model.<name>, optimizer.<param index>.<key>, rng.torch, rng.<generator>
    state.json            the loop's state (epoch, step, history), the optimizer's param groups and
                          scalar state, the scheduler's state, what the tensors are

Writing goes to a temporary folder renamed into place, so an interrupted save leaves the previous
checkpoint intact. Loading restores model, optimizer, scheduler and the global RNG exactly, so a
resumed run continues as an uninterrupted one would.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ..errors import ConfigError

FORMAT = "vitq-train-checkpoint"


def _jsonable(value):
    if isinstance(value, torch.Tensor):
        return {"__tensor__": value.tolist(), "dtype": str(value.dtype).removeprefix("torch.")}
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def _from_json(value):
    if isinstance(value, dict) and "__tensor__" in value:
        return torch.tensor(value["__tensor__"], dtype=getattr(torch, value["dtype"]))
    if isinstance(value, dict):
        return {k: _from_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_from_json(v) for v in value]
    return value


def save_checkpoint(folder: str | Path, model: nn.Module, optimizer=None, scheduler=None, state: dict | None = None,
                    generators: dict[str, torch.Generator] | None = None) -> Path:
    """Write a checkpoint folder (atomically: the previous one stays until the new one is complete)."""
    folder = Path(folder)
    tensors = {f"model.{k}": v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    opt_meta = None
    if optimizer is not None:
        sd = optimizer.state_dict()
        scalars = {}
        for index, entry in sd["state"].items():
            for key, value in entry.items():
                if isinstance(value, torch.Tensor) and value.dim() > 0:
                    tensors[f"optimizer.{index}.{key}"] = value.detach().contiguous().clone()
                else:
                    scalars.setdefault(str(index), {})[key] = _jsonable(value)
        opt_meta = {"param_groups": _jsonable(sd["param_groups"]), "scalars": scalars, "indices": [str(i) for i in sd["state"]]}
    tensors["rng.torch"] = torch.get_rng_state()
    for name, g in (generators or {}).items():
        tensors[f"rng.{name}"] = g.get_state()
    meta = {"format": FORMAT, "state": _jsonable(state or {}), "optimizer": opt_meta,
            "scheduler": _jsonable(scheduler.state_dict()) if scheduler is not None else None}
    tmp = folder.parent / f".{folder.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        save_file(tensors, str(tmp / "tensors.safetensors"), metadata={"format": FORMAT})
        (tmp / "state.json").write_text(json.dumps(meta, indent=1) + "\n")
        old = folder.parent / f".{folder.name}.old-{os.getpid()}"
        if folder.exists():
            os.replace(folder, old)
        os.replace(tmp, folder)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def load_checkpoint(folder: str | Path, model: nn.Module, optimizer=None, scheduler=None,
                    generators: dict[str, torch.Generator] | None = None) -> dict:
    """Restore a checkpoint written by :func:`save_checkpoint`; returns the loop's state."""
    folder = Path(folder)
    try:
        meta = json.loads((folder / "state.json").read_text())
        tensors = load_file(str(folder / "tensors.safetensors"))
    except (OSError, ValueError) as err:
        raise ConfigError(f"cannot read the checkpoint {folder}: {err}", hint="start without --resume, or point at a complete checkpoint") from None
    if meta.get("format") != FORMAT:
        raise ConfigError(f"{folder} is not a vitq training checkpoint")
    model.load_state_dict({k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")})
    if optimizer is not None and meta.get("optimizer") is not None:
        om = meta["optimizer"]
        state = {}
        for index in om["indices"]:
            entry = {k.split(".", 2)[2]: v for k, v in tensors.items() if k.startswith(f"optimizer.{index}.")}
            entry.update(_from_json(om["scalars"].get(index, {})))
            state[int(index)] = entry
        optimizer.load_state_dict({"state": state, "param_groups": _from_json(om["param_groups"])})
    if scheduler is not None and meta.get("scheduler") is not None:
        scheduler.load_state_dict(_from_json(meta["scheduler"]))
    torch.set_rng_state(tensors["rng.torch"])
    for name, g in (generators or {}).items():
        if f"rng.{name}" in tensors:
            g.set_state(tensors[f"rng.{name}"])
    return _from_json(meta["state"])
