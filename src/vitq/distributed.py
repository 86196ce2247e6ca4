"""Processes under ``torchrun``: joining the process group and knowing one's rank, for every layer
(evaluation shards batches, training averages gradients). gloo on the CPU, NCCL where a GPU is used."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


def ensure_initialized(backend: str | None = None) -> None:
    """Join the process group that ``torchrun`` describes in the environment, once."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and dist.is_available() and not dist.is_initialized():
        if backend is None:
            backend = "nccl" if torch.cuda.is_available() and os.environ.get("VITQ_DIST_BACKEND") != "gloo" else "gloo"
        dist.init_process_group(backend=backend)


def rank_and_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main() -> bool:
    return rank_and_world()[0] == 0
