"""Sampling a diffusion UNet, and Q-Diffusion's timestep-aware calibration set.

:func:`sample` runs a diffusers scheduler (DDIM by default, deterministic with eta = 0) from given
noise, calling ``on_step(index, timestep, x_t, first_row)`` with every intermediate input (batches of
``batch_size`` rows; ``first_row`` is the batch's offset in ``noise``). Same noise, same
samples: quantized and full-precision models are compared on identical seeds.

:func:`timestep_calibration` is Q-Diffusion's calibration (Sec. 4.2 of the paper): run the
full-precision sampler on a pool of trajectories and, every ``interval`` sampler steps, draw
``per_step`` of the intermediate inputs x_t uniformly at random, so that the set covers the whole
range of timesteps (activation ranges change along it). ``where="last"`` is the baseline without
timestep awareness: as many inputs, all from the sampler's last step (the inputs closest to images).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn
from tqdm.auto import tqdm

from ..errors import ConfigError
from ..models.unet import noise_prediction, sample_shape

WHERE = ("uniform", "last")


def sampler(scheduler, steps: int):
    """A copy of ``scheduler`` set to ``steps`` inference steps (the caller's stays untouched)."""
    if steps <= 0:
        raise ConfigError(f"sampler steps must be positive, got {steps}")
    s = copy.deepcopy(scheduler)
    s.set_timesteps(steps)
    return s


def initial_noise(n: int, shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """The starting noise of ``n`` samples: sample i is the same for every n (one generator per sample)."""
    return torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(seed * 1_000_003 + i)) for i in range(n)])


@torch.no_grad()
def sample(unet: nn.Module, scheduler, noise: torch.Tensor, steps: int = 100, conditioning: dict | None = None,
           on_step: Callable[[int, int, torch.Tensor, int], None] | None = None, batch_size: int = 64,
           progress: bool = False, desc: str = "sampling") -> torch.Tensor:
    """Denoise ``noise`` with ``scheduler`` in ``steps`` steps; returns x_0 (unclipped)."""
    s = sampler(scheduler, steps)
    out = []
    chunks = list(range(0, noise.shape[0], batch_size))
    bar = tqdm(total=len(chunks) * len(s.timesteps), desc=desc, disable=not progress, leave=False)
    for start in chunks:
        x = noise[start:start + batch_size].clone()
        cond = {k: v[start:start + batch_size] if torch.is_tensor(v) else v for k, v in (conditioning or {}).items()}
        for i, t in enumerate(s.timesteps):
            if on_step is not None:
                on_step(i, int(t), x, start)
            eps = noise_prediction(unet, x, t, **cond)
            x = s.step(eps, t, x).prev_sample
            bar.update(1)
        out.append(x)
    bar.close()
    return torch.cat(out)


@dataclass
class DiffusionCalibration:
    """Calibration inputs of a UNet: batches of ``{"sample", "timestep"[, conditioning]}`` dicts."""

    batches: list[dict]
    timesteps: list[int]  # the sampler timesteps the set was drawn from, in sampler order
    per_timestep: dict[int, int] = field(default_factory=dict)  # timestep -> inputs drawn there
    steps: int = 0
    interval: int = 0
    where: str = "uniform"

    def __iter__(self):
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)

    @property
    def size(self) -> int:
        return sum(self.per_timestep.values())

    def describe(self) -> dict:
        return {"inputs": self.size, "timesteps": len(self.timesteps), "first": self.timesteps[0] if self.timesteps else None,
                "last": self.timesteps[-1] if self.timesteps else None, "sampler_steps": self.steps,
                "interval": self.interval, "where": self.where}


def timestep_calibration(unet: nn.Module, scheduler, steps: int = 100, interval: int = 5, per_step: int = 256,
                         pool: int | None = None, where: str = "uniform", batch_size: int = 32, seed: int = 0,
                         shape: tuple[int, ...] | None = None, conditioning: dict | None = None,
                         progress: bool = True) -> DiffusionCalibration:
    """Q-Diffusion's calibration set (see the module docstring). ``pool`` trajectories are sampled
    (default: ``per_step``, or the whole count for ``where="last"``); the set is shuffled into
    batches of ``batch_size`` mixing timesteps. Deterministic for a given ``seed``."""
    if where not in WHERE:
        raise ConfigError(f"unknown calibration timesteps {where!r}", hint=f"use one of: {', '.join(WHERE)}")
    if interval <= 0 or per_step <= 0 or batch_size <= 0:
        raise ConfigError("interval, per_step and batch_size must be positive")
    cross = getattr(unet.config, "cross_attention_dim", None)
    if cross and "encoder_hidden_states" not in (conditioning or {}):
        raise ConfigError("this UNet is conditional (cross-attention): its sampler needs the conditioning",
                          hint="pass conditioning={'encoder_hidden_states': E} with one row per pool trajectory "
                               "(e.g. prompt embeddings of your text encoder), or give calibration batches that hold them")
    s = sampler(scheduler, steps)
    chosen_steps = list(range(0, len(s.timesteps), interval))
    total = per_step * len(chosen_steps)
    if where == "last":
        chosen_steps = [len(s.timesteps) - 1]
    need = total if where == "last" else per_step
    pool = max(pool or need, need)
    shape = shape or sample_shape(unet)
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(pool, *shape, generator=g)
    picks = {i: torch.randperm(pool, generator=g)[:need].sort().values for i in chosen_steps}
    timesteps = [int(s.timesteps[i]) for i in chosen_steps]
    kept: list[tuple[torch.Tensor, int, torch.Tensor]] = []  # (x_t rows, timestep, pool indices)

    def on_step(i: int, t: int, x: torch.Tensor, start: int) -> None:
        if i in picks:
            rows = picks[i]
            mine = rows[(rows >= start) & (rows < start + x.shape[0])]
            if mine.numel():
                kept.append((x[mine - start].clone(), t, mine))

    sample(unet, scheduler, noise, steps, conditioning, on_step, batch_size=max(batch_size, 64), progress=progress,
           desc="timestep-aware calibration" if where == "uniform" else "calibration (last step)")
    xs = torch.cat([k[0] for k in kept])
    ts = torch.cat([torch.full((k[0].shape[0],), k[1], dtype=torch.long) for k in kept])
    src = torch.cat([k[2] for k in kept])
    order = torch.randperm(xs.shape[0], generator=g)
    xs, ts, src = xs[order], ts[order], src[order]
    batches = []
    for b in range(math.ceil(xs.shape[0] / batch_size)):
        sl = slice(b * batch_size, (b + 1) * batch_size)
        batch = {"sample": xs[sl], "timestep": ts[sl]}
        for k, v in (conditioning or {}).items():
            batch[k] = v[src[sl]] if torch.is_tensor(v) else v
        batches.append(batch)
    counts = {t: int((ts == t).sum()) for t in timesteps}
    return DiffusionCalibration(batches, timesteps, counts, steps, interval, where)
