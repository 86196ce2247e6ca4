"""Mixed precision: the modules that share one bit width, and the exact choice of bit widths under
an average-bit budget.

Liu et al. 2021 give every operation of one MSA or MLP module the same width (:func:`module_groups`);
CLAMP-ViT chooses weight and activation widths per module. Both then minimise a summed per-module
cost (a sensitivity, a search's fitness) under the budget with :func:`choose_bits`.
"""

from __future__ import annotations

import math

from torch import nn

from ..errors import ConfigError
from ..models.families import blocks_of, family_of


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


def _units(sizes: list[int]) -> list[int]:
    unit = 0
    for s in sizes:
        unit = math.gcd(unit, int(s))
    return [int(s) // unit for s in sizes]


def choose_bits(costs: list[dict], sizes: list[int], target: float, act_target: float | None = None) -> list:
    """The choice per group minimising the summed cost within the budget: exact dynamic programming.

    Without ``act_target`` a choice is a weight bit width ``b`` and the budget is
    sum(size * b) <= target * sum(size). With it a choice is a pair ``(w_bits, a_bits)``, the weight
    budget counts ``w_bits``, and the activation widths must also average at most ``act_target``
    over the groups."""
    units = _units(sizes)
    w_budget = int(math.floor(target * sum(units) + 1e-9))
    a_budget = None if act_target is None else int(math.floor(act_target * len(sizes) + 1e-9))
    best: dict[tuple[int, int], tuple[float, tuple]] = {(0, 0): (0.0, ())}
    for u, cost in zip(units, costs):
        nxt: dict[tuple[int, int], tuple[float, tuple]] = {}
        for (w_used, a_used), (total, picks) in best.items():
            for choice, c in cost.items():
                wb, ab = (choice, 0) if a_budget is None else choice
                w, a = w_used + u * int(wb), a_used + int(ab)
                if w > w_budget or (a_budget is not None and a > a_budget):
                    continue
                cand = (total + c, picks + (choice,))
                if (w, a) not in nxt or cand[0] < nxt[(w, a)][0]:
                    nxt[(w, a)] = cand
        if not nxt:
            budget = f"{target} weight bits" + ("" if act_target is None else f" and {act_target} activation bits")
            raise ConfigError(f"no bit choice fits an average of {budget}", hint="raise the target bits or add smaller bit choices")
        best = nxt
    return list(min(best.values(), key=lambda v: v[0])[1])


def layer_of(point_name: str, post_ln_consumers: dict[str, list[str]]) -> str:
    """The layer a point belongs to under a bit plan (``BitPlan``'s rule): its parent module, or for
    a LayerNorm's output point the first linear the LayerNorm feeds."""
    parent = point_name.rpartition(".")[0]
    consumers = post_ln_consumers.get(parent)
    return consumers[0] if consumers else parent


def group_outputs(model: nn.Module, batches, groups: list[dict]) -> dict:
    """Each group's output module recorded on ``batches``: ``{output name: Stream of outputs}``."""
    from ..models.families import component_runner
    from .recorder import record

    fp = {}
    for comp in {g["component"] for g in groups}:
        names = [g["output"] for g in groups if g["component"] == comp]
        fp.update({n: r["output"] for n, r in record(model, names, batches, component_runner(model, comp)).items()})
    return fp


def group_costs(model: nn.Module, batches, groups: list[dict], choices: list, build, cost, desc: str = "sensitivities",
                progress: bool = True, fp: dict | None = None) -> list[dict]:
    """``costs[i][choice]``: how much quantizing group ``i`` alone at ``choice`` perturbs its output.

    ``build(choice)`` returns ``(trial, summary)``: a calibrated copy of the model quantized at that
    choice everywhere. Each group's output is recorded on ``batches`` with only that group's points
    on, and ``cost(i, quantized_outputs, full_precision_outputs)`` turns it into a number. ``fp``:
    the full-precision outputs from :func:`group_outputs`, when the caller has them already."""
    from tqdm.auto import tqdm

    from ..config import BitPlan
    from ..models.families import component_runner
    from ..nn import points_disabled, quantizers
    from .recorder import record

    fp = fp if fp is not None else group_outputs(model, batches, groups)
    costs: list[dict] = [dict() for _ in groups]
    for choice in tqdm(choices, desc=desc, disable=not progress, leave=False):
        trial, summary = build(choice)
        points = list(quantizers(trial))
        for i, g in enumerate(groups):
            plan = BitPlan({p: "W8A8" for p in g["patterns"]})
            mine = [q for n, q in points if plan.spec_for(layer_of(n, summary["post_ln_consumers"])) is not None]
            with points_disabled(trial, keep=mine):  # only this group quantized
                got = record(trial, [g["output"]], batches, component_runner(trial, g["component"]))[g["output"]]["output"]
            costs[i][choice] = float(cost(i, got, fp[g["output"]]))
        del trial
    return costs


def planned_bits(cfg_plan: dict, groups: list[dict], picks: list) -> dict:
    """A bit plan (pattern -> spec) giving each group its pick: ``b`` (WbAb) or ``(w, a)`` (WwAa)."""
    plan = dict(cfg_plan)
    for g, pick in zip(groups, picks):
        w, a = (pick, pick) if isinstance(pick, int) else pick
        for p in g["patterns"]:
            plan[p] = f"W{w}A{a}"
    return plan
