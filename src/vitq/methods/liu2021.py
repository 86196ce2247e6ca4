"""Liu et al. 2021, *Post-Training Quantization for Vision Transformer* (NeurIPS 2021): methods
``liu2021`` and ``liu2021-mp``.

- **Quantizers**: symmetric uniform, per tensor (the paper's Eq. 1), for the weights of every
  linear and the patch embedding, the input of every linear (each its own interval, also where
  one LayerNorm feeds q, k and v), and both inputs of both attention matmuls. Two deviations: the
  post-Softmax input of softmax·v is non-negative, so it is unsigned (zero-point 0) instead of
  wasting the sign bit; post-LayerNorm inputs are unsigned with the zero-point of their max
  initialisation (kept during the search, so the candidates scale the range about 0), because
  ONNX Runtime runs q/k/v in float when their input is signed.
  LayerNorm and Softmax stay in floating point.
- **Initialisation**: every interval Δ from the maximum of its tensor on the calibration data.
- **Similarity-aware search**, layer by layer in forward order, on inputs quantized upstream: the
  intervals that maximise the Pearson correlation between the full-precision and quantized outputs.
  **Alternating**: for ``rounds`` rounds, each weight interval with the input's fixed, then the
  input's; ``candidates`` values linearly spaced in [alpha·Δ0, beta·Δ0].
- **Ranking-aware** search of q·kᵀ: its objective is −Pearson + ``ranking_weight`` × a hinge on the
  pairwise order of the attention probabilities (``vitq.calib.search.ranking_hinge``).
- **Bias correction**: E[ε] of each linear's output error on the calibration data is subtracted
  from its bias.
- ``liu2021-mp``: one bit width for all operations of each MSA and each MLP module, chosen by
  sensitivity (nuclear norm of the full-precision attention map / MLP output, times the output
  perturbation when that module alone is quantized at b bits) to minimise the total perturbation
  under a weight-size budget of ``target_bits`` on average (exact dynamic programming over the
  modules: the point of the Pareto frontier of perturbation against size within the budget).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..calib.bitalloc import choose_bits, group_costs, group_outputs, module_groups, planned_bits
from ..calib.recorder import Stream, on_device_of
from ..calib.search import OutputSearch, negative_pearson, ranking_hinge
from ..calib.units import disabled_outputs, for_each_unit, set_scale, token_rows
from ..config import QuantConfig
from ..errors import ConfigError
from ..models.prepare import prepare
from ..nn import QuantConv2d, set_mode
from . import MethodResult, register
from .common import as_batches, calibrate, embedding_settings, observer_settings
from .options import MethodOptions


@dataclass(frozen=True)
class Liu2021Options(MethodOptions):
    candidates: int = 100
    alpha: float = 0.5
    beta: float = 1.2
    rounds: int = 3
    similarity: bool = True
    ranking: bool = True
    ranking_weight: float = 1.0
    ranking_margin: float = 0.0
    bias_correction: bool = True

    HELP = {
        "candidates": "intervals tried per search (C)",
        "alpha": "lowest candidate, as a fraction of the max-initialised interval",
        "beta": "highest candidate, as a multiple of the max-initialised interval",
        "rounds": "alternating rounds (weights, then inputs)",
        "similarity": "search the intervals (false: keep the max initialisation)",
        "ranking": "ranking-aware search of q·kᵀ (the attention map keeps its order)",
        "ranking_weight": "weight of the ranking hinge against the Pearson correlation",
        "ranking_margin": "margin of the ranking hinge",
        "bias_correction": "subtract each linear's mean output error from its bias",
    }

    def __post_init__(self):
        super().__post_init__()
        if self.candidates < 1 or self.rounds < 1:
            raise ConfigError("candidates and rounds must be at least 1")
        if not 0 < self.alpha <= 1 <= self.beta:
            raise ConfigError(f"need 0 < alpha <= 1 <= beta, got alpha={self.alpha}, beta={self.beta}")


@dataclass(frozen=True)
class Liu2021MPOptions(Liu2021Options):
    target_bits: float = 6.0
    bit_choices: tuple[int, ...] = (4, 5, 6, 7, 8)

    HELP = {**Liu2021Options.HELP,
            "target_bits": "average weight bits over the MSA and MLP modules (the size budget)",
            "bit_choices": "bit widths a module may take"}

    def __post_init__(self):
        super().__post_init__()
        from ..quant.uniform import check_bits

        for b in self.bit_choices:
            check_bits(int(b))
        if not min(self.bit_choices) <= self.target_bits <= max(self.bit_choices):
            raise ConfigError(f"target_bits={self.target_bits} lies outside the bit choices {self.bit_choices}",
                              hint="give a target between the smallest and the largest choice")


def liu_scheme(cfg: QuantConfig) -> dict:
    maxed = observer_settings("minmax")
    sym = dict(bits=cfg.a_bits, symmetric=True, axis=None, **maxed)
    attn = dict(sym, bits=cfg.attn_bits)
    # post-LN inputs unsigned with a zero-point: ONNX Runtime leaves q/k/v in float when their input is signed
    return {"weight": dict(bits=cfg.w_bits, symmetric=True, axis=None, **maxed), "embedding": embedding_settings(cfg), "input": sym, "post_ln": dict(sym, symmetric=False),
            "post_gelu": sym, "attn_q": attn, "attn_k": attn, "attn_v": attn, "softmax": dict(attn, symmetric=False)}


def _objective(opts: Liu2021Options, ranking: bool):
    if not (ranking and opts.ranking):
        return negative_pearson
    return lambda q, ref: negative_pearson(q, ref) + opts.ranking_weight * ranking_hinge(q, ref, margin=opts.ranking_margin)


@torch.no_grad()
def _correct_biases(model: nn.Module, unit: dict, inputs: Stream, targets: Stream) -> None:
    """Subtract each linear's mean output error (quantized minus full precision) from its bias, over
    the real tokens (a text tower's padding never reaches its output)."""
    probe = unit["probe"]
    layers = [model.get_submodule(n) for n in unit["linears"]]
    masks = unit.get("token_masks") or []
    errors: list[list[torch.Tensor]] = [[] for _ in layers]
    for b, (item, target) in enumerate(zip(inputs, targets)):
        args, kwargs = on_device_of(probe, item)
        mask = masks[b] if b < len(masks) else None
        for k, (layer, out, ref) in enumerate(zip(layers, probe(*args, **kwargs), target)):
            channel = 1 if isinstance(layer, QuantConv2d) else -1
            diff = (out.float() - ref.to(out.device).float()).movedim(channel, -1)
            errors[k].append(token_rows(diff, mask))
    for layer, errs in zip(layers, errors):
        if not errs:
            continue
        mean = torch.cat(errs).mean(0)
        if layer.bias is None:
            layer.bias = nn.Parameter(torch.zeros(mean.numel(), dtype=layer.weight.dtype, device=layer.weight.device))
        layer.bias.sub_(mean.to(layer.bias))


def _search_unit(model, unit: dict, inputs: Stream, opts: Liu2021Options) -> dict:
    probe, points = unit["probe"], unit["points"]
    targets = disabled_outputs(probe, inputs, points)
    try:
        record = {}
        if opts.similarity:
            search = OutputSearch(probe, inputs, targets, _objective(opts, unit["ranking"]), output=lambda out: out)
            start = {id(p): float(p.quantizer.scale.reshape(-1)[0]) for p in points}
            for _ in range(opts.rounds):
                for p in points:  # weights first (inputs fixed), then the input(s)
                    grid = torch.linspace(opts.alpha, opts.beta, opts.candidates) * start[id(p)]
                    best, _ = search.grid([float(s) for s in grid], lambda s, p=p: set_scale(p, s))
            record["score"] = search.score()
        if opts.bias_correction and unit["linears"]:
            _correct_biases(model, unit, inputs, targets)
        return record
    finally:
        targets.close()


@torch.no_grad()
def liu2021_search(model, batches, components, summary, opts: Liu2021Options, progress: bool = True) -> int:
    """Alternating interval search and bias correction, unit by unit in forward order."""
    return for_each_unit(model, batches, components, summary["post_ln_consumers"],
                         lambda unit, inputs: _search_unit(model, unit, inputs, opts), desc="liu2021 search", progress=progress)


def _liu(model, calib, cfg: QuantConfig, opts: Liu2021Options, progress: bool = True):
    summary = prepare(model, liu_scheme(cfg), cfg.components, cfg.exclude, cfg.plan, share_post_ln=False)
    batches = as_batches(calib)
    calibrate(model, batches, summary["components"], progress=progress, sequential=False)  # max initialisation
    set_mode(model, "quant")
    units = liu2021_search(model, batches, summary["components"], summary, opts, progress)
    details = {"liu2021": {"similarity": opts.similarity, "ranking": opts.ranking, "bias_correction": opts.bias_correction,
                           "candidates": opts.candidates, "rounds": opts.rounds, "units": units}}
    return model, MethodResult.from_prepare(summary, calibration="sequential", details=details)


@register("liu2021", options=Liu2021Options)
def liu2021(model, calib, cfg: QuantConfig, opts: Liu2021Options, progress: bool = True):
    """Liu et al. 2021: similarity- and ranking-aware interval search with bias correction."""
    return _liu(model, calib, cfg, opts, progress)


# -- mixed precision ------------------------------------------------------------------------------
@torch.no_grad()
def _sensitivities(model, calib, cfg: QuantConfig, groups: list[dict], choices, progress: bool) -> list[dict[int, float]]:
    """For each group and bit width: nuclear norm of its full-precision feature times the squared
    output perturbation with only that group quantized (intervals from the maximum)."""
    import copy

    batches = as_batches(calib)
    fp = group_outputs(model, batches, groups)
    weight = []
    for g in groups:  # the paper's importance: nuclear norm of the attention map / output feature
        total = 0.0
        for out in fp[g["output"]]:
            feats = out.float().reshape(-1, *out.shape[-2:]) if out.dim() >= 3 else out.float().unsqueeze(0)
            total += float(torch.linalg.matrix_norm(feats, ord="nuc").sum())
        weight.append(total)

    def build(b):
        trial = copy.deepcopy(model)
        bits_cfg = QuantConfig(method="liu2021", bits=f"W{b}A{b}", components=cfg.components, exclude=cfg.exclude, seed=cfg.seed)
        summary = prepare(trial, liu_scheme(bits_cfg), bits_cfg.components, bits_cfg.exclude, share_post_ln=False)
        calibrate(trial, batches, summary["components"], progress=False, sequential=False)
        return trial, summary

    def cost(i, got, ref):
        return weight[i] * sum(float((a.float() - r.float()).pow(2).sum()) for a, r in zip(got, ref))

    return group_costs(model, batches, groups, choices, build, cost, desc="liu2021-mp sensitivities", progress=progress, fp=fp)


@register("liu2021-mp", options=Liu2021MPOptions)
def liu2021_mp(model, calib, cfg: QuantConfig, opts: Liu2021MPOptions, progress: bool = True):
    """Liu et al. 2021 with mixed precision: MSA/MLP bit widths by nuclear-norm sensitivity under a size budget."""
    from ..config import BitPlan

    groups = module_groups(model, cfg.components)
    choices = sorted({int(b) for b in opts.bit_choices})
    costs = _sensitivities(model, calib, cfg, groups, choices, progress)
    bits = choose_bits(costs, [g["size"] for g in groups], opts.target_bits)
    plan = planned_bits(cfg.bit_plan, groups, bits)
    import dataclasses

    planned = dataclasses.replace(cfg, bit_plan=BitPlan(plan).to_dict())
    model, result = _liu(model, calib, planned, opts, progress)
    average = sum(g["size"] * b for g, b in zip(groups, bits)) / sum(g["size"] for g in groups)
    result.details["liu2021"]["mixed_precision"] = {
        "target_bits": opts.target_bits, "average_bits": round(average, 4), "choices": choices,
        "modules": {g["name"]: b for g, b in zip(groups, bits)}, "plan": planned.bit_plan}
    return model, result
