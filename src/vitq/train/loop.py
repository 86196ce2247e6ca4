"""A training loop for everything vitq trains: reference models, prompts and adapters (P4Q),
reconstruction (block by block), ...

The caller gives a ``step(indices, ctx) -> loss`` function; the loop owns the rest:

- **order**: one ``torch.Generator`` per epoch, seeded from ``(seed, epoch)`` only
  (:func:`epoch_generator`), draws the epoch's example order and is handed to ``step`` for its own
  random draws (augmentation), so an epoch is the same whether the run was interrupted or not;
- **progress**: a bar per epoch (loss, learning rate), refreshed at most every few seconds;
- **checkpoints**: after every epoch, safetensors + JSON (:mod:`vitq.train.checkpoint`) with model,
  optimizer, scheduler, global RNG and history; ``resume=True`` continues from the last one and
  ends with the same weights as an uninterrupted run (tested); ``stop_after`` ends early on purpose;
- **data parallel** under ``torchrun``: each process takes its share of every batch (indices
  ``rank::world``), gradients of the trainable parameters are averaged across processes with
  ``all_reduce`` after ``backward`` (what DistributedDataParallel does, without its communication
  overlap; gloo on the CPU, NCCL on GPUs), and only rank 0 writes checkpoints.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.distributed as dist
from torch import nn
from tqdm.auto import tqdm

from ..distributed import ensure_initialized, is_main, rank_and_world
from ..errors import ConfigError
from .checkpoint import load_checkpoint, save_checkpoint

LAST = "last"


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """One generator per epoch: the data order and the step's draws depend only on (seed, epoch)."""
    return torch.Generator().manual_seed(seed * 100_003 + epoch)


@dataclass
class TrainConfig:
    epochs: int
    batch_size: int
    seed: int = 0
    grad_clip: float | None = 1.0  # max gradient norm (None: no clipping)
    autocast: str | None = None  # "bf16": CPU/GPU bfloat16 autocast around the step
    checkpoint_dir: str | Path | None = None
    resume: bool = False
    stop_after: int | None = None  # end after this epoch (then resume with a new recipe, say)
    keep_epochs: bool = False  # also keep each epoch's weights (epochNNN.safetensors)
    drop_last: bool = True  # drop the ragged last batch
    progress: bool = True
    desc: str | None = None  # progress-bar label (default "epoch k/n")
    context: str | None = None  # what a checkpoint must match to be resumed (a method's settings)

    def __post_init__(self):
        if self.epochs <= 0 or self.batch_size <= 0:
            raise ConfigError(f"epochs and batch size must be positive, got {self.epochs} and {self.batch_size}")
        if self.stop_after is not None and not 0 < self.stop_after <= self.epochs:
            raise ConfigError(f"stop_after must lie in [1, {self.epochs}], got {self.stop_after}")
        if self.autocast not in (None, "bf16"):
            raise ConfigError(f"unknown autocast {self.autocast!r}", hint="use bf16 or leave it off")


@dataclass
class StepContext:
    """What ``step`` gets besides its indices."""

    epoch: int
    step: int
    generator: torch.Generator
    rank: int = 0
    world: int = 1


@dataclass
class TrainState:
    epoch: int = 0
    history: list = field(default_factory=list)
    train_seconds: float = 0.0
    stopped_early: bool = False

    def to_dict(self) -> dict:
        return {"epoch": self.epoch, "history": self.history, "train_seconds": self.train_seconds}


def _average_gradients(params: list[torch.nn.Parameter], world: int) -> None:
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= world
    offset = 0
    for g in grads:
        g.copy_(flat[offset: offset + g.numel()].view_as(g))
        offset += g.numel()


