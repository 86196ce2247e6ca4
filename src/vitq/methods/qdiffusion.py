"""``q-diffusion``: Q-Diffusion (Li et al., ICCV 2023) for diffusers UNets.

What the paper adds, and where it lives:

- **Timestep-aware calibration** (:func:`vitq.data.diffusion.timestep_calibration`): the
  full-precision sampler runs on a pool of trajectories, and every ``interval`` steps ``per_step``
  intermediate inputs x_t are drawn at random, so the calibration set covers all timesteps. Given
  calibration batches (dicts of ``sample``/``timestep``) are used as they are instead.
- **Shortcut-splitting quantization** (:class:`vitq.nn.SplitQuantConv2d`, placed by
  :func:`vitq.models.unet.prepare_unet`): the layer that reads an up-block's ``cat([h, skip])``
  quantizes the two parts of its input, and the matching slices of its weight, on their own scales.
- **Block reconstruction**, with vitq's engine (:mod:`vitq.train.reconstruction`) in BRECQ's two
  passes: first AdaRound weight rounding with activations in full precision, then the activation
  step sizes (LSQ) with the rounding fixed; inputs quantized upstream (``drop_prob=1``, BRECQ's and
  Q-Diffusion's choice), MSE on each unit's output.

Everything else is the baselines' recipe (:func:`vitq.methods.common.baseline_scheme`): every Conv2d
and Linear with per-channel weights and a per-tensor input point, q, k, v and the post-Softmax
probabilities at the attention bits. Presets: ``paper`` is BRECQ's 20,000 rounding steps and 5,000
step-size steps per unit; ``fast`` (the default) keeps the rest and takes fewer steps.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from ..config import BitPlan, QuantConfig
from ..errors import ConfigError
from ..models.families import blocks_of, component_runner
from ..models.unet import COMPONENT, prepare_unet
from . import MethodResult, register
from .common import as_batches, baseline_scheme, calibrate, observer_settings, run_identity
from .options import MethodOptions

PRESETS = {"fast": {"iters": 500, "act_iters": 200}, "paper": {"iters": 20_000, "act_iters": 5_000}}


@dataclass(frozen=True)
class QDiffusionOptions(MethodOptions):
    scheduler: Optional[str] = None
    sampler_steps: int = 100
    interval: int = 5
    per_step: int = 256
    pool: Optional[int] = None
    calib_timesteps: str = "uniform"
    batch_size: int = 32
    split_shortcuts: bool = True
    first_last_8bit: bool = True
    symmetric_activations: bool = True
    act_observer: str = "minmax"
    reconstruct: bool = True
    preset: str = "fast"
    iters: Optional[int] = None
    act_iters: Optional[int] = None
    drop_prob: float = 1.0
    round_lr: float = 1e-3
    act_lr: float = 4e-5
    round_weight: float = 0.01
    warmup: float = 0.2
    checkpoint_dir: Optional[str] = None
    resume: bool = False
    stop_after: Optional[int] = None

    CHOICES = {"calib_timesteps": ("uniform", "last"), "preset": tuple(PRESETS), "act_observer": ("minmax", "omse", "percentile")}
    HELP = {
        "scheduler": "folder with the sampler's scheduler_config.json, or zoo:NAME (default: the model's own folder)",
        "sampler_steps": "DDIM steps of the full-precision sampler that draws the calibration set (paper: 100)",
        "interval": "draw calibration inputs every this many sampler steps (paper: 5)",
        "per_step": "inputs drawn at each of those steps (paper: 256)",
        "pool": "trajectories sampled to draw from (default: per_step)",
        "calib_timesteps": "uniform: timestep-aware (the paper); last: as many inputs, all from the sampler's last step",
        "batch_size": "calibration and reconstruction batch size (paper: 32)",
        "split_shortcuts": "quantize the two parts of each skip concatenation on their own scales (the paper: yes)",
        "first_last_8bit": "keep the first and last layers (conv_in, conv_out) at 8 bits (the paper's code: yes)",
        "symmetric_activations": "signed activation quantizers (the paper's CIFAR-10 runs: --a_sym)",
        "act_observer": "initial activation ranges before reconstruction",
        "reconstruct": "learn weight rounding and activation step sizes block by block (false: calibration only)",
        "preset": "fast (the default: fewer steps) or paper (BRECQ's 20,000 rounding + 5,000 step-size steps per unit)",
        "iters": "rounding steps per unit (overrides the preset)",
        "act_iters": "step-size steps per unit (overrides the preset)",
        "drop_prob": "probability that a unit-input element is the quantized one (1: the paper's quantized inputs; 0.5: QDrop)",
        "round_lr": "Adam learning rate of the AdaRound variables",
        "act_lr": "Adam learning rate of the activation step sizes (cosine decay to 0)",
        "round_weight": "weight of the rounding regulariser",
        "warmup": "fraction of the rounding steps before the regulariser starts",
        "checkpoint_dir": "write a checkpoint after every unit here",
        "resume": "continue from checkpoint_dir (same settings)",
        "stop_after": "stop after this many units (then resume)",
    }

    def __post_init__(self):
        super().__post_init__()
        for name in ("sampler_steps", "interval", "per_step", "batch_size"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"option {name}={getattr(self, name)} must be positive")
        if self.interval > self.sampler_steps:
            raise ConfigError(f"option interval={self.interval} is larger than sampler_steps={self.sampler_steps}",
                              hint="the interval counts sampler steps: use interval <= sampler_steps")
        if not 0.0 <= self.drop_prob <= 1.0:
            raise ConfigError(f"option drop_prob={self.drop_prob} must lie in [0, 1]")
        if self.resume and not self.checkpoint_dir:
            raise ConfigError("option resume needs checkpoint_dir", hint="give checkpoint_dir=DIR (the CLI: --checkpoint-dir DIR)")

    def steps(self) -> tuple[int, int]:
        preset = PRESETS[self.preset]
        return (self.iters if self.iters is not None else preset["iters"],
                self.act_iters if self.act_iters is not None else preset["act_iters"])


def unet_scheme(cfg: QuantConfig, opts: QDiffusionOptions) -> dict:
    """The baselines' scheme with the paper's activation settings (signed for its CIFAR-10 runs)."""
    scheme = baseline_scheme(cfg)
    act = dict(scheme["input"], symmetric=opts.symmetric_activations, **observer_settings(opts.act_observer, cfg.seed))
    for role in ("input", "attn_q", "attn_k", "attn_v"):
        scheme[role] = dict(act, bits=scheme[role]["bits"])
    return scheme  # post-Softmax probabilities stay unsigned (the paper's always_zero)


def eight_bit_ends(model, a_bits: int) -> dict[str, str]:
    """Bit-plan rules putting the UNet's first and last layers at 8 bits (activations at 8, or
    kept in full precision for an A32 spec)."""
    from ..models.unet import first_and_last_layers

    spec = "W8A32" if a_bits >= 32 else f"W8A{min(8, a_bits)}"
    return {name: spec for name in first_and_last_layers(model)}


def first_last_plan(model, cfg: QuantConfig) -> BitPlan:
    """The config's bit plan with :func:`eight_bit_ends` first; the user's own rules still win."""
    return BitPlan(list(eight_bit_ends(model, cfg.a_bits).items()) + list(cfg.plan.rules))


def calibration_set(model, calib, opts: QDiffusionOptions, seed: int, progress: bool):
    """The given batches, or the timestep-aware set drawn with the model's scheduler."""
    from ..data.diffusion import timestep_calibration
    from ..models.loading import load_scheduler

    if calib is not None:
        return as_batches(calib), None
    scheduler = load_scheduler(opts.scheduler or model)
    found = timestep_calibration(model, scheduler, steps=opts.sampler_steps, interval=opts.interval, per_step=opts.per_step,
                                 pool=opts.pool, where=opts.calib_timesteps, batch_size=opts.batch_size, seed=seed,
                                 progress=progress)
    return found.batches, found.describe()


