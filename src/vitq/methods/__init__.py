"""Quantization methods: each a function ``(model, calib, config) -> quantized model`` in a registry.

A method module registers itself with :func:`register`; modules are imported on first lookup so
``vitq`` stays light to import.
"""

from __future__ import annotations

import importlib
from typing import Callable

from ..errors import ConfigError

_METHOD_MODULES = ("baseline", "repq", "dynamic")
_REGISTRY: dict[str, Callable] = {}
_loaded = False


def register(*names: str):
    def wrap(fn):
        for n in names:
            _REGISTRY[n] = fn
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


def get_method(name: str) -> Callable:
    _load_all()
    key = name.strip().lower()
    if key not in _REGISTRY:
        raise ConfigError(f"unknown method {name!r}", hint=f"known methods: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[key]