def train(model: nn.Module, optimizer: torch.optim.Optimizer, num_examples: int,
          step: Callable[[torch.Tensor, StepContext], torch.Tensor], config: TrainConfig, scheduler=None,
          order: Callable[[int, torch.Generator], torch.Tensor] | None = None,
          on_epoch_start: Callable[[int, torch.Generator], None] | None = None,
          on_epoch_end: Callable[[int, float], dict] | None = None) -> TrainState:
    """Run the loop (see the module docstring). ``order(n, g)`` gives an epoch's example order
    (default: a permutation); ``on_epoch_start(epoch, g)`` prepares an epoch (train/eval modes);
    ``on_epoch_end(epoch, mean_loss)`` returns metrics logged in the history. Returns the final state."""
    ensure_initialized()
    rank, world = rank_and_world()
    params = [p for group in optimizer.param_groups for p in group["params"]]
    per_epoch = num_examples // config.batch_size if config.drop_last else math.ceil(num_examples / config.batch_size)
    if per_epoch == 0:
        raise ConfigError(f"{num_examples} examples make no batch of {config.batch_size}", hint="use a smaller batch size")
    state = TrainState()
    folder = Path(config.checkpoint_dir) if config.checkpoint_dir is not None else None
    if config.resume:
        if folder is None:
            raise ConfigError("resume needs a checkpoint folder", hint="pass checkpoint_dir (--run-dir)")
        if (folder / LAST / "state.json").is_file():
            saved = load_checkpoint(folder / LAST, model, optimizer, scheduler)
            if saved.get("context") != config.context:
                raise ConfigError(f"the checkpoint in {folder} was written by a run with other settings",
                                  hint="resume with the settings it was started with, or start afresh in a new checkpoint folder")
            state = TrainState(saved["epoch"], saved["history"], saved["train_seconds"])
            if config.stop_after is not None and config.stop_after <= state.epoch:
                raise ConfigError(f"stop_after {config.stop_after}: the checkpoint is already past epoch {state.epoch}",
                                  hint="drop --stop-after or give a later epoch")
    for epoch in range(state.epoch, config.epochs):
        g = epoch_generator(config.seed, epoch)
        model.train()
        if on_epoch_start is not None:
            on_epoch_start(epoch, g)
        perm = order(num_examples, g) if order is not None else torch.randperm(num_examples, generator=g)
        start, total = time.time(), 0.0
        bar = tqdm(range(per_epoch), desc=config.desc or f"epoch {epoch + 1}/{config.epochs}", disable=not (config.progress and is_main()),
                   mininterval=10, leave=False)
        for i in bar:
            idx = perm[i * config.batch_size:(i + 1) * config.batch_size]
            if world > 1:
                idx = idx[rank::world]
            ctx = StepContext(epoch, i, g, rank, world)
            if config.autocast == "bf16":
                device = "cuda" if any(p.is_cuda for p in params) else "cpu"
                with torch.autocast(device, dtype=torch.bfloat16):
                    loss = step(idx, ctx)
            else:
                loss = step(idx, ctx)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if world > 1:
                _average_gradients(params, world)
            if config.grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
            total += loss.item()
            lr = optimizer.param_groups[0]["lr"]
            bar.set_postfix(loss=f"{total / (i + 1):.3f}", lr=f"{lr:.2e}", refresh=False)  # shown at the next update: a log gets no line per step
        bar.close()
        seconds = time.time() - start
        model.eval()
        metrics = on_epoch_end(epoch, total / per_epoch) if on_epoch_end is not None else {}
        state.history.append({"epoch": epoch + 1, "loss": total / per_epoch, "seconds": round(seconds, 1), **metrics})
        state.train_seconds += seconds
        state.epoch = epoch + 1
        if folder is not None and is_main():
            save_checkpoint(folder / LAST, model, optimizer, scheduler, {**state.to_dict(), "context": config.context})
            if config.keep_epochs:
                from safetensors.torch import save_file

                save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()}, str(folder / f"epoch{state.epoch:03d}.safetensors"))
        if world > 1:
            dist.barrier()
        if state.epoch == config.stop_after:
            state.stopped_early = True
            break
    model.eval()
    return state
