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

import math
from dataclasses import dataclass

import torch
from torch import nn

from ..calib.recorder import Stream, StopForward, capture_inputs, on_device_of
from ..calib.search import OutputSearch, negative_pearson, ranking_hinge
from ..calib.sequential import points_in_order
from ..config import QuantConfig
from ..errors import ConfigError
from ..models.families import blocks_of, component_runner, family_of
from ..models.prepare import prepare
from ..nn import QuantConv2d, QuantLayerNorm, QuantLinear, QuantMatMul, TensorQuantizer, points_disabled, quantizers, set_mode
from . import MethodResult, register
from .common import as_batches, calibrate, observer_settings
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
    return {"weight": dict(bits=cfg.w_bits, symmetric=True, axis=None, **maxed), "input": sym, "post_ln": dict(sym, symmetric=False),
            "post_gelu": sym, "attn_q": attn, "attn_k": attn, "attn_v": attn, "softmax": dict(attn, symmetric=False)}


# -- search units ---------------------------------------------------------------------------------
class _Probe(nn.Module):
    """What one search scores: a module run on its recorded inputs, reduced to the outputs the
    searched points affect (the linears fed by one point; an attention map; a matmul's output)."""

    def __init__(self, module: nn.Module, fn):
        super().__init__()
        self.module, self.fn = module, fn

    def forward(self, *args, **kwargs):
        return self.fn(self.module, args, kwargs)


def _linears_probe(ln_or_linear: nn.Module, consumers: list[nn.Module]):
    if consumers == [ln_or_linear]:
        return lambda m, a, k: (m(*a, **k),)
    return lambda m, a, k: tuple(c(m(*a, **k)) for c in consumers)


def _tap(attention: nn.Module, which: str):
    """Run the attention module and return the attention probabilities (input of softmax·v) or the
    output of softmax·v, stopping the forward there."""

    def fn(m, a, k):
        seen = {}
        pv = attention.vitq_pv

        def pre(mod, args):
            seen["t"] = args[0]
            raise StopForward

        def post(mod, args, out):
            seen["t"] = out
            raise StopForward

        handle = pv.register_forward_pre_hook(pre) if which == "probs" else pv.register_forward_hook(post)
        try:
            m(*a, **k)
        except StopForward:
            pass
        finally:
            handle.remove()
        return (seen["t"],)

    return fn


def search_units(model: nn.Module, order: list[str], post_ln_consumers: dict[str, list[str]]) -> list[dict]:
    """Units in forward order: ``{"module", "probe", "points", "linears", "ranking"}``."""
    units, seen = [], set()
    for name in order:
        parent, _, attr = name.rpartition(".")
        owner = model.get_submodule(parent)
        if isinstance(owner, (QuantLinear, QuantConv2d)) and attr == "input_quantizer":
            linears = [parent]
            module = parent
        elif isinstance(owner, QuantLayerNorm) and attr == "output_quantizer":
            linears = list(post_ln_consumers.get(parent, []))
            module = parent
        elif isinstance(owner, QuantMatMul):
            if parent in seen:
                continue
            seen.add(parent)
            attention_name = parent.rpartition(".")[0]
            attention = model.get_submodule(attention_name)
            which = "probs" if owner is getattr(attention, "vitq_qk", None) else "output"
            points = [p for p in (owner.a_quantizer, owner.b_quantizer) if p is not None and p.enabled]
            units.append({"module": attention_name, "probe": _Probe(attention, _tap(attention, which)), "points": points,
                          "linears": [], "ranking": which == "probs"})
            continue
        else:
            continue
        layers = [model.get_submodule(n) for n in linears]
        weights = [m.weight_quantizer for m in layers if m.weight_quantizer is not None and m.weight_quantizer.enabled]
        mod = model.get_submodule(module)
        units.append({"module": module, "probe": _Probe(mod, _linears_probe(mod, layers)),
                      "points": weights + [model.get_submodule(name)], "linears": linears, "ranking": False})
    return units


def _objective(opts: Liu2021Options, ranking: bool):
    if not (ranking and opts.ranking):
        return negative_pearson
    return lambda q, ref: negative_pearson(q, ref) + opts.ranking_weight * ranking_hinge(q, ref, margin=opts.ranking_margin)


def _set_scale(point: TensorQuantizer, scale: float) -> None:
    """A candidate interval; an unsigned point keeps its zero-point, so its range scales about 0."""
    q = point.quantizer
    q.set_params(torch.full_like(q.scale.detach(), scale), q.zero_point.detach().clone())


