"""CLAMP-ViT (Ramachandran, Kundu and Krishna, ECCV 2024): data-free PTQ with contrastively
synthesised calibration images and a layer-wise evolutionary search. Methods ``clamp-vit`` and
``clamp-vit-mp``.

Two stages alternate for ``cycles`` cycles:

1. **Synthesis** (:mod:`vitq.data.synthetic`, recipe ``clamp``): Gaussian noise optimised on the
   full-precision model's patch-level contrastive loss, class guidance and image priors; from the
   second cycle on, also towards where the quantized model's head still departs from the
   full-precision one (the quantized model's feedback).
2. **Search**: each unit of quantization points (a linear's input with its weights, a LayerNorm's
   output with the weights it feeds, an attention matmul's inputs; :mod:`vitq.calib.units`) in
   forward order, on inputs quantized upstream, evolves a population of candidate scales: one
   multiplicative factor per point, starting from the calibrated scales. A steady-state evolution
   (Evol-Q's, which CLAMP-ViT builds on): each generation draws ``tournament`` members, mutates the
   fittest by a uniform relative perturbation of up to ``mutation``, and replaces the least fit. The
   fitness is a patch-level InfoNCE between the quantized and the full-precision outputs of the
   unit: each quantized token must pick out its own full-precision token among the other tokens of
   the same image (:func:`contrastive_fitness`; tokens centred on their image's mean, our addition).

The quantizers are P4Q's baseline scheme (signed per-channel weights, unsigned per-tensor
activations, attention at its width) with OMSE activation ranges as the starting point (Evol-Q's
recipe). ``clamp-vit-mp`` chooses a weight and an activation width per MSA and MLP module under an
average budget for each: the contrastive fitness of every module quantized alone at every pair of
widths, then the exact optimum within the budgets (:func:`vitq.calib.bitalloc.choose_bits`), then
the search on that plan.

With calibration data passed in, the method searches on those images instead of synthesising
(the benchmark's real-data row); otherwise it needs no data.
"""

from __future__ import annotations

import copy
import dataclasses
import random
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..calib.bitalloc import choose_bits, group_costs, group_outputs, module_groups, planned_bits
from ..calib.search import OutputSearch
from ..calib.units import disabled_outputs, for_each_unit, scale_point
from ..config import BitPlan, QuantConfig
from ..data.synthetic import RECIPES, SynthesisConfig, SyntheticImages, synthesize
from ..errors import ConfigError
from ..models.prepare import prepare
from ..nn import QuantConv2d, set_mode
from . import MethodResult, register
from .common import as_batches, baseline_scheme, calibrate
from .options import MethodOptions


@dataclass(frozen=True)
class ClampOptions(MethodOptions):
    recipe: str = "clamp"
    steps: int = 500
    feedback_steps: int = 100
    lr: float = 0.25
    batch_size: int = 32
    neighbourhood: int = 3
    top_n: int = 2
    temperature: float = 0.2
    ce_weight: float = 1.0
    tv_weight: float = 0.05
    l2_weight: float = 1e-4
    feedback_weight: float = 1.0
    cycles: int = 2
    search: bool = True
    population: int = 15
    tournament: int = 10
    generations: int = 20
    mutation: float = 0.05
    fitness_temperature: float = 0.2

    CHOICES = {"recipe": RECIPES}
    HELP = {
        "recipe": "synthesis: clamp (patch contrastive), psaq (patch-similarity entropy) or noise",
        "steps": "gradient steps of the first synthesis",
        "feedback_steps": "gradient steps of each later cycle's synthesis (with the quantized model's feedback)",
        "lr": "Adam learning rate on the images",
        "batch_size": "images optimised together (B)",
        "neighbourhood": "side of the spatial window where a patch's positives are searched (N)",
        "top_n": "positives per patch: the most similar patches of its window",
        "temperature": "InfoNCE temperature of the synthesis loss",
        "ce_weight": "weight of the class guidance through the head",
        "tv_weight": "weight of the total-variation prior",
        "l2_weight": "weight of the L2 image prior",
        "feedback_weight": "weight of the quantized model's feedback in later cycles",
        "cycles": "synthesis-then-search cycles",
        "search": "run the evolutionary search (false: calibrated scales only)",
        "population": "candidates kept per unit",
        "tournament": "candidates drawn per generation; the fittest is mutated",
        "generations": "mutations evaluated per unit and cycle",
        "mutation": "largest relative change of a scale in one mutation",
        "fitness_temperature": "InfoNCE temperature of the search's fitness",
    }

    def __post_init__(self):
        super().__post_init__()
        if self.cycles < 1 or self.population < 1 or self.tournament < 1 or self.generations < 0:
            raise ConfigError("cycles, population and tournament must be at least 1, generations at least 0")
        if not 0 < self.mutation < 1 or self.fitness_temperature <= 0:
            raise ConfigError("need 0 < mutation < 1 and fitness_temperature > 0")
        self.synthesis()  # the synthesis settings are checked now, not after the model is loaded

    def synthesis(self, seed: int = 0, steps: int | None = None) -> SynthesisConfig:
        return SynthesisConfig(recipe=self.recipe, steps=self.steps if steps is None else steps, lr=self.lr, batch_size=self.batch_size,
                               neighbourhood=self.neighbourhood, top_n=self.top_n, temperature=self.temperature,
                               ce_weight=self.ce_weight, tv_weight=self.tv_weight, l2_weight=self.l2_weight,
                               feedback_weight=self.feedback_weight, seed=seed)


