"""PIL image → model input tensor, the way the model expects it.

A model that ships an image processor (``preprocessor_config.json`` beside its weights or in the
hub cache: CLIP, ViT, DeiT, Swin from the hub) is fed through that processor, so evaluation
matches the model card. A model from a folder or hub id *without* a processor is refused unless
``preprocess`` names its normalisation (``clip``, ``imagenet``, ``inception``: resize and crop to the
config's image size, then that mean/std), because guessing it would silently cost accuracy. Only a
model built in memory (no source at all) falls back to its config's size and CLIP's mean/std.
Only PIL, numpy and torch are used (torchvision is not a dependency).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..errors import ModelError

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
PROCESSOR_FILE = "preprocessor_config.json"
# Named normalisations for --preprocess: (mean, std) of the pixel values in [0, 1].
PRESETS = {
    "clip": (CLIP_MEAN, CLIP_STD),
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "inception": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
}
PREPROCESS_CHOICES = ("processor", *PRESETS)


class ResizeCropNormalize:
    """Resize the shorter side to ``size``, centre-crop ``crop_size`` square, scale to [0,1], normalise.

    The same steps as CLIP's preprocessing (bicubic resize, centre crop), written with PIL and torch.
    """

    def __init__(self, size: int = 224, crop_size: int | None = None, mean=CLIP_MEAN, std=CLIP_STD,
                 resample: int = Image.BICUBIC):
        self.size = int(size)
        self.crop_size = int(crop_size or size)
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self.resample = resample

    def __call__(self, image: Image.Image) -> torch.Tensor:
        if image.mode != "RGB":
            image = image.convert("RGB")
        w, h = image.size
        scale = self.size / min(w, h)
        new_w, new_h = max(self.crop_size, round(w * scale)), max(self.crop_size, round(h * scale))
        if (new_w, new_h) != (w, h):
            image = image.resize((new_w, new_h), self.resample)
        left, top = (new_w - self.crop_size) // 2, (new_h - self.crop_size) // 2
        image = image.crop((left, top, left + self.crop_size, top + self.crop_size))
        x = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)
        mean = torch.tensor(self.mean).view(3, 1, 1)
        std = torch.tensor(self.std).view(3, 1, 1)
        return (x - mean) / std

    def __repr__(self) -> str:
        return f"ResizeCropNormalize(size={self.size}, crop_size={self.crop_size}, mean={self.mean}, std={self.std})"


class ProcessorTransform:
    """A Hugging Face image processor as a PIL → tensor ``[3, H, W]`` transform."""

    def __init__(self, processor):
        self.processor = processor

    def __call__(self, image: Image.Image) -> torch.Tensor:
        if image.mode != "RGB":
            image = image.convert("RGB")
        return self.processor(images=image, return_tensors="pt")["pixel_values"][0]

    def __repr__(self) -> str:
        return f"ProcessorTransform({type(self.processor).__name__})"


def image_size_of(config) -> int:
    """The input resolution a (vision or vision-language) config declares; 224 when it says nothing."""
    vision = getattr(config, "vision_config", None) or config
    size = getattr(vision, "image_size", None) or getattr(config, "image_size", None) or 224
    if isinstance(size, (tuple, list)):
        size = size[0]
    return int(size)


def transform_from_config(config) -> ResizeCropNormalize:
    """Resize/crop to the config's ``image_size`` and normalise with CLIP's mean and std."""
    size = image_size_of(config)
    return ResizeCropNormalize(size, size)


def _load_processor(where: str | Path):
    from transformers import AutoImageProcessor

    try:
        return AutoImageProcessor.from_pretrained(str(where))
    except Exception as err:  # transformers raises OSError/ValueError/KeyError depending on what is wrong
        raise ModelError(f"cannot load the image processor of {where}: {err}",
                         hint="check preprocessor_config.json, or pass a transform explicitly") from None


def _cached_hub_processor(name):
    """The processor of a hub model already in the local cache, or None (never touches the network)."""
    if not name or Path(name).exists() or "/" not in str(name):
        return None
    from transformers import AutoImageProcessor

    try:
        return AutoImageProcessor.from_pretrained(str(name), local_files_only=True)
    except Exception:
        return None


def _folder_of(model) -> Path | None:
    name = getattr(model, "name_or_path", None) or getattr(getattr(model, "config", None), "_name_or_path", None)
    if name and Path(name).is_dir():
        return Path(name)
    return None


def _preset(name: str, config) -> ResizeCropNormalize:
    if name not in PRESETS:
        raise ModelError(f"unknown preprocessing {name!r}", hint=f"use one of: {', '.join(PREPROCESS_CHOICES)}")
    size = image_size_of(config) if config is not None else 224
    mean, std = PRESETS[name]
    return ResizeCropNormalize(size, size, mean=mean, std=std)


def _missing_processor(where) -> ModelError:
    return ModelError(
        f"{where} has no image processor ({PROCESSOR_FILE}), so vitq cannot tell how its images were resized and normalised",
        hint=f"pass --preprocess {'|'.join(PRESETS)} (preprocess=...: the mean/std the model was trained with), "
             "or save the model's image processor beside it",
    )


def _folder_config(folder: Path):
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(str(folder))
    except Exception:  # not a transformers config (e.g. a vitq folder with its own format)
        raw = json.loads((folder / "config.json").read_text())
        size = (raw.get("vision_config") or {}).get("image_size") or raw.get("image_size") or 224
        return type("Config", (), {"image_size": int(size)})()


def image_transform(source, processor=None, preprocess: str | None = None):
    """A PIL → tensor transform for ``source``: a model (HF ``PreTrainedModel``) or a model folder.

    Order of preference: an explicit ``processor``; an explicit ``preprocess`` preset (``clip``,
    ``imagenet``, ``inception``; ``processor`` insists on the saved processor); the processor saved in
    the model's folder or hub cache. A model with a source but no processor is an error; a model
    built in memory uses its config's size with CLIP's mean/std.
    """
    if processor is not None:
        return ProcessorTransform(processor)
    if preprocess is not None and preprocess not in PREPROCESS_CHOICES:
        raise ModelError(f"unknown preprocessing {preprocess!r}", hint=f"use one of: {', '.join(PREPROCESS_CHOICES)}")
    preset = preprocess if preprocess in PRESETS else None
    if isinstance(source, (str, Path)):
        folder = Path(source)
        if folder.is_dir():
            has_config = (folder / "config.json").is_file()
            if preset:
                return _preset(preset, _folder_config(folder) if has_config else None)
            if (folder / PROCESSOR_FILE).is_file():
                return ProcessorTransform(_load_processor(folder))
            if has_config:
                raise _missing_processor(folder)
            raise ModelError(f"{folder} has neither {PROCESSOR_FILE} nor config.json",
                             hint="pass a model folder saved with save_pretrained")
        if preset:
            return _preset(preset, None)
        return ProcessorTransform(_load_processor(source))  # a hub id, from the local cache when offline
    config = getattr(source, "config", None)
    if preset:
        return _preset(preset, config)
    folder = _folder_of(source)
    if folder is not None and (folder / PROCESSOR_FILE).is_file():
        return ProcessorTransform(_load_processor(folder))
    name = getattr(source, "name_or_path", None) or getattr(config, "_name_or_path", None)
    cached = _cached_hub_processor(name)
    if cached is not None:
        return ProcessorTransform(cached)
    if name or preprocess == "processor":
        raise _missing_processor(name or type(source).__name__)
    if config is None:
        raise ModelError(f"cannot tell the input size of {type(source).__name__}",
                         hint="pass transform=… (e.g. vitq.data.ResizeCropNormalize(224))")
    return transform_from_config(config)
