"""Recording what flows through a model on calibration data, with bounded memory.

A :class:`Stream` holds recorded items (tensors, or tuples/lists/dicts of them and of plain values:
a module's ``(args, kwargs)``, its output) in memory up to a cap in MB and spills the rest to
safetensors files in a temporary folder, which it deletes when closed. It can be iterated any
number of times, in the order the items were added.

:func:`capture_inputs` runs batches through a model and records the positional and keyword
arguments one module receives (stopping the forward there, so the rest of the model is not run);
:func:`replay` runs that module again on what was recorded.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Iterable, Iterator

import torch
from torch import nn

_PLAIN = (type(None), bool, int, float, str)


class StopForward(Exception):
    """Raised by a recording hook to end a forward pass early; caught by the recorder."""


def _flatten(obj, prefix: str, tensors: dict) -> object:
    """A JSON-able skeleton of ``obj`` whose tensors are moved into ``tensors`` under path keys."""
    if isinstance(obj, torch.Tensor):
        tensors[prefix] = obj.contiguous()
        return {"t": prefix}
    if isinstance(obj, _PLAIN):
        return {"v": obj}
    if isinstance(obj, (tuple, list)):
        return {"seq": [_flatten(o, f"{prefix}.{i}", tensors) for i, o in enumerate(obj)], "tuple": isinstance(obj, tuple)}
    if isinstance(obj, dict) and all(isinstance(k, str) for k in obj):
        return {"map": {k: _flatten(v, f"{prefix}.{k}", tensors) for k, v in obj.items()}}
    raise TypeError(type(obj).__name__)


def _unflatten(skeleton, tensors: dict):
    if "t" in skeleton:
        return tensors[skeleton["t"]]
    if "v" in skeleton:
        return skeleton["v"]
    if "seq" in skeleton:
        items = [_unflatten(s, tensors) for s in skeleton["seq"]]
        return tuple(items) if skeleton["tuple"] else items
    return {k: _unflatten(v, tensors) for k, v in skeleton["map"].items()}


def _nbytes(obj) -> int:
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, (tuple, list)):
        return sum(_nbytes(o) for o in obj)
    if isinstance(obj, dict):
        return sum(_nbytes(o) for o in obj.values())
    return 0


def detach_clone(obj):
    """A copy of ``obj`` whose tensors are detached CPU clones (what a recording must keep)."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, tuple):
        return tuple(detach_clone(o) for o in obj)
    if isinstance(obj, list):
        return [detach_clone(o) for o in obj]
    if isinstance(obj, dict):
        return {k: detach_clone(v) for k, v in obj.items()}
    return obj


class Stream:
    """Recorded items, in memory up to ``cap_mb`` and on disk (safetensors) beyond it."""

    def __init__(self, cap_mb: float = 1024.0, spill_dir: str | Path | None = None):
        self.cap_bytes = int(cap_mb * 2**20)
        self.spill_parent = spill_dir
        self._items: list = []  # ("mem", item) or ("disk", path)
        self._bytes = 0
        self._dir: Path | None = None

    @classmethod
    def of(cls, items: Iterable, cap_mb: float = 1024.0, spill_dir=None) -> "Stream":
        stream = cls(cap_mb, spill_dir)
        for item in items:
            stream.append(item)
        return stream

    def __len__(self) -> int:
        return len(self._items)

    @property
    def bytes_in_memory(self) -> int:
        return self._bytes

    @property
    def spilled(self) -> int:
        return sum(1 for kind, _ in self._items if kind == "disk")

    def append(self, item) -> None:
        size = _nbytes(item)
        if self._bytes + size <= self.cap_bytes:
            self._items.append(("mem", item))
            self._bytes += size
            return
        try:
            tensors: dict = {}
            skeleton = _flatten(item, "x", tensors)
        except TypeError:  # an object safetensors cannot hold (a cache object): it stays in memory
            self._items.append(("mem", item))
            self._bytes += size
            return
        from safetensors.torch import save_file

        if self._dir is None:
            self._dir = Path(tempfile.mkdtemp(prefix="vitq-record-", dir=self.spill_parent))
        path = self._dir / f"{len(self._items):06d}.safetensors"
        save_file(tensors, str(path), metadata={"skeleton": json.dumps(skeleton)})
        self._items.append(("disk", path))

    def __getitem__(self, i: int):
        kind, item = self._items[i]
        if kind == "mem":
            return item
        from safetensors import safe_open

        with safe_open(str(item), framework="pt") as f:
            skeleton = json.loads(f.metadata()["skeleton"])
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        return _unflatten(skeleton, tensors)

    def __iter__(self) -> Iterator:
        for i in range(len(self._items)):
            yield self[i]

    def close(self) -> None:
        self._items.clear()
        self._bytes = 0
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        if getattr(self, "_dir", None) is not None:
            shutil.rmtree(self._dir, ignore_errors=True)


