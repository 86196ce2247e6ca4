"""Reference models shipped inside vitq, trained on real images (see docs/zoo/).

>>> import vitq.zoo
>>> vitq.zoo.available()
['clip-tiny', 'deit-tiny']
>>> model = vitq.zoo.load("deit-tiny")          # float32, eval mode
>>> processor = vitq.zoo.processor("deit-tiny")  # 64x64, the training normalisation

Weights are stored in fp16 (checked lossless for accuracy) and loaded as float32.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import ModelError

WEIGHTS = Path(__file__).resolve().parent / "weights"

# name -> (transformers class name, whether it has a tokenizer)
_MODELS = {
    "clip-tiny": ("VisionTextDualEncoderModel", True),
    "deit-tiny": ("ViTForImageClassification", False),
}

__all__ = ["available", "path", "load", "processor", "tokenizer"]


def available() -> list[str]:
    """Names of the packaged models."""
    return sorted(_MODELS)


def path(name: str) -> Path:
    """The packaged HF folder of ``name`` (config.json, model.safetensors, processor files)."""
    if name not in _MODELS:
        raise ModelError(f"unknown zoo model {name!r}", hint=f"known models: {', '.join(available())}")
    folder = WEIGHTS / name
    from .packaging import BASE, materialize

    if (folder / BASE).is_file():
        return materialize(name, folder)
    if not (folder / "config.json").is_file():
        raise ModelError(
            f"zoo model {name!r} has no weights at {folder}",
            hint="reinstall vitq, or retrain with scripts/train_clip_tiny.py (see docs/zoo/)",
        )
    return folder


def load(name: str, attn_implementation: str | None = None):
    """The model in float32 and eval mode, loaded offline from the packaged folder."""
    import torch
    import transformers

    folder = path(name)
    cls = getattr(transformers, _MODELS[name][0])
    kwargs = {"dtype": torch.float32}
    if attn_implementation is not None:
        kwargs["attn_implementation"] = attn_implementation
    return cls.from_pretrained(folder, **kwargs).eval()


def processor(name: str):
    """The image processor the model was trained with (64x64 RGB, its mean/std)."""
    from transformers import AutoImageProcessor

    return AutoImageProcessor.from_pretrained(path(name))


def tokenizer(name: str):
    """The text tokenizer of a vision-language model (clip-tiny)."""
    from transformers import AutoTokenizer

    folder = path(name)
    if not _MODELS[name][1]:
        raise ModelError(f"zoo model {name!r} has no text tower", hint="tokenizers exist for: clip-tiny")
    return AutoTokenizer.from_pretrained(folder)
