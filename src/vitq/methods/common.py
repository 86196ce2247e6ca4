"""Pieces every method shares: the default scheme, running calibration data, and progress."""

from __future__ import annotations

from typing import Iterable

import torch
from torch import nn
from tqdm.auto import tqdm

from ..config import QuantConfig
from ..errors import ConfigError
from ..memory import release_free_memory
from ..models.families import family_of
from ..nn import calibrate_weights, finish_calibration, set_mode


def baseline_scheme(cfg: QuantConfig, observer: str = "minmax", options: dict | None = None) -> dict:
    """P4Q's baseline recipe: signed per-channel weights, unsigned per-tensor activations,
    attention (both matmul inputs and post-Softmax) at its own bit width."""
    opts = dict(options or {})
    weight_observer = "omse" if observer == "omse" else "minmax"  # EMA/percentile of one weight tensor = min/max
    act = dict(bits=cfg.a_bits, symmetric=False, axis=None, observer=observer, observer_options=opts)
    attn = dict(act, bits=cfg.attn_bits)
    # Option symmetric_attention: signed q, k, v (Z = 0), which lets OpenVINO run attention in int8.
    qkv = dict(attn, symmetric=True) if opts.get("symmetric_attention") else attn
    return {
        "weight": dict(bits=cfg.w_bits, symmetric=True, axis=0, observer=weight_observer, observer_options=opts),
        "input": act,
        "post_ln": act,
        "post_gelu": act,
        "attn_q": qkv,
        "attn_k": qkv,
        "softmax": attn,
        "attn_v": qkv,
    }


def _as_input_dict(b) -> dict:
    if isinstance(b, torch.Tensor):
        return {"pixel_values": b}
    if isinstance(b, (tuple, list)) and b and isinstance(b[0], torch.Tensor):
        return {"pixel_values": b[0]}  # (images, labels) from a DataLoader
    if isinstance(b, dict):
        return b
    raise ConfigError(f"cannot use a {type(b).__name__} as a calibration batch", hint="pass tensors of pixel values or dicts of model inputs")


class _Batches:
    """Calibration data as a re-iterable stream of model-input dicts (never all held at once)."""

    def __init__(self, source):
        self.source = source

    def __iter__(self):
        return (_as_input_dict(b) for b in self.source)

    def __len__(self):
        return len(self.source) if hasattr(self.source, "__len__") else 0


def as_batches(calib) -> _Batches:
    """Calibration data (tensors, dicts, DataLoader batches or a lazy iterable of them) as batches."""
    if calib is None:
        return _Batches([])
    if isinstance(calib, (torch.Tensor, dict)):
        calib = [calib]
    return _Batches(calib)


@torch.no_grad()
def run_batches(model: nn.Module, batches, components, desc: str = "calibrating", progress: bool = True) -> None:
    """Forward each batch through the selected components (image: pixel_values; text: input_ids)."""
    family = family_of(model)
    seen = set()
    for b in tqdm(batches, desc=desc, disable=not progress, leave=False, total=len(batches) or None):
        if "image" in components and "pixel_values" in b:
            family.encode_image(model, b["pixel_values"])
            seen.add("image")
        if "text" in components and "input_ids" in b:
            family.encode_text(model, b["input_ids"], b.get("attention_mask"))
            seen.add("text")
        release_free_memory()  # keeps the peak flat over long calibration streams
    if "image" in components and "image" not in seen:
        raise ConfigError("the image component is selected but the calibration data has no images", hint="pass calibration images (--calib DIR)")
    if "text" in components and "text" not in seen:
        raise ConfigError(
            "the text component is selected but the calibration data has no text",
            hint="calibrate from a folder of class subfolders (class names become prompts) or select --components image",
        )


def calibrate(model: nn.Module, batches, components, progress: bool = True) -> None:
    """Observe weights and activations, fix every scale, and switch to quantized mode."""
    model.eval()
    set_mode(model, "calib")
    calibrate_weights(model)
    run_batches(model, batches, components, progress=progress)
    finish_calibration(model)
    set_mode(model, "quant")
