"""Quantization methods: each a function ``(model, calib, config, options) -> (model, summary)`` in a
registry, with a typed options dataclass and its metadata (:class:`MethodInfo`).

A method module registers itself with :func:`register`; modules are imported on first lookup so
``vitq`` stays light to import.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Callable

from ..errors import ConfigError
from .options import MethodOptions, NoOptions

_METHOD_MODULES = ("baseline", "repq", "dynamic")
_REGISTRY: dict[str, "MethodInfo"] = {}
_loaded = False


@dataclass(frozen=True)
class MethodInfo:
    """A registered method: its function, options dataclass and what it needs."""

    name: str
    fn: Callable
    options: type = NoOptions
    needs_calibration: bool = True
    summary: str = ""
    aliases: tuple[str, ...] = field(default_factory=tuple)

    def parse_options(self, options) -> MethodOptions:
        return self.options.parse(options, method=self.name)

    def run(self, model, calib, config, progress: bool = True):
        """Validate ``config.options`` and apply the method; returns ``(model, summary)``."""
        return self.fn(model, calib, config, self.parse_options(config.options), progress=progress)


def register(*names: str, options: type = NoOptions, needs_calibration: bool = True, summary: str = ""):
    """Register ``fn`` under ``names`` (the first is its name, the others aliases)."""

    def wrap(fn):
        info = MethodInfo(names[0], fn, options, needs_calibration, summary or (fn.__doc__ or "").strip().split("\n")[0], tuple(names[1:]))
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
