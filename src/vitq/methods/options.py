"""Typed method options: one small frozen dataclass per method, validated on construction.

``QuantConfig.options`` (a dict, from Python or from ``--option KEY=VALUE``) is turned into the
method's dataclass by :meth:`MethodOptions.parse`: an unknown key is an error that lists the known
ones with their defaults, and values are converted to the field's type (``"true"`` -> True,
``"0.5"`` -> 0.5) or refused with the reason.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, fields

from ..errors import ConfigError

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def _convert(name: str, kind, value):
    """``value`` as the annotated type ``kind`` (bool, int, float, str, tuple[float, ...])."""
    origin = typing.get_origin(kind)
    if origin is typing.Union:  # Optional[X]: None stays None
        args = [a for a in typing.get_args(kind) if a is not type(None)]
        return None if value is None or (isinstance(value, str) and value.lower() == "none") else _convert(name, args[0], value)
    if origin is tuple:
        inner = typing.get_args(kind)[0]
        items = value.split(",") if isinstance(value, str) else value
        if not isinstance(items, (list, tuple)):
            items = [items]
        return tuple(_convert(name, inner, v) for v in items)
    if kind is bool:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
        raise ConfigError(f"option {name}={value!r} is not a yes/no value", hint=f"write {name}=true or {name}=false")
    if kind in (int, float):
        if isinstance(value, bool):
            raise ConfigError(f"option {name}={value!r} must be a number")
        try:
            number = kind(value)
        except (TypeError, ValueError):
            raise ConfigError(f"option {name}={value!r} must be {'an integer' if kind is int else 'a number'}") from None
        if kind is int and isinstance(value, float) and value != int(value):
            raise ConfigError(f"option {name}={value!r} must be an integer")
        return number
    if kind is str:
        return str(value)
    return value


@dataclass(frozen=True)
class MethodOptions:
    """Base of every method's options. Subclasses add fields with defaults and may declare
    ``CHOICES = {"field": ("a", "b")}``; ``__post_init__`` checks ranges."""

    CHOICES: typing.ClassVar[dict] = {}
    HELP: typing.ClassVar[dict] = {}

    def __post_init__(self):
        for name, allowed in self.CHOICES.items():
            if getattr(self, name) not in allowed:
                raise ConfigError(f"option {name}={getattr(self, name)!r} is not one of {', '.join(map(str, allowed))}",
                                  hint=f"use {name}={allowed[0]} (the default) or another of: {', '.join(map(str, allowed))}")

    @classmethod
    def describe(cls) -> list[tuple[str, object, str]]:
        """(name, default, help) of every option."""
        return [(f.name, f.default, cls.HELP.get(f.name, "")) for f in fields(cls)]

    @classmethod
    def parse(cls, options: dict | "MethodOptions" | None, method: str = "") -> "MethodOptions":
        if isinstance(options, cls):
            return options
        options = dict(options or {})
        hints = typing.get_type_hints(cls)
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(options) - known)
        if unknown:
            listing = ", ".join(f"{n} (default {d!r})" for n, d, _ in cls.describe()) or "none"
            raise ConfigError(f"unknown option{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}"
                              f"{' for method ' + method if method else ''}",
                              hint=f"known options: {listing}")
        return cls(**{k: _convert(k, hints[k], v) for k, v in options.items()})

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class NoOptions(MethodOptions):
    """A method without options."""