@torch.no_grad()
def _disabled_outputs(probe: _Probe, inputs: Stream, points: list[TensorQuantizer]) -> Stream:
    """The probe's outputs with the searched points off: the full-precision targets."""
    out = Stream()
    with points_disabled(only=points):
        for item in inputs:
            args, kwargs = on_device_of(probe, item)
            out.append(tuple(t.detach().cpu() for t in probe(*args, **kwargs)))
    return out


@torch.no_grad()
def _correct_biases(model: nn.Module, unit: dict, inputs: Stream, targets: Stream) -> None:
    """Subtract each linear's mean output error (quantized minus full precision) from its bias."""
    probe = unit["probe"]
    layers = [model.get_submodule(n) for n in unit["linears"]]
    errors: list[list[torch.Tensor]] = [[] for _ in layers]
    for item, target in zip(inputs, targets):
        args, kwargs = on_device_of(probe, item)
        for k, (layer, out, ref) in enumerate(zip(layers, probe(*args, **kwargs), target)):
            channel = 1 if isinstance(layer, QuantConv2d) else -1
            diff = (out.float() - ref.to(out.device).float()).movedim(channel, -1)
            errors[k].append(diff.reshape(-1, diff.shape[-1]))
    for layer, errs in zip(layers, errors):
        if not errs:
            continue
        mean = torch.cat(errs).mean(0)
        if layer.bias is None:
            layer.bias = nn.Parameter(torch.zeros(mean.numel(), dtype=layer.weight.dtype, device=layer.weight.device))
        layer.bias.sub_(mean.to(layer.bias))


def _search_unit(model, unit: dict, inputs: Stream, opts: Liu2021Options) -> dict:
    probe, points = unit["probe"], unit["points"]
    targets = _disabled_outputs(probe, inputs, points)
    try:
        record = {}
        if opts.similarity:
            search = OutputSearch(probe, inputs, targets, _objective(opts, unit["ranking"]), output=lambda out: out)
            start = {id(p): float(p.quantizer.scale.reshape(-1)[0]) for p in points}
            for _ in range(opts.rounds):
                for p in points:  # weights first (inputs fixed), then the input(s)
                    grid = torch.linspace(opts.alpha, opts.beta, opts.candidates) * start[id(p)]
                    best, _ = search.grid([float(s) for s in grid], lambda s, p=p: _set_scale(p, s))
            record["score"] = search.score()
        if opts.bias_correction and unit["linears"]:
            _correct_biases(model, unit, inputs, targets)
        return record
    finally:
        targets.close()


@torch.no_grad()
def liu2021_search(model, batches, components, summary, opts: Liu2021Options, progress: bool = True) -> int:
    """Alternating interval search and bias correction, unit by unit in forward order."""
    from tqdm.auto import tqdm

    count = 0
    with Stream.of(batches) as cached:
        for comp in components:
            run = component_runner(model, comp)
            first = next(iter(cached), None)
            if first is None:
                continue
            units = search_units(model, points_in_order(model, run, first), summary["post_ln_consumers"])
            for unit in tqdm(units, desc=f"liu2021 search ({comp})", disable=not progress, leave=False):
                with capture_inputs(model, unit["probe"].module, cached, run) as inputs:
                    _search_unit(model, unit, inputs, opts)
                count += 1
    return count


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
def module_groups(model: nn.Module, components) -> list[dict]:
    """Each block's MSA and MLP: bit-plan patterns, weight count, and the module whose output is the
    perturbed feature (the attention module; fc2)."""
    adapter = family_of(model)
    groups = []
    for comp in components:
        for block in blocks_of(model, comp):
            roles = adapter.block_roles(block)
            attn = f"{block}.{roles.attention}"
            msa_linears = [f"{block}.{r}" for r in roles.qkv_linears + [roles.out]]
            mlp_linears = [f"{block}.{roles.fc1}", f"{block}.{roles.fc2}"]
            for kind, patterns, linears, output in (("msa", [f"{attn}*"], msa_linears, attn),
                                                    ("mlp", mlp_linears, mlp_linears, f"{block}.{roles.fc2}")):
                size = sum(model.get_submodule(n).weight.numel() for n in linears)
                groups.append({"name": f"{block}:{kind}", "kind": kind, "patterns": patterns, "size": size, "output": output,
                               "attention": attn, "component": comp})
    return groups


