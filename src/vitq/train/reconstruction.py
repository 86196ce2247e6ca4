"""Block reconstruction (BRECQ, QDrop): after calibration, learn each block's weight rounding and
activation step sizes so that the quantized block reproduces the full-precision one.

The engine walks the *units* of a model in forward order: the adapter's blocks, and every quantized
layer outside a block (patch embedding, projections, heads) on its own. For each unit it

1. records, on the calibration batches, the unit's full-precision input and output (every point
   off and the original float weights back in place, :class:`FloatWeights`: hardening has replaced
   the weights of the units before it) and its input with everything upstream quantized (earlier units already reconstructed):
   :mod:`vitq.calib.recorder`, memory capped and spilled to disk;
2. optionally (``loss="fisher"``) the gradient of a task loss with respect to the unit's output, with
   the model quantized up to and including the unit (BRECQ's Fisher diagonal, damped: the squared
   weight is (|g| + damping)^2, as in BRECQ's code);
3. replaces every weight quantizer inside the unit by an :class:`~vitq.quant.adaround.AdaRoundQuantizer`
   and turns the scales of its uniform activation points into parameters (LSQ); log2 and log-sqrt2
   post-Softmax points stay as calibrated;
4. optimises, with :func:`vitq.train.train` (one step = one recorded batch drawn at random), the
   reconstruction loss sum_axis1((out - target)^2 * w), averaged over the rest (BRECQ's ``lp_loss``), plus
   ``round_weight`` times AdaRound's regulariser, whose exponent b decays linearly from ``b_start`` to
   ``b_end`` after ``warmup`` of the steps (no regulariser before). Adam: ``round_lr`` for the
   rounding, ``act_lr`` with cosine decay to 0 for the step sizes. With ``drop_prob`` < 1 each input
   element is the quantized one with that probability and the full-precision one otherwise (QDrop);
5. hardens the rounding: each weight is replaced by its value on the grid with the learned rounding,
   so the calibrated quantizer reproduces the learned integer codes exactly and the model stays an
   ordinary vitq model (it saves, loads and exports as any other); the step sizes become buffers again.

After each unit a checkpoint (the model's tensors and the units done) is written; ``resume`` loads
it and goes on with the next unit, which ends in the same model as an uninterrupted run (each unit's
random draws depend only on the seed and the unit's index).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import torch
from torch import nn
from tqdm.auto import tqdm

from ..calib.recorder import Stream, capture_inputs, first_tensor, on_device_of, record, run_until
from ..errors import ConfigError
from ..memory import release_free_memory
from ..nn import QuantConv2d, QuantLinear, TensorQuantizer, points_disabled, quantizers
from ..quant.adaround import AdaRoundQuantizer
from ..quant.uniform import UniformQuantizer
from .checkpoint import load_checkpoint, save_checkpoint
from .loop import TrainConfig, train

LOSSES = ("mse", "fisher")
SCHEDULES = ("joint", "weights-then-activations")
TaskLoss = Callable[[dict, torch.Tensor, torch.Tensor], torch.Tensor]  # (batch, quantized out, fp out) -> loss


@dataclass
class ReconConfig:
    iters: int = 20_000  # steps per unit (BRECQ, QDrop)
    round_lr: float = 1e-3
    act_lr: float = 4e-5
    round_weight: float = 0.01
    b_start: float = 20.0
    b_end: float = 2.0
    warmup: float = 0.2  # fraction of the steps without the regulariser
    drop_prob: float = 1.0  # probability that an input element is the quantized one (1: BRECQ; QDrop: 0.5)
    loss: str = "mse"
    fisher_damping: float = 1.0
    learn_rounding: bool = True
    learn_act_scales: bool = True
    quantize_activations: bool = True  # False: activation points off during this run (weights-first phase)
    seed: int = 0
    cap_mb: float = 1024.0
    checkpoint_dir: str | Path | None = None
    resume: bool = False
    stop_after: int | None = None  # end after this many units (then resume)
    progress: bool = True
    context: str = ""  # what else makes the run (method, bits): part of the checkpoint's fingerprint

    def __post_init__(self):
        if self.iters < 0:
            raise ConfigError(f"iterations per block must be >= 0, got {self.iters}")
        if self.loss not in LOSSES:
            raise ConfigError(f"unknown reconstruction loss {self.loss!r}", hint=f"use one of: {', '.join(LOSSES)}")
        if not 0.0 <= self.drop_prob <= 1.0:
            raise ConfigError(f"drop_prob must lie in [0, 1], got {self.drop_prob}",
                              hint="1 = quantized inputs (BRECQ), 0.5 = QDrop's mix, 0 = full-precision inputs")
        if not 0.0 <= self.warmup < 1.0 or self.b_start < self.b_end or self.b_end <= 0:
            raise ConfigError("warmup must lie in [0, 1) and b_start >= b_end > 0")
        if self.resume and self.checkpoint_dir is None:
            raise ConfigError("resume needs a checkpoint folder", hint="give checkpoint_dir (the CLI: --checkpoint-dir)")

    def fingerprint(self) -> str:
        """What makes two runs the same run (checkpoints of another setting are refused)."""
        keep = {k: v for k, v in asdict(self).items() if k not in ("checkpoint_dir", "resume", "stop_after", "progress", "cap_mb")}
        return hashlib.sha256(json.dumps(keep, sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclass
class UnitReport:
    name: str
    component: str
    weights: int
    act_scales: int
    mse_before: float
    mse_after: float
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in asdict(self).items()}


@dataclass
class ReconResult:
    units: list[UnitReport] = field(default_factory=list)
    resumed: int = 0  # units taken from the checkpoint
    stopped_early: bool = False


# -- units ----------------------------------------------------------------------------------------
def _weighted(m: nn.Module) -> bool:
    return isinstance(m, (QuantLinear, QuantConv2d)) and (
        (m.weight_quantizer is not None and m.weight_quantizer.enabled)
        or (m.input_quantizer is not None and m.input_quantizer.enabled))


def _inside(name: str, prefixes: Iterable[str]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def reconstruction_units(model: nn.Module, runs: dict[str, Callable], blocks: dict[str, list[str]], batches) -> list[tuple[str, str]]:
    """``(component, module name)`` of every unit, in the order a forward pass reaches them: the
    blocks, and the quantized layers outside any block."""
    all_blocks = [b for names in blocks.values() for b in names]
    candidates = {n: m for n, m in model.named_modules() if n in all_blocks or (_weighted(m) and not _inside(n, all_blocks))}
    units: list[tuple[str, str]] = []
    for component, run in runs.items():
        first = next(iter(batches), None)
        order: list[str] = []

        def make(name):
            def hook(mod, args, out):
                if name not in order:
                    order.append(name)
            return hook

        hooks = [m.register_forward_hook(make(n)) for n, m in candidates.items()]
        if first is not None:
            with points_disabled(model):
                run_until(run, first, hooks)
        else:
            for h in hooks:
                h.remove()
        units += [(component, n) for n in order if all(n != u for _, u in units)]
    return units


def _unit_points(model: nn.Module, name: str) -> list[TensorQuantizer]:
    return [q for n, q in quantizers(model) if _inside(n, [name])]


def _activation_points(points: list[TensorQuantizer]) -> list[TensorQuantizer]:
    return [q for q in points if q.role != "weight" and q.enabled]


class FloatWeights:
    """The weights of the quantized layers as they were before any rounding was hardened into them.

    Hardening writes each learned weight into the layer, so after the first unit the model no longer
    holds the full-precision function. Every target (a unit's full-precision input and output, the
    Fisher loss's reference) is recorded inside :meth:`full_precision`, which puts these weights back
    for the while, with every point off."""

    def __init__(self, model: nn.Module):
        self.saved = {n: m.weight.detach().clone() for n, m in model.named_modules() if isinstance(m, (QuantLinear, QuantConv2d))}

    @contextlib.contextmanager
    def full_precision(self, model: nn.Module):
        modules = dict(model.named_modules())
        swapped = []
        try:
            with torch.no_grad():
                for name, weight in self.saved.items():
                    layer = modules[name]
                    swapped.append((layer, layer.weight.detach().clone()))
                    layer.weight.copy_(weight)  # copy_ bumps the version: no stale fake-quant cache
            with points_disabled(model):
                yield
        finally:
            with torch.no_grad():
                for layer, current in swapped:
                    layer.weight.copy_(current)


# -- data -----------------------------------------------------------------------------------------
def _mix(q_item, fp_item, p: float, g: torch.Generator):
    """QDrop: each floating-point element is the quantized one with probability p."""
    if isinstance(q_item, torch.Tensor):
        if not q_item.is_floating_point() or p >= 1.0 or q_item.shape != fp_item.shape:
            return q_item
        keep = torch.rand(q_item.shape, generator=g) < p
        return torch.where(keep.to(q_item.device), q_item, fp_item)
    if isinstance(q_item, (tuple, list)):
        out = [_mix(a, b, p, g) for a, b in zip(q_item, fp_item)]
        return tuple(out) if isinstance(q_item, tuple) else out
    if isinstance(q_item, dict):
        return {k: _mix(v, fp_item[k], p, g) for k, v in q_item.items()}
    return q_item


def _replace_first(out, tensor):
    if isinstance(out, torch.Tensor):
        return tensor
    if isinstance(out, tuple):
        return (_replace_first(out[0], tensor), *out[1:])
    if isinstance(out, list):
        return [_replace_first(out[0], tensor), *out[1:]]
    raise TypeError(f"cannot take the gradient of a {type(out).__name__} output")


def reconstruction_error(pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """BRECQ's ``lp_loss`` (p = 2): squared error summed over axis 1, averaged over the rest;
    ``weight`` (the Fisher diagonal, squared) multiplies it element-wise."""
    err = (pred.float() - target.float()).pow(2)
    if weight is not None:
        err = err * weight
    return err.sum(1).mean() if err.dim() > 1 else err.mean()


def _mean_error(unit: nn.Module, inputs: Stream, targets: Stream) -> float:
    total, n = 0.0, 0
    with torch.no_grad():
        for item, target in zip(inputs, targets):
            args, kwargs = on_device_of(unit, item)
            out = first_tensor(unit(*args, **kwargs))
            total += float((out.float() - target.to(out.device).float()).pow(2).mean())
            n += 1
    return total / max(n, 1)


def unit_gradients(model: nn.Module, unit: nn.Module, batches, run: Callable, task: TaskLoss, later: list[TensorQuantizer],
                   cap_mb: float, float_weights: FloatWeights | None = None) -> Stream:
    """For each batch, d task / d unit output, with the points of later units off (BRECQ); the task's
    reference is the full-precision model's output."""
    grads = Stream(cap_mb)
    for batch in batches:
        with torch.no_grad(), (float_weights.full_precision(model) if float_weights is not None else points_disabled(model)):
            fp = run(batch)
        if fp is None:
            continue
        held = {}

        def hook(mod, args, out):
            leaf = first_tensor(out).detach().requires_grad_(True)
            held["t"] = leaf
            return _replace_first(out, leaf)

        handle = unit.register_forward_hook(hook)
        try:
            with torch.enable_grad(), points_disabled(only=later):
                loss = task(batch, run(batch), fp)
                (g,) = torch.autograd.grad(loss, [held["t"]])
        finally:
            handle.remove()
        grads.append(g.detach().to("cpu"))
    return grads


def kl_task(batch: dict, quantized: torch.Tensor, full: torch.Tensor) -> torch.Tensor:
    """BRECQ's task loss: KL(softmax(full-precision logits) || softmax(quantized logits)) per batch."""
    q = quantized.float().flatten(1)
    f = full.float().flatten(1)
    return torch.nn.functional.kl_div(q.log_softmax(-1), f.softmax(-1), reduction="batchmean")


# -- learning one unit ----------------------------------------------------------------------------
class _Learned:
    """The unit's AdaRound quantizers and learnable step sizes while it is optimised."""

    def __init__(self, unit: nn.Module, points: list[TensorQuantizer], cfg: ReconConfig):
        self.rounding: list[tuple[nn.Module, tuple, AdaRoundQuantizer]] = []  # (layer, weight index, quantizer)
        self.scales: list[UniformQuantizer] = []
        if cfg.learn_rounding:
            for m in unit.modules():
                if not isinstance(m, (QuantLinear, QuantConv2d)):
                    continue
                for attr, index in m.weight_parts():  # a split layer rounds each half on its own grid
                    wq = getattr(m, attr, None)
                    if wq is not None and wq.active and isinstance(wq.quantizer, UniformQuantizer):
                        ada = AdaRoundQuantizer(wq.quantizer, m.weight[index])
                        wq.quantizer = ada
                        self.rounding.append((m, index, ada))
        if cfg.learn_act_scales and cfg.quantize_activations:
            for q in _activation_points(points):
                if q.active and isinstance(q.quantizer, UniformQuantizer) and q.quantizer.calibrated:
                    q.quantizer.set_learnable(True)
                    self.scales.append(q.quantizer)
        self.frozen = [p for p in unit.parameters() if p.requires_grad and not self._ours(p)]
        for p in self.frozen:
            p.requires_grad_(False)

    def _ours(self, p) -> bool:
        return any(p is a.alpha for _, _, a in self.rounding) or any(p is s.scale for s in self.scales)

    def param_groups(self, cfg: ReconConfig) -> list[dict]:
        groups = []
        if self.rounding:
            groups.append({"params": [a.alpha for _, _, a in self.rounding], "lr": cfg.round_lr, "kind": "rounding"})
        if self.scales:
            groups.append({"params": [s.scale for s in self.scales], "lr": cfg.act_lr, "kind": "scales"})
        return groups

    def regularizer(self, b: float) -> torch.Tensor:
        return sum(a.regularizer(b) for _, _, a in self.rounding)

    @torch.no_grad()
    def finish(self) -> None:
        """Harden the rounding into the weights, put the calibrated quantizers back, freeze the scales."""
        for layer, index, ada in self.rounding:
            layer.weight[index] = ada.hardened_weight(layer.weight[index])
            point = next(getattr(layer, a) for a, i in layer.weight_parts() if i == index)
            point.quantizer = ada.base
        for s in self.scales:
            s.scale.data.clamp_(min=1e-8)
            s.set_learnable(False)
        for p in self.frozen:
            p.requires_grad_(True)


def _temperature(cfg: ReconConfig, step: int) -> float:
    start = cfg.warmup * cfg.iters
    rel = (step - start) / max(1.0, cfg.iters - start)
    return cfg.b_end + (cfg.b_start - cfg.b_end) * max(0.0, 1.0 - rel)


def _optimise(unit: nn.Module, learned: _Learned, q_in: Stream, fp_in: Stream, fp_out: Stream, grads: Stream | None,
              cfg: ReconConfig, seed: int, desc: str) -> None:
    groups = learned.param_groups(cfg)
    if not groups or cfg.iters == 0 or len(q_in) == 0:
        return
    opt = torch.optim.Adam(groups)
    lambdas = [(lambda s: 0.5 * (1 + math.cos(math.pi * min(s, cfg.iters) / cfg.iters))) if g["kind"] == "scales" else (lambda s: 1.0)
               for g in groups]
    schedule = torch.optim.lr_scheduler.LambdaLR(opt, lambdas)
    warm = cfg.warmup * cfg.iters

    def step(idx: torch.Tensor, ctx) -> torch.Tensor:
        i = int(idx[0])
        item = q_in[i] if cfg.drop_prob >= 1.0 else _mix(q_in[i], fp_in[i], cfg.drop_prob, ctx.generator)
        args, kwargs = on_device_of(unit, item)
        out = first_tensor(unit(*args, **kwargs))
        target = fp_out[i].to(out.device)
        weight = None
        if grads is not None:
            weight = (grads[i].to(out.device).abs() + cfg.fisher_damping).pow(2)
        loss = reconstruction_error(out, target, weight)
        if learned.rounding and ctx.step >= warm:
            loss = loss + cfg.round_weight * learned.regularizer(_temperature(cfg, ctx.step))
        return loss

    batches = len(q_in)
    tc = TrainConfig(epochs=1, batch_size=1, seed=seed, grad_clip=None, progress=cfg.progress, desc=desc)
    train(unit, opt, cfg.iters, step, tc, scheduler=schedule,
          order=lambda n, g: torch.randint(0, batches, (n,), generator=g),
          on_epoch_start=lambda epoch, g: unit.eval())


# -- the loop -------------------------------------------------------------------------------------
def reconstruct(model: nn.Module, batches, runs: dict[str, Callable], blocks: dict[str, list[str]],
                config: ReconConfig | None = None, task: TaskLoss | dict[str, TaskLoss] | None = None,
                float_weights: FloatWeights | None = None) -> ReconResult:
    """Reconstruct every unit of ``model`` (see the module docstring). ``runs[c](batch)`` runs
    component ``c``; ``blocks[c]`` names its blocks; ``task`` (per component, or one for all) is the
    Fisher loss's task (default :func:`kl_task` on the component's output). The model must be
    calibrated (every point in quant mode). ``float_weights``: the full-precision weights, when an
    earlier pass already hardened some (default: the model's weights now, before any resume).
    Returns a per-unit report."""
    cfg = config or ReconConfig()
    model.eval()
    result = ReconResult()
    float_weights = float_weights or FloatWeights(model)
    with Stream.of(batches, cfg.cap_mb) as cached:
        units = reconstruction_units(model, runs, blocks, cached)
        done = _resume(model, cfg, units, result)
        act_points = [q for _, q in quantizers(model) if q.role != "weight" and q.enabled]
        with contextlib.nullcontext() if cfg.quantize_activations else points_disabled(only=act_points):
            overall = tqdm(total=len(units), initial=len(done), desc="reconstruction", disable=not cfg.progress, leave=False)
            for index, (component, name) in enumerate(units):
                if name in done:
                    continue
                if cfg.stop_after is not None and len(done) >= cfg.stop_after:
                    result.stopped_early = True
                    break
                result.units.append(_reconstruct_unit(model, component, name, index, units, cached, runs, cfg, task, float_weights))
                done.append(name)
                if cfg.checkpoint_dir is not None:
                    save_checkpoint(Path(cfg.checkpoint_dir) / "last", model,
                                    state={"done": done, "units": [n for _, n in units], "fingerprint": cfg.fingerprint(),
                                           "reports": [u.to_dict() for u in result.units]})
                overall.update(1)
                release_free_memory()
            overall.close()
    return result


def _resume(model: nn.Module, cfg: ReconConfig, units, result: ReconResult) -> list[str]:
    if not cfg.resume:
        return []
    folder = Path(cfg.checkpoint_dir) / "last"
    if not (folder / "state.json").is_file():
        return []
    saved = json.loads((folder / "state.json").read_text()).get("state", {})
    if saved.get("fingerprint") != cfg.fingerprint() or saved.get("units") != [n for _, n in units]:
        raise ConfigError(f"the checkpoint in {cfg.checkpoint_dir} belongs to another reconstruction (other settings or model)",
                          hint="resume with the settings of that run, or use a new checkpoint folder")
    state = load_checkpoint(folder, model)
    result.units = [UnitReport(**u) for u in state.get("reports", [])]
    result.resumed = len(state["done"])
    return list(state["done"])


def _reconstruct_unit(model, component, name, index, units, cached, runs, cfg: ReconConfig, task,
                      float_weights: FloatWeights) -> UnitReport:
    import time

    start = time.perf_counter()
    unit = model.get_submodule(name)
    run = runs[component]
    points = _unit_points(model, name)
    with float_weights.full_precision(model):  # the full-precision model, not one with hardened upstream weights
        fp = record(model, [name], cached, run, what=("input", "output"), cap_mb=cfg.cap_mb)[name]
    fp_in, fp_out = fp["input"], fp["output"]
    q_in = capture_inputs(model, unit, cached, run, cap_mb=cfg.cap_mb)
    grads = None
    try:
        if cfg.loss == "fisher":
            later = [q for _, later_name in units[index + 1:] for q in _unit_points(model, later_name)]
            unit_task = (task.get(component) if isinstance(task, dict) else task) or kl_task
            grads = unit_gradients(model, unit, cached, run, unit_task, later, cfg.cap_mb, float_weights)
        before = _mean_error(unit, q_in, fp_out)
        learned = _Learned(unit, points, cfg)
        try:
            _optimise(unit, learned, q_in, fp_in, fp_out, grads, cfg, seed=cfg.seed * 1009 + index,
                      desc=f"{name} ({index + 1}/{len(units)})")
        finally:
            learned.finish()
        after = _mean_error(unit, q_in, fp_out)
        return UnitReport(name, component, sum(a.alpha.numel() for _, _, a in learned.rounding), len(learned.scales),
                          before, after, round(time.perf_counter() - start, 2))
    finally:
        for s in (fp_in, fp_out, q_in, grads):
            if s is not None:
                s.close()


def reconstruct_scheduled(model: nn.Module, batches, runs: dict[str, Callable], blocks: dict[str, list[str]], config: ReconConfig,
                          schedule: str = "joint", learn_act_scales: bool = True, act_iters: int | None = None,
                          task: TaskLoss | dict[str, TaskLoss] | None = None) -> list[ReconResult]:
    """:func:`reconstruct` in one pass or two. ``joint`` (QDrop): rounding and step sizes together.
    ``weights-then-activations`` (BRECQ, Q-Diffusion): first the rounding with every activation point
    off, then (with the rounding fixed) the step sizes, ``act_iters`` steps per unit (default: the
    same as the first pass); the second pass is skipped when the model quantizes no activations.
    With a checkpoint folder, a two-pass run keeps each pass in ``phase1``/``phase2`` below it."""
    if schedule not in SCHEDULES:
        raise ConfigError(f"unknown reconstruction schedule {schedule!r}", hint=f"use one of: {', '.join(SCHEDULES)}")
    if schedule == "joint":
        phases = [dict(learn_rounding=True, learn_act_scales=learn_act_scales)]
    else:
        phases = [dict(learn_rounding=True, learn_act_scales=False, quantize_activations=False)]
        has_acts = any(q.role != "weight" and q.enabled for _, q in quantizers(model))
        if learn_act_scales and has_acts:
            phases.append(dict(learn_rounding=False, learn_act_scales=True, iters=act_iters if act_iters is not None else config.iters))
    results = []
    float_weights = FloatWeights(model)  # before any pass (or resume) hardens a weight
    for i, phase in enumerate(phases):
        folder = config.checkpoint_dir
        if folder is not None and len(phases) > 1:
            folder = Path(folder) / f"phase{i + 1}"
        result = reconstruct(model, batches, runs, blocks, dataclasses.replace(config, **phase, checkpoint_dir=folder), task=task,
                             float_weights=float_weights)
        results.append(result)
        if result.stopped_early:
            break
    return results


def summarize(results: list[ReconResult]) -> dict:
    """The per-unit reports of every pass, and whether the run resumed or stopped early."""
    return {"units": [u.to_dict() for r in results for u in r.units], "resumed": sum(r.resumed for r in results),
            "stopped_early": any(r.stopped_early for r in results)}