@dataclass(frozen=True)
class ClampMPOptions(ClampOptions):
    target_w_bits: float = 4.7
    target_a_bits: float = 5.9
    bit_choices: tuple[int, ...] = (4, 6, 8)

    HELP = {**ClampOptions.HELP,
            "target_w_bits": "average weight bits over the MSA and MLP modules (weighted by their weights)",
            "target_a_bits": "average activation bits over the MSA and MLP modules",
            "bit_choices": "bit widths a module's weights and activations may take"}

    def __post_init__(self):
        super().__post_init__()
        from ..quant.uniform import check_bits

        for b in self.bit_choices:
            check_bits(int(b))
        for name in ("target_w_bits", "target_a_bits"):
            if not min(self.bit_choices) <= getattr(self, name) <= max(self.bit_choices):
                raise ConfigError(f"{name}={getattr(self, name)} lies outside the bit choices {self.bit_choices}",
                                  hint="give a target between the smallest and the largest choice")


def _tokens(t: torch.Tensor, conv: bool) -> torch.Tensor:
    """A unit's output as (groups, tokens, features): tokens of a sequence, pixels of a patch
    embedding's map, rows of an attention map; a head's (batch, classes) is one group of images."""
    if conv and t.dim() == 4:
        return t.flatten(2).transpose(1, 2)
    if t.dim() == 2:
        return t.unsqueeze(0)
    return t.reshape(-1, t.shape[-2], t.shape[-1])


def contrastive_fitness(quantized: torch.Tensor, reference: torch.Tensor, temperature: float = 0.2, conv: bool = False) -> torch.Tensor:
    """CLAMP-ViT's fitness: InfoNCE in which each quantized token's positive is the full-precision
    token at its own position and its negatives are the other full-precision tokens of its group.
    Tokens are centred on their group's mean first: the component every token shares would
    otherwise make all candidates score alike (docs/methods.md gives the numbers)."""
    q, k = _tokens(quantized, conv).float(), _tokens(reference, conv).float()
    q = F.normalize(q - q.mean(1, keepdim=True), dim=-1)
    k = F.normalize(k - k.mean(1, keepdim=True), dim=-1)
    logits = q @ k.transpose(1, 2) / temperature
    labels = torch.arange(logits.shape[-1], device=logits.device).expand(logits.shape[0], -1)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1))


def evolve(score, dims: int, population: int, tournament: int, generations: int, mutation: float,
           rng: random.Random) -> tuple[list[float], float, int]:
    """Steady-state evolution of ``dims`` positive factors (1.0 is the start) minimising ``score``:
    returns the fittest factors, their score and the number of evaluations."""
    def mutate(parent):
        return [max(1e-3, f * (1.0 + rng.uniform(-mutation, mutation))) for f in parent]

    start = [1.0] * dims
    pop = [(score(start), start)]
    while len(pop) < population:
        child = mutate(start)
        pop.append((score(child), child))
    for _ in range(generations):
        parent = min(rng.sample(pop, min(tournament, len(pop))), key=lambda p: p[0])
        child = mutate(parent[1])
        pop.append((score(child), child))
        pop.remove(max(pop, key=lambda p: p[0]))
    best = min(pop, key=lambda p: p[0])
    return best[1], best[0], population + generations


def _search_unit(model, unit: dict, inputs, opts: ClampOptions, rng: random.Random, log: list) -> None:
    probe, points = unit["probe"], unit["points"]
    conv = any(isinstance(model.get_submodule(n), QuantConv2d) for n in unit["linears"])
    targets = disabled_outputs(probe, inputs, points)
    try:
        search = OutputSearch(probe, inputs, targets, lambda q, r: contrastive_fitness(q, r, opts.fitness_temperature, conv),
                              output=lambda out: out)
        bases = [p.quantizer.scale.detach().clone() for p in points]

        def apply(factors):
            for p, b, f in zip(points, bases, factors):
                scale_point(p, b, f)

        before = search.score()
        best, fitness, evals = evolve(lambda f: search.score(lambda: apply(f)), len(points), opts.population, opts.tournament,
                                      opts.generations, opts.mutation, rng)
        apply(best)
        log.append({"unit": unit["module"], "before": round(before, 6), "after": round(fitness, 6), "evaluations": evals,
                    "factors": [round(f, 4) for f in best]})
    finally:
        targets.close()


def _data(model, calib, cfg: QuantConfig, opts: ClampOptions, progress: bool):
    """Real calibration batches when given; else the first cycle's synthetic images (given ones,
    from :func:`vitq.data.synthetic.synthesize`, are used as they are and re-synthesised in cycles)."""
    if isinstance(calib, SyntheticImages):
        return calib, calib
    if calib is not None:
        return as_batches(calib), None
    images = synthesize(model, cfg.num_calib, opts.synthesis(cfg.seed), progress=progress)
    return images, images


