"""Per-point search with a pluggable objective on a layer's *output*.

The search observers of :mod:`vitq.quant.observers` score a range on their own tensor (L2 error of
the quantized values). Methods that judge a quantizer by what the layer then computes need the
layer's output under each candidate, compared with the full-precision output:

- Liu et al. 2021: Pearson correlation of the linear's output (and a ranking loss on attention);
- CLAMP-ViT: a contrastive fitness between full-precision and quantized patch features.

:class:`OutputSearch` replays a layer (or block) on recorded inputs (:mod:`vitq.calib.recorder`) with
the candidate parameters set on its points, and scores the outputs against recorded targets with an
objective ``f(quantized, full_precision) -> loss`` (lower is better; summed over batches).
:meth:`OutputSearch.grid` tries a list of candidates; other strategies (alternating, evolutionary)
call :meth:`OutputSearch.score` themselves.
"""

from __future__ import annotations

from typing import Callable, Iterable, Sequence

import torch
from torch import nn

from .recorder import Stream, first_tensor, on_device_of

Objective = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def mse(quantized: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    return (quantized - reference).pow(2).mean()


def negative_pearson(quantized: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Minus the Pearson correlation of the two tensors, per sample (first axis), averaged."""
    a = quantized.flatten(1).float()
    b = reference.flatten(1).float()
    a = a - a.mean(1, keepdim=True)
    b = b - b.mean(1, keepdim=True)
    corr = (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1)).clamp_min(1e-12)
    return -corr.mean()


def negative_cosine(quantized: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    return -torch.nn.functional.cosine_similarity(quantized.flatten(1).float(), reference.flatten(1).float(), dim=1).mean()


def ranking_hinge(quantized: torch.Tensor, reference: torch.Tensor, margin: float = 0.0, pairs: int = 1 << 16,
                  seed: int = 0) -> torch.Tensor:
    """A hinge on the pairwise order of the last axis (attention scores): for pairs (i, j) of one row
    with reference[i] > reference[j], penalise max(0, margin - (quantized[i] - quantized[j])),
    averaged over every ordered pair (i, j) of every row (ties and i = j count as 0).

    Exact when there are at most ``pairs`` ordered pairs in all; else an unbiased estimate from
    ``pairs`` (row, i, j) triples drawn uniformly with ``seed``, the same draw for every candidate
    of a search (an attention map of 32 images, 3 heads and 65 tokens has 26M pairs: all of them
    made the search spend most of its time in this loss)."""
    n = reference.shape[-1]
    ref = reference.reshape(-1, n).float()
    got = quantized.reshape(-1, n).float()
    rows = ref.shape[0]
    if rows * n * n <= pairs:  # every ordered pair of every row, as flat indices
        a = torch.arange(rows * n).repeat_interleave(n)
        b = (a // n) * n + torch.arange(n).repeat(rows * n)
    else:
        g = torch.Generator().manual_seed(seed)
        row = torch.randint(0, rows, (pairs,), generator=g) * n
        a = row + torch.randint(0, n, (pairs,), generator=g)
        b = row + torch.randint(0, n, (pairs,), generator=g)
    ref, got = ref.reshape(-1), got.reshape(-1)
    sign = torch.sign(ref[a] - ref[b])
    return (torch.relu(margin - sign * (got[a] - got[b])) * (sign != 0)).mean()


OBJECTIVES: dict[str, Objective] = {"mse": mse, "pearson": negative_pearson, "cosine": negative_cosine, "ranking": ranking_hinge}


class OutputSearch:
    """Score settings of a layer's quantization points by the layer's output on recorded inputs.

    ``inputs`` holds the layer's ``(args, kwargs)`` per batch (from :func:`capture_inputs`);
    ``targets`` the full-precision outputs of the same batches (a tuple per batch where the layer
returns a tuple of outputs: their objectives are summed); ``objective`` a name of
    :data:`OBJECTIVES` or a function ``(quantized, reference) -> loss``.
    """

    def __init__(self, layer: nn.Module, inputs: Stream, targets: Sequence[torch.Tensor] | Stream,
                 objective: str | Objective = "mse", output: Callable = first_tensor):
        self.layer, self.inputs, self.targets, self.output = layer, inputs, targets, output
        if isinstance(objective, str):
            if objective not in OBJECTIVES:
                from ..errors import ConfigError

                raise ConfigError(f"unknown search objective {objective!r}", hint=f"use one of: {', '.join(OBJECTIVES)}")
            objective = OBJECTIVES[objective]
        self.objective = objective

    @torch.no_grad()
    def score(self, apply: Callable[[], None] | None = None) -> float:
        """``apply()`` the candidate (set scales on the points), then the summed objective."""
        if apply is not None:
            apply()
        total = 0.0
        for item, target in zip(self.inputs, self.targets):
            args, kwargs = on_device_of(self.layer, item)
            out = self.output(self.layer(*args, **kwargs))
            if isinstance(out, (tuple, list)):  # several outputs (the linears fed by one point): summed
                total += sum(float(self.objective(o, t.to(o.device))) for o, t in zip(out, target))
            else:
                total += float(self.objective(out, target.to(out.device)))
        return total

    def grid(self, candidates: Iterable, apply: Callable[[object], None]) -> tuple[object, float]:
        """The candidate with the lowest score; ``apply(candidate)`` sets it. The best one is left set."""
        best, best_score = None, float("inf")
        for cand in candidates:
            s = self.score(lambda: apply(cand))
            if s < best_score:
                best, best_score = cand, s
        if best is not None:
            apply(best)
        return best, best_score