def on_device_of(module: nn.Module, item):
    """A recorded item (kept on the CPU) moved to where ``module`` runs."""
    from ..tensors import device_of, to_device

    device = device_of(module)
    return item if device.type == "cpu" else to_device(item, device)


@torch.no_grad()
def run_until(run: Callable, batch, hooks: list) -> None:
    """``run(batch)`` with the given hook handles removed afterwards; a StopForward ends it quietly."""
    try:
        run(batch)
    except StopForward:
        pass
    finally:
        for h in hooks:
            h.remove()


def capture_inputs(model: nn.Module, module: nn.Module, batches: Iterable, run: Callable, cap_mb: float = 1024.0,
                   stop: bool = True, spill_dir=None) -> Stream:
    """The ``(args, kwargs)`` that ``module`` receives for each batch, ``run(batch)`` driving ``model``.

    Batches that never reach the module record nothing. With ``stop`` the forward ends at the module.
    """
    stream = Stream(cap_mb, spill_dir)

    def hook(mod, args, kwargs):
        stream.append(detach_clone((args, kwargs)))
        if stop:
            raise StopForward
        return None

    for batch in batches:
        handle = module.register_forward_pre_hook(hook, with_kwargs=True)
        run_until(run, batch, [handle])
    return stream


def replay(module: nn.Module, stream: Stream) -> Iterator:
    """``module(*args, **kwargs)`` for every recorded input, moved to the module's device (a
    StopForward ends one call quietly)."""
    for args, kwargs in stream:
        args, kwargs = on_device_of(module, (args, kwargs))
        try:
            yield module(*args, **kwargs)
        except StopForward:
            yield None


def first_tensor(out):
    """The tensor a module's output stands for: itself, the first of a tuple, or a model output's
    ``last_hidden_state``."""
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, (tuple, list)) and out:
        return first_tensor(out[0])
    value = getattr(out, "last_hidden_state", None)
    return value if value is not None else out


def record(model: nn.Module, names: list[str], batches: Iterable, run: Callable, what: tuple[str, ...] = ("output",),
           cap_mb: float = 1024.0, spill_dir=None) -> dict[str, dict[str, Stream]]:
    """Record, for each named module and each batch, its ``input`` (``(args, kwargs)``) and/or its
    ``output`` (the first tensor it returns), in the model's current modes. The forward stops once
    every named module has been seen. Returns ``{name: {"input": Stream, "output": Stream}}``, memory
    capped per stream and spilled to disk past the cap."""
    out = {n: {w: Stream(cap_mb, spill_dir) for w in what} for n in names}
    modules = {n: model.get_submodule(n) for n in names}
    for batch in batches:
        pending = set(names)
        hooks = []

        def make(name):
            def pre(mod, args, kwargs):
                if "input" in out[name]:
                    out[name]["input"].append(detach_clone((args, kwargs)))

            def post(mod, args, kwargs, output):
                if "output" in out[name]:
                    out[name]["output"].append(detach_clone(first_tensor(output)))
                pending.discard(name)
                if not pending:
                    raise StopForward

            return pre, post

        for name, module in modules.items():
            pre, post = make(name)
            hooks.append(module.register_forward_pre_hook(pre, with_kwargs=True))
            hooks.append(module.register_forward_hook(post, with_kwargs=True))
        run_until(run, batch, hooks)
    return out


def record_side_by_side(model: nn.Module, names: list[str], batches: Iterable, run: Callable, what: tuple[str, ...] = ("output",),
                        cap_mb: float = 1024.0, spill_dir=None) -> dict[str, dict[str, dict[str, Stream]]]:
    """:func:`record` twice, full precision (every point off) and quantized (the points as they are):
    ``{name: {"fp": {...}, "quant": {...}}}``. The points' modes are restored afterwards."""
    from ..nn import points_disabled

    with points_disabled(model):
        fp = record(model, names, batches, run, what, cap_mb, spill_dir)
    quant = record(model, names, batches, run, what, cap_mb, spill_dir)
    return {n: {"fp": fp[n], "quant": quant[n]} for n in names}