def choose_bits(costs: list[dict[int, float]], sizes: list[int], target: float) -> list[int]:
    """Bits per group minimising the summed cost with sum(size * bits) <= target * sum(size): exact
    dynamic programming over sizes in units of their greatest common divisor."""
    unit = 0
    for s in sizes:
        unit = math.gcd(unit, int(s))
    units = [int(s) // unit for s in sizes]
    budget = int(math.floor(target * sum(units) + 1e-9))
    best: dict[int, tuple[float, tuple[int, ...]]] = {0: (0.0, ())}
    for u, cost in zip(units, costs):
        nxt: dict[int, tuple[float, tuple[int, ...]]] = {}
        for used, (total, picks) in best.items():
            for b, c in cost.items():
                w = used + u * b
                if w > budget:
                    continue
                cand = (total + c, picks + (b,))
                if w not in nxt or cand[0] < nxt[w][0]:
                    nxt[w] = cand
        if not nxt:
            raise ConfigError(f"no bit choice fits an average of {target} bits", hint="raise target_bits or add smaller bit choices")
        best = nxt
    return list(min(best.values(), key=lambda v: v[0])[1])


@torch.no_grad()
def _sensitivities(model, calib, cfg: QuantConfig, groups: list[dict], choices, progress: bool) -> list[dict[int, float]]:
    """For each group and bit width: nuclear norm of its full-precision feature times the squared
    output perturbation with only that group quantized (intervals from the maximum)."""
    import copy

    from ..calib.recorder import record
    from ..config import BitPlan

    batches = as_batches(calib)
    runs = {c: component_runner(model, c) for c in {g["component"] for g in groups}}
    outputs = [g["output"] for g in groups]
    fp = {}
    for comp, run in runs.items():
        names = [g["output"] for g in groups if g["component"] == comp]
        fp.update(record(model, names, batches, run))
    weight = []
    for g in groups:  # the paper's importance: nuclear norm of the attention map / output feature
        total = 0.0
        for out in fp[g["output"]]["output"]:
            feats = out.float().reshape(-1, *out.shape[-2:]) if out.dim() >= 3 else out.float().unsqueeze(0)
            total += float(torch.linalg.matrix_norm(feats, ord="nuc").sum())
        weight.append(total)
    from tqdm.auto import tqdm

    costs = [dict() for _ in groups]
    for b in tqdm(choices, desc="liu2021-mp sensitivities", disable=not progress, leave=False):
        trial = copy.deepcopy(model)
        bits_cfg = QuantConfig(method="liu2021", bits=f"W{b}A{b}", components=cfg.components, exclude=cfg.exclude, seed=cfg.seed)
        summary = prepare(trial, liu_scheme(bits_cfg), bits_cfg.components, bits_cfg.exclude, share_post_ln=False)
        calibrate(trial, batches, summary["components"], progress=False, sequential=False)
        points = {n: q for n, q in quantizers(trial)}
        for i, g in enumerate(groups):
            plan = BitPlan({p: "W8A8" for p in g["patterns"]})
            mine = [q for n, q in points.items() if plan.spec_for(_layer_of(n, summary)) is not None]
            with points_disabled(trial, keep=mine):  # only this module quantized
                got = record(trial, [g["output"]], batches, component_runner(trial, g["component"]))[g["output"]]["output"]
            err = sum(float((a.float() - r.float()).pow(2).sum()) for a, r in zip(got, fp[g["output"]]["output"]))
            costs[i][int(b)] = weight[i] * err
        del trial
    return costs


def _layer_of(point_name: str, summary: dict) -> str:
    """The layer a point belongs to under a bit plan (``BitPlan``'s rule): its parent module, or for
    a LayerNorm's output point the first linear the LayerNorm feeds."""
    parent = point_name.rpartition(".")[0]
    consumers = summary["post_ln_consumers"].get(parent)
    return consumers[0] if consumers else parent


@register("liu2021-mp", options=Liu2021MPOptions)
def liu2021_mp(model, calib, cfg: QuantConfig, opts: Liu2021MPOptions, progress: bool = True):
    """Liu et al. 2021 with mixed precision: MSA/MLP bit widths by nuclear-norm sensitivity under a size budget."""
    from ..config import BitPlan

    groups = module_groups(model, cfg.components)
    choices = sorted({int(b) for b in opts.bit_choices})
    costs = _sensitivities(model, calib, cfg, groups, choices, progress)
    bits = choose_bits(costs, [g["size"] for g in groups], opts.target_bits)
    plan = dict(cfg.bit_plan)
    for g, b in zip(groups, bits):
        for p in g["patterns"]:
            plan[p] = f"W{b}A{b}"
    import dataclasses

    planned = dataclasses.replace(cfg, bit_plan=BitPlan(plan).to_dict())
    model, result = _liu(model, calib, planned, opts, progress)
    average = sum(g["size"] * b for g, b in zip(groups, bits)) / sum(g["size"] for g in groups)
    result.details["liu2021"]["mixed_precision"] = {
        "target_bits": opts.target_bits, "average_bits": round(average, 4), "choices": choices,
        "modules": {g["name"]: b for g, b in zip(groups, bits)}, "plan": planned.bit_plan}
    return model, result
