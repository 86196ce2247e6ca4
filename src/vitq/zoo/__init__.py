"""Reference models shipped inside vitq, trained on real images (see docs/zoo/).

>>> import vitq.zoo
>>> vitq.zoo.available()
['clip-tiny', 'ddpm-tiny', 'deit-tiny']
>>> model = vitq.zoo.load("deit-tiny")          # float32, eval mode
>>> processor = vitq.zoo.processor("deit-tiny")  # 64x64, the training normalisation

Weights are stored in fp16 (checked lossless for accuracy) and loaded as float32.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import ModelError, install_hint

WEIGHTS = Path(__file__).resolve().parent / "weights"

# name -> (transformers or diffusers class name, whether it has a tokenizer)
_MODELS = {
    "clip-tiny": ("VisionTextDualEncoderModel", True),
    "ddpm-tiny": ("UNet2DModel", False),
    "deit-tiny": ("ViTForImageClassification", False),
}
_DIFFUSERS = ("ddpm-tiny",)

__all__ = ["available", "path", "load", "processor", "tokenizer", "scheduler"]


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
    if name in _DIFFUSERS:
        return _diffusers_class(name).from_pretrained(folder, torch_dtype=torch.float32).eval()
    cls = getattr(transformers, _MODELS[name][0])
    kwargs = {"dtype": torch.float32}
    if attn_implementation is not None:
        kwargs["attn_implementation"] = attn_implementation
    return cls.from_pretrained(folder, **kwargs).eval()


def _diffusers_class(name: str):
    try:
        import diffusers
    except ImportError:
        raise ModelError(f"zoo model {name!r} is a diffusers UNet and diffusers is not installed",
                         hint=install_hint("diffusion", "diffusers")) from None
    return getattr(diffusers, _MODELS[name][0])


def scheduler(name: str, kind: str = "ddim"):
    """The noise scheduler a diffusion model was trained with, as a DDIM (default) or DDPM sampler."""
    if name not in _DIFFUSERS:
        raise ModelError(f"zoo model {name!r} is not a diffusion model", hint=f"diffusion models: {', '.join(_DIFFUSERS)}")
    _diffusers_class(name)
    import diffusers

    classes = {"ddim": diffusers.DDIMScheduler, "ddpm": diffusers.DDPMScheduler}
    if kind not in classes:
        raise ModelError(f"unknown scheduler {kind!r}", hint="use ddim or ddpm")
    return classes[kind].from_pretrained(path(name))


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
