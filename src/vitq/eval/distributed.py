"""Evaluating across processes (``torchrun``): shard the batches, gather the outputs in order.

Batches, not items, are dealt round-robin to the ranks, and each rank's batches are exactly the
batches a single process would form. Gathered back in batch order, the features are bitwise the
ones a single process computes, so the metrics computed from them are the same numbers.
No batch is padded or repeated to even out the shards.
"""

from __future__ import annotations

import torch.distributed as dist

from ..distributed import ensure_initialized as _ensure_initialized
from ..distributed import is_main, rank_and_world  # noqa: F401  (the evaluators import them from here)


def ensure_initialized() -> None:
    """Join the process group that ``torchrun`` describes in the environment (gloo), once."""
    _ensure_initialized(backend="gloo")


def batches(n: int, batch_size: int) -> list[list[int]]:
    """All batches of ``range(n)``, in order."""
    if batch_size <= 0:
        raise ValueError(f"batch size must be positive, got {batch_size}")
    return [list(range(start, min(start + batch_size, n))) for start in range(0, n, batch_size)]


def my_batches(n: int, batch_size: int) -> list[tuple[int, list[int]]]:
    """``(batch number, indices)`` of this rank's share: batches rank, rank + world, ..."""
    rank, world = rank_and_world()
    return [(b, idx) for b, idx in enumerate(batches(n, batch_size)) if b % world == rank]


def gather_in_order(local: list[tuple[int, object]]) -> list[object]:
    """Every rank's ``(batch number, payload)`` pairs, merged and sorted: the payloads in batch order."""
    rank, world = rank_and_world()
    if world > 1:
        parts: list = [None] * world
        dist.all_gather_object(parts, local)
        local = [pair for part in parts for pair in part]
    return [payload for _, payload in sorted(local, key=lambda pair: pair[0])]


def all_true(flag: bool) -> bool:
    """Whether every rank says yes (so all ranks take the same branch around collective calls)."""
    _, world = rank_and_world()
    if world == 1:
        return bool(flag)
    parts: list = [None] * world
    dist.all_gather_object(parts, bool(flag))
    return all(parts)


def from_main(obj):
    """Rank 0's ``obj`` on every rank (for results only rank 0 computes, e.g. a fitted probe)."""
    _, world = rank_and_world()
    if world == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]
