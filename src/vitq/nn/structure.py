"""Record and rebuild where a model's vitq modules are, so a saved model can be reloaded exactly as
it was quantized, whatever method placed them.

Modules register themselves as *saveable* (:func:`saveable`): a class with
``from_structure(meta, existing)`` (``existing`` is the float module found at that path, if any)
and, when it needs parameters to be rebuilt (a size), ``structure_meta()``. Methods that add modules
of their own (adapters, prompts, split quantizers) register them the same way. Quantization points
(TensorQuantizer) are described apart, in the QuantState.
"""

from __future__ import annotations

from torch import nn

from ..errors import ModelError

from .modules import InputAffine, QuantConv2d, QuantEmbedding, QuantLayerNorm, QuantLinear, QuantMatMul, reattach_output_points
from .tensor_quantizer import TensorQuantizer

SAVEABLE: dict[str, type] = {}


def saveable(cls: type) -> type:
    """Register a module class so that saved folders record and rebuild it by name."""
    if not hasattr(cls, "from_structure"):
        raise TypeError(f"{cls.__name__} needs a from_structure(meta, existing) classmethod to be saveable")
    SAVEABLE[cls.__name__] = cls
    return cls


from .prompt import AdaptedProjection, LearnedPrompt, QAdapter  # noqa: E402
from .split import SplitQuantConv2d  # noqa: E402

for _cls in (QuantLinear, QuantConv2d, QuantEmbedding, QuantLayerNorm, QuantMatMul, InputAffine, SplitQuantConv2d, LearnedPrompt, QAdapter,
             AdaptedProjection):
    saveable(_cls)


def describe_structure(model: nn.Module) -> dict[str, str | dict]:
    """Module name → class name (or ``{"class": name, **meta}`` for modules that need a size)."""
    out = {}
    for name, m in model.named_modules():
        cls = type(m).__name__
        if SAVEABLE.get(cls) is type(m):
            meta = m.structure_meta() if hasattr(m, "structure_meta") else None
            out[name] = {"class": cls, **meta} if meta else cls
    return out


def rebuild_structure(model: nn.Module, structure: dict[str, str | dict], points: dict[str, dict]) -> None:
    """Create every recorded module (outer ones first) and every point from its description."""
    for name in sorted(structure, key=lambda n: n.count(".") if n else -1):
        entry = structure[name]
        cls_name, meta = (entry, {}) if isinstance(entry, str) else (entry["class"], entry)
        if cls_name not in SAVEABLE:
            raise ModelError(f"unknown vitq module {cls_name!r} at {name}: it was saved by a newer vitq or a plug-in "
                             f"that is not imported (known: {', '.join(sorted(SAVEABLE))})", hint="upgrade vitq, or import the plug-in that defines it before loading")
        parent, _, attr = name.rpartition(".")
        owner = model.get_submodule(parent) if parent else model
        existing = getattr(owner, attr, None) if attr else model
        setattr(owner, attr, SAVEABLE[cls_name].from_structure(meta, existing))
    for name, desc in points.items():
        parent, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent), attr, TensorQuantizer.from_description(desc))
    reattach_output_points(model)
