"""Quantization methods: each a function ``(model, calib, config, options) -> (model, MethodResult)`` in a
registry, with a typed options dataclass and its metadata (:class:`MethodInfo`).

A method module registers itself with :func:`register`; modules are imported on first lookup so
``vitq`` stays light to import.
"""

from __future__ import annotations

import contextlib
import importlib
from dataclasses import dataclass, field
from typing import Callable

from ..errors import ConfigError
from .options import MethodOptions, NoOptions

_METHOD_MODULES = ("baseline", "repq", "dynamic", "recon", "liu2021", "qdiffusion", "p4q", "clamp")
_REGISTRY: dict[str, "MethodInfo"] = {}
_loaded = False


@dataclass
class MethodResult:
    """What a method reports about the model it quantized (it becomes ``model.vitq_info``).

    ``details`` holds the method's own record under its name (``{"repq": {...}}``).
    """

    family: str
    components: list[str]
    calibration: str | None = None  # "parallel" or "sequential"; None for methods without data
    scope: str | None = None  # "vitq" or "fqvit" for the baselines
    float_attention: list[str] = field(default_factory=list)  # blocks whose attention matmuls stay float
    details: dict = field(default_factory=dict)

    @classmethod
    def from_prepare(cls, summary: dict, **fields) -> "MethodResult":
        return cls(family=summary["family"], components=list(summary["components"]),
                   float_attention=list(summary.get("float_attention", [])), **fields)

    def to_dict(self) -> dict:
        out = {"family": self.family, "components": list(self.components)}
        for key in ("calibration", "scope"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        if self.float_attention:
            out["float_attention"] = list(self.float_attention)
        return {**out, **self.details}


@dataclass(frozen=True)
class MethodInfo:
    """A registered method: its function, options dataclass and what it needs."""

    name: str
    fn: Callable
    options: type = NoOptions
    needs_calibration: bool = True
    summary: str = ""
    aliases: tuple[str, ...] = field(default_factory=tuple)
    dtypes: tuple[str, ...] = ("float32", "bfloat16")  # model dtypes the method calibrates in
    trains: bool = False  # runs with gradients (learned prompts, adapters, rounding); else under no_grad
    models: tuple[str, ...] = ("transformer",)  # architecture kinds it supports (ModelAdapter.kind)
    accepts_calibration: bool | None = None  # takes data it does not need (clamp-vit: real images instead of synthetic)

    @property
    def takes_data(self) -> bool:
        return self.needs_calibration if self.accepts_calibration is None else self.accepts_calibration

    def parse_options(self, options) -> MethodOptions:
        return self.options.parse(options, method=self.name)

    def check_model(self, model) -> None:
        """A ConfigError, before any work, when the method does not support this architecture."""
        from ..models.families import family_of

        kind = family_of(model).kind
        if kind not in self.models:
            others = sorted(i.name for i in method_infos() if kind in i.models)
            raise ConfigError(f"the {self.name} method does not support a {kind} model ({type(model).__name__})",
                              hint=f"methods for {kind} models: {', '.join(others)}")

    def run(self, model, calib, config, progress: bool = True) -> tuple:
        """Validate ``config.options`` and the model's dtype, and apply the method; returns
        ``(model, MethodResult)``."""
        import torch

        from ..tensors import dtype_of

        dtype = str(dtype_of(model)).removeprefix("torch.")
        if dtype not in self.dtypes:
            raise ConfigError(f"the {self.name} method needs a model in {' or '.join(self.dtypes)}, this one is {dtype}",
                              hint="load the model in float32 (the default), or choose another method")
        self.check_model(model)
        opts = self.parse_options(config.options)
        with contextlib.nullcontext() if self.trains else torch.no_grad():
            model, result = self.fn(model, calib, config, opts, progress=progress)
        if not isinstance(result, MethodResult):
            raise TypeError(f"method {self.name} returned {type(result).__name__}, not a MethodResult")
        return model, result


def register(*names: str, options: type = NoOptions, needs_calibration: bool = True, summary: str = "",
             dtypes: tuple[str, ...] = ("float32", "bfloat16"), trains: bool = False, models: tuple[str, ...] = ("transformer",),
             accepts_calibration: bool | None = None):
    """Register ``fn`` under ``names`` (the first is its name, the others aliases)."""

    def wrap(fn):
        info = MethodInfo(names[0], fn, options, needs_calibration, summary or (fn.__doc__ or "").strip().split("\n")[0],
                          tuple(names[1:]), tuple(dtypes), trains, tuple(models), accepts_calibration)
        for n in names:
            _REGISTRY[n] = info
        return fn

    return wrap


def _load_all() -> None:
    global _loaded
    if not _loaded:
        for mod in _METHOD_MODULES:
            importlib.import_module(f".{mod}", __name__)
        _loaded = True


def available_methods() -> list[str]:
    _load_all()
    return sorted(_REGISTRY)


def method_infos() -> list[MethodInfo]:
    """Every method once (aliases folded), by name."""
    _load_all()
    return sorted({id(i): i for i in _REGISTRY.values()}.values(), key=lambda i: i.name)


def get_method(name: str) -> MethodInfo:
    _load_all()
    key = name.strip().lower()
    if key not in _REGISTRY:
        raise ConfigError(f"unknown method {name!r}", hint=f"known methods: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[key]
