"""Pieces every method shares: the default scheme, running calibration data, and progress."""

from __future__ import annotations

from typing import Iterable

import torch
from torch import nn

from ..config import QuantConfig
from ..errors import ConfigError


def observer_settings(name: str, seed: int = 0, **options) -> dict:
    """``observer`` and ``observer_options`` of a scheme entry: the options this observer takes, and
    the seed for the ones that draw random samples."""
    from ..quant.observers import observer_options

    accepted = observer_options(name)
    opts = {k: v for k, v in options.items() if k in accepted}
    if "seed" in accepted:
        opts["seed"] = seed
    return {"observer": name, "observer_options": opts}


def embedding_settings(cfg: QuantConfig) -> dict:
    """The token-embedding table's point: signed per-row min/max at 8 bits (at the weights' bits
    where those are wider). A lookup costs no arithmetic, so sub-8-bit rows would only save size;
    a bit plan rule on the table's name sets other bits."""
    return dict(bits=max(8, cfg.w_bits), symmetric=True, axis=0, **observer_settings("minmax"))


# Attention bits at and above which q, k and v are signed by default: at 8 bits signed points cost
# nothing measurable (docs/methods.md) and let OpenVINO fuse attention in int8; at 4 bits they cost
# omse 3.4 points of CLIP zero-shot, so below 8 the default stays asymmetric.
SIGNED_QKV_MIN_BITS = 8


def qkv_settings(attn: dict, opts) -> dict:
    """The points on q, k and v: option ``symmetric_attention`` makes them signed (zero-point 0),
    which lets OpenVINO run both attention matmuls in int8; ``None`` (the default of the methods that
    have the option) chooses signed at SIGNED_QKV_MIN_BITS and above. Methods without the option
    keep asymmetric points."""
    choice = getattr(opts, "symmetric_attention", False)
    if choice is None:
        choice = attn["bits"] >= SIGNED_QKV_MIN_BITS
    return dict(attn, symmetric=True) if choice else attn


def baseline_scheme(cfg: QuantConfig, observer: str = "minmax", opts=None) -> dict:
    """P4Q's baseline recipe, with FQ-ViT's estimators: signed per-channel min/max weights (FQ-ViT's
    ``OBSERVER_W = minmax``), unsigned per-tensor activations through ``observer``, attention (both
    matmul inputs and post-Softmax) at its own bit width."""
    estimator = {k: getattr(opts, k) for k in ("momentum", "percentile", "steps", "grid", "max_samples") if hasattr(opts, k)}
    act = dict(bits=cfg.a_bits, symmetric=False, axis=None, **observer_settings(observer, cfg.seed, **estimator))
    attn = dict(act, bits=cfg.attn_bits)
    qkv = qkv_settings(attn, opts)
    scheme = {
        "weight": dict(bits=cfg.w_bits, symmetric=True, axis=0, **observer_settings("minmax")),
        "embedding": embedding_settings(cfg),
        "input": act,
        "post_ln": act,
        "post_gelu": act,
        "attn_q": qkv,
        "attn_k": qkv,
        "softmax": attn,
        "attn_v": qkv,
    }
    if getattr(opts, "scope", "vitq") == "fqvit":
        # FQ-ViT's scope (its QAct points): also the pre-Softmax scores, linear outputs, residual
        # sums and embeddings, all with the activation quantizer (FQ-ViT's BIT_TYPE_A).
        scheme.update(attn_scores=act, linear_out=act, residual=act, embed=act)
    return scheme


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


def check_components_in_data(batches, components) -> None:
    """Fail before any slow work when a selected component has no inputs in the calibration data."""
    from ..models.families import COMPONENT_INPUTS

    first = next(iter(batches), None)
    for comp in components:
        if first is None or not any(k in first for k in COMPONENT_INPUTS[comp]):
            if comp == "unet":
                raise ConfigError("a diffusion UNet calibrates on its own inputs (batches with sample and timestep), "
                                  "which the calibration data does not have",
                                  hint="draw them with vitq.data.diffusion.timestep_calibration(unet, scheduler), "
                                       "or use q-diffusion, which draws them itself")
            if comp == "image":
                raise ConfigError("the image component is selected but the calibration data has no images",
                                  hint="pass calibration images (--calib DIR)")
            raise ConfigError(
                "the text component is selected but the calibration data has no text",
                hint="calibrate from a folder of class subfolders (class names become prompts) or select --components image",
            )


def calibrate(model: nn.Module, batches, components, progress: bool = True, sequential: bool = False) -> None:
    """Observe weights and activations, fix every scale, and switch to quantized mode.

    ``sequential``: calibrate the points one after another in forward order, each on inputs quantized
    by every point before it (RepQ-ViT's official procedure); otherwise all at once on float
    activations (FQ-ViT's). See :mod:`vitq.calib.sequential`.
    """
    from ..calib import calibrate_parallel, calibrate_sequential
    from ..models.families import blocks_of, component_runner

    check_components_in_data(batches, components)
    runs = {c: component_runner(model, c) for c in components}
    if sequential:
        calibrate_sequential(model, batches, runs, {c: blocks_of(model, c) for c in components}, progress=progress)
    else:
        calibrate_parallel(model, batches, runs, progress=progress)


RESUME_OPTIONS = ("checkpoint_dir", "resume", "stop_after")


def run_identity(cfg: QuantConfig, **extra) -> str:
    """What a reconstruction checkpoint must match to be resumed: the bits, plan and options (and
    ``extra``), but not where the checkpoints go or whether this run resumes or stops early."""
    import json

    config = cfg.to_dict()
    config["options"] = {k: v for k, v in dict(config.get("options") or {}).items() if k not in RESUME_OPTIONS}
    return json.dumps({**extra, "config": config}, sort_keys=True, default=str)