@torch.no_grad()
def _clamp(model, cfg: QuantConfig, opts: ClampOptions, data, images, progress: bool = True, plan_details: dict | None = None):
    """Calibrate on ``data`` (``images``: the synthetic set it is, or None for real data), then
    search, re-synthesising between cycles."""
    summary = prepare(model, baseline_scheme(cfg, "omse"), cfg.components, cfg.exclude, cfg.plan)
    synthesis_seconds = images.seconds if images is not None else 0.0
    calibrate(model, as_batches(data), summary["components"], progress=progress)
    rng = random.Random(cfg.seed)
    cycles = []
    for cycle in range(opts.cycles if opts.search else 1):
        if cycle > 0 and images is not None:  # the quantized model steers the next images
            set_mode(model, "quant")
            images = synthesize(model, cfg.num_calib, opts.synthesis(cfg.seed + cycle, opts.feedback_steps), feedback=model,
                                init=images, progress=progress)
            synthesis_seconds += images.seconds
            data = images
        log: list = []
        if opts.search:
            set_mode(model, "quant")
            for_each_unit(model, as_batches(data), summary["components"], summary["post_ln_consumers"],
                          lambda unit, inputs: _search_unit(model, unit, inputs, opts, rng, log),
                          desc=f"clamp-vit search, cycle {cycle + 1}", progress=progress)
        cycles.append({"units": len(log), "fitness_before": round(sum(u["before"] for u in log), 4),
                       "fitness_after": round(sum(u["after"] for u in log), 4)})
    set_mode(model, "quant")
    details = {"clamp_vit": {"data": "real" if images is None else f"synthetic ({opts.recipe})", "images": cfg.num_calib if images is not None else None,
                             "search": opts.search, "cycles": cycles, "synthesis_seconds": round(synthesis_seconds, 2),
                             "population": opts.population, "generations": opts.generations, "mutation": opts.mutation}}
    if plan_details:
        details["clamp_vit"]["mixed_precision"] = plan_details
    return model, MethodResult.from_prepare(summary, calibration="sequential", details=details)


@register("clamp-vit", "clamp", options=ClampOptions, needs_calibration=False, trains=True, accepts_calibration=True)
def clamp_vit(model, calib, cfg: QuantConfig, opts: ClampOptions, progress: bool = True):
    """CLAMP-ViT: data-free; contrastive synthetic images, then a layer-wise evolutionary scale search, in cycles."""
    data, images = _data(model, calib, cfg, opts, progress)
    return _clamp(model, cfg, opts, data, images, progress)


@register("clamp-vit-mp", options=ClampMPOptions, needs_calibration=False, trains=True, accepts_calibration=True)
def clamp_vit_mp(model, calib, cfg: QuantConfig, opts: ClampMPOptions, progress: bool = True):
    """CLAMP-ViT with mixed precision: weight and activation widths per MSA/MLP module by contrastive fitness under budgets."""
    data, images = _data(model, calib, cfg, opts, progress)
    batches = as_batches(data)
    groups = module_groups(model, cfg.components)
    choices = [(w, a) for w in sorted({int(b) for b in opts.bit_choices}) for a in sorted({int(b) for b in opts.bit_choices})]
    with torch.no_grad():
        fp = group_outputs(model, batches, groups)

    def build(choice):
        trial = copy.deepcopy(model)
        bits_cfg = dataclasses.replace(cfg, bits=f"W{choice[0]}A{choice[1]}", bit_plan={})
        summary = prepare(trial, baseline_scheme(bits_cfg, "omse"), bits_cfg.components, bits_cfg.exclude)
        calibrate(trial, batches, summary["components"], progress=False)
        return trial, summary

    def cost(i, got, ref):
        return sum(float(contrastive_fitness(a, r, opts.fitness_temperature)) for a, r in zip(got, ref))

    with torch.no_grad():
        costs = group_costs(model, batches, groups, choices, build, cost, desc="clamp-vit-mp fitness", progress=progress, fp=fp)
    picks = choose_bits(costs, [g["size"] for g in groups], opts.target_w_bits, opts.target_a_bits)
    planned = dataclasses.replace(cfg, bit_plan=BitPlan(planned_bits(cfg.bit_plan, groups, picks)).to_dict())
    sizes = [g["size"] for g in groups]
    record = {"target_w_bits": opts.target_w_bits, "target_a_bits": opts.target_a_bits,
              "average_w_bits": round(sum(s * p[0] for s, p in zip(sizes, picks)) / sum(sizes), 4),
              "average_a_bits": round(sum(p[1] for p in picks) / len(picks), 4),
              "modules": {g["name"]: f"W{p[0]}A{p[1]}" for g, p in zip(groups, picks)}, "plan": planned.bit_plan}
    return _clamp(model, planned, opts, data, images, progress, plan_details=record)
