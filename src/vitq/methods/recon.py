"""``recon``: a calibration method (``base``, RepQ-ViT by default), then block reconstruction
(BRECQ; QDrop with ``drop_prob=0.5``) on the same calibration data: AdaRound weight rounding and
LSQ activation step sizes learned unit by unit (:mod:`vitq.train.reconstruction`).

Presets: ``paper`` is BRECQ's and QDrop's setting (20,000 steps per block, Adam 1e-3 for the
rounding and 4e-5 for the step sizes, regulariser weight 0.01, b from 20 to 2 after 20% warm-up).
``fast`` (the default) keeps all of it but the number of steps, which is sized so that
``zoo:deit-tiny`` W4A4 with 128 calibration images finishes within 20 minutes on a 2-core CPU.
Any single setting can be given as an option and overrides the preset.

Task losses of the Fisher variant (``loss=fisher``): for a classifier, KL between the
full-precision and quantized class probabilities (BRECQ); for a dual encoder, the same KL on the
contrastive image-text logits of the batch (the other tower kept in full precision); for a text
encoder alone, on the in-batch cosine-similarity logits at temperature 0.05.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F

from ..config import QuantConfig
from ..errors import ConfigError
from ..models.families import blocks_of, component_runner, family_of
from ..nn import points_disabled
from . import MethodResult, get_method, register
from .common import as_batches, check_components_in_data, run_identity
from .options import MethodOptions

PRESETS = {"fast": {"iters": 1000}, "paper": {"iters": 20_000}}


@dataclass(frozen=True)
class ReconOptions(MethodOptions):
    base: str = "repq-vit"
    preset: str = "fast"
    iters: Optional[int] = None
    loss: str = "mse"
    drop_prob: float = 0.0
    round_lr: float = 1e-3
    act_lr: float = 4e-5
    round_weight: float = 0.01
    b_start: float = 20.0
    b_end: float = 2.0
    warmup: float = 0.2
    fisher_damping: float = 1.0
    learn_act_scales: bool = True
    schedule: str = "joint"
    checkpoint_dir: Optional[str] = None
    resume: bool = False
    stop_after: Optional[int] = None

    CHOICES = {"preset": tuple(PRESETS), "loss": ("mse", "fisher"), "schedule": ("joint", "weights-then-activations")}
    HELP = {
        "base": "calibration method run first (any static method: repq-vit, omse, minmax, ...)",
        "preset": "fast (the default: fewer steps per block) or paper (BRECQ's 20,000 steps per block)",
        "iters": "optimisation steps per block (overrides the preset)",
        "loss": "mse: output MSE; fisher: MSE weighted by squared task-loss gradients (BRECQ)",
        "drop_prob": "probability that a block-input element is the quantized one (0: full-precision inputs, the default; "
                     "0.5: QDrop; 1: BRECQ's quantized inputs)",
        "round_lr": "Adam learning rate of the AdaRound variables",
        "act_lr": "Adam learning rate of the activation step sizes (cosine decay to 0)",
        "round_weight": "weight of the rounding regulariser",
        "b_start": "regulariser exponent at the start of its decay",
        "b_end": "regulariser exponent at the end",
        "warmup": "fraction of the steps before the regulariser starts",
        "fisher_damping": "added to |gradient| before squaring (BRECQ: 1)",
        "learn_act_scales": "also learn the activation step sizes (LSQ); false: weights only",
        "schedule": "joint (QDrop: rounding and step sizes together) or weights-then-activations (BRECQ's two passes)",
        "checkpoint_dir": "write a checkpoint after every block here",
        "resume": "continue from checkpoint_dir (same settings): the result equals an uninterrupted run",
        "stop_after": "stop after this many blocks (then resume)",
    }

    def __post_init__(self):
        super().__post_init__()
        if self.iters is not None and self.iters < 0:
            raise ConfigError(f"option iters={self.iters} must be >= 0")
        if not 0.0 <= self.drop_prob <= 1.0:
            raise ConfigError(f"option drop_prob={self.drop_prob} must lie in [0, 1]", hint="QDrop uses 0.5; 1 is BRECQ")
        if self.resume and not self.checkpoint_dir:
            raise ConfigError("option resume needs checkpoint_dir", hint="give checkpoint_dir=DIR (the CLI: --checkpoint-dir DIR)")

    def steps(self) -> int:
        return self.iters if self.iters is not None else PRESETS[self.preset]["iters"]


# -- task losses for the Fisher variant ----------------------------------------------------------
def _kl(quantized_logits: torch.Tensor, full_logits: torch.Tensor) -> torch.Tensor:
    return F.kl_div(quantized_logits.float().log_softmax(-1), full_logits.float().softmax(-1), reduction="batchmean")


def task_losses(model, components: list[str]) -> dict:
    """The task loss of each component (see the module docstring)."""
    from ..models.adapter import unwrap

    adapter = family_of(model)
    inner = unwrap(model)
    dual = set(adapter.components) >= {"image", "text"} and hasattr(inner, "logit_scale")
    out = {}
    for comp in components:
        if dual:
            other = "text" if comp == "image" else "image"

            def contrastive(batch, q, fp, other=other):
                with torch.no_grad(), points_disabled(model):
                    ref = F.normalize(adapter.run(model, other, batch).float(), dim=-1)
                scale = inner.logit_scale.detach().float().exp()
                return _kl(scale * F.normalize(q.float(), dim=-1) @ ref.T, scale * F.normalize(fp.float(), dim=-1) @ ref.T)

            out[comp] = contrastive
        elif comp == "text":
            def similarity(batch, q, fp):
                ref = F.normalize(fp.float(), dim=-1).detach()
                return _kl(F.normalize(q.float(), dim=-1) @ ref.T / 0.05, ref @ ref.T / 0.05)

            out[comp] = similarity
        else:
            out[comp] = lambda batch, q, fp: _kl(q.flatten(1), fp.flatten(1))
    return out


@register("recon", "brecq", options=ReconOptions, trains=True, dtypes=("float32",))
def recon(model, calib, cfg: QuantConfig, opts: ReconOptions, progress: bool = True):
    """Block reconstruction (BRECQ/QDrop: AdaRound + LSQ step sizes) after a calibration method."""
    from ..train.reconstruction import ReconConfig, reconstruct_scheduled, summarize

    base = get_method(opts.base)
    if base.name == "recon" or not base.needs_calibration or base.trains or "float32" not in base.dtypes or base.name == "dq-clip":
        raise ConfigError(f"recon cannot start from {opts.base!r}", hint="use a static calibration method as base: repq-vit, omse, minmax, percentile, ema")
    batches = as_batches(calib)
    with torch.no_grad():
        model, base_result = base.fn(model, calib, cfg, base.parse_options({}), progress=progress)
    components = base_result.components
    check_components_in_data(batches, components)
    runs = {c: component_runner(model, c) for c in components}
    blocks = {c: blocks_of(model, c) for c in components}
    common = dict(round_lr=opts.round_lr, act_lr=opts.act_lr, round_weight=opts.round_weight, b_start=opts.b_start,
                  b_end=opts.b_end, warmup=opts.warmup, drop_prob=opts.drop_prob, loss=opts.loss,
                  fisher_damping=opts.fisher_damping, seed=cfg.seed, progress=progress, iters=opts.steps(),
                  context=run_identity(cfg, base=base.name))
    task = task_losses(model, components) if opts.loss == "fisher" else None
    rc = ReconConfig(**common, checkpoint_dir=opts.checkpoint_dir, resume=opts.resume, stop_after=opts.stop_after)
    results = reconstruct_scheduled(model, batches, runs, blocks, rc, opts.schedule, opts.learn_act_scales, task=task)
    details = {**base_result.details, "recon": {
        "base": base.name, "preset": opts.preset, "iters": opts.steps(), "loss": opts.loss, "drop_prob": opts.drop_prob,
        "schedule": opts.schedule, **summarize(results)}}
    return model, MethodResult(family=base_result.family, components=components, calibration=base_result.calibration,
                               scope=base_result.scope, float_attention=base_result.float_attention, details=details)