@register("q-diffusion", "qdiff", options=QDiffusionOptions, trains=True, dtypes=("float32",), models=("unet",),
          needs_calibration=False)
def q_diffusion(model, calib, cfg: QuantConfig, opts: QDiffusionOptions, progress: bool = True):
    """Q-Diffusion: timestep-aware calibration, split shortcuts, block reconstruction (diffusers UNets)."""
    import torch

    from ..train.reconstruction import ReconConfig, reconstruct_scheduled, summarize

    with torch.no_grad():
        batches, described = calibration_set(model, calib, opts, cfg.seed, progress)
        plan = first_last_plan(model, cfg) if opts.first_last_8bit else cfg.plan
        summary = prepare_unet(model, unet_scheme(cfg, opts), cfg.exclude, plan, split_shortcuts=opts.split_shortcuts)
        calibrate(model, batches, [COMPONENT], progress=progress)
    record = {"calibration_set": described or {"given": True}, "split_shortcuts": summary.get("split_shortcuts", {}),
              "eight_bit_layers": [p for p, _ in plan.rules] if opts.first_last_8bit else [],
              "reconstruct": opts.reconstruct}
    if opts.reconstruct:
        iters, act_iters = opts.steps()
        rc = ReconConfig(iters=iters, round_lr=opts.round_lr, act_lr=opts.act_lr, round_weight=opts.round_weight,
                         warmup=opts.warmup, drop_prob=opts.drop_prob, seed=cfg.seed, progress=progress,
                         checkpoint_dir=opts.checkpoint_dir, resume=opts.resume, stop_after=opts.stop_after, context=run_identity(cfg, method="q-diffusion"))
        runs = {COMPONENT: component_runner(model, COMPONENT)}
        results = reconstruct_scheduled(model, batches, runs, {COMPONENT: blocks_of(model, COMPONENT)}, rc,
                                        schedule="weights-then-activations", act_iters=act_iters)
        record.update(preset=opts.preset, iters=iters, act_iters=act_iters, drop_prob=opts.drop_prob, **summarize(results))
    return model, MethodResult(family=summary["family"], components=[COMPONENT], calibration="parallel",
                               details={"q_diffusion": record})
