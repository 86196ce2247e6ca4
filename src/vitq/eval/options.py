"""The options every evaluator understands, gathered in one place (the CLI flags map onto them)."""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Callable, Sequence

from ..errors import ConfigError


@dataclass
class EvalOptions:
    batch_size: int = 32
    limit: int | None = None  # class-balanced subset of the (test) data; also of the training data
    train_limit: int | None = None  # linear probe: overrides ``limit`` for the training data
    seed: int = 0
    skip_bad: bool = False
    templates: str | Sequence[str] = "ensemble7"
    tokenizer: Any = None  # a tokenizer, or a folder / hub id to load one from
    transform: Callable | None = None  # PIL → tensor; default: the model's own preprocessing
    preprocess: str | None = None  # without a saved image processor: clip, imagenet or inception mean/std
    train_data: Any = None  # linear probe: training images (a path or an ImageFolder)
    num_workers: int = 0
    text_batch_size: int = 256
    cache_dir: str | Path | None = None  # on-disk cache of class embeddings
    plot: str | Path | None = None  # fidelity: where to save the similarity-matrix PNG
    progress: bool = True
    label_map: str = "auto"  # top1: "auto", "names" or "index"
    c_values: Sequence[float] | None = None  # linear probe: the sweep of C (default: 10^-4 … 10^4)
    val_fraction: float = 0.2  # linear probe: share of the training data held out to choose C
    probe_bits: int | None = None  # linear probe: quantize the fitted classifier's weights (MinMax, P4Q's QLP)
    cost: bool = False  # also report size and FLOPs/BOPs
    checkpoint: str | Path | None = None  # folder for resumable passes over images
    resume: bool = False  # continue from the batches saved in ``checkpoint``

    def checkpointer(self):
        """A :class:`~vitq.eval.checkpoint.Checkpoint` when ``checkpoint`` is set, else None."""
        if self.checkpoint is None:
            return None
        from .checkpoint import Checkpoint

        return Checkpoint(Path(self.checkpoint), resume=self.resume)

    @classmethod
    def from_kwargs(cls, **kwargs) -> "EvalOptions":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(kwargs) - known)
        if unknown:
            raise ConfigError(f"unknown evaluation option(s): {', '.join(unknown)}", hint=f"known: {', '.join(sorted(known))}")
        opts = cls(**kwargs)
        if opts.batch_size <= 0:
            raise ConfigError(f"batch size must be positive, got {opts.batch_size}")
        if opts.resume and opts.checkpoint is None:
            raise ConfigError("--resume needs --checkpoint DIR", hint="pass the folder the interrupted run saved to")
        if opts.limit is not None and opts.limit <= 0:
            raise ConfigError(f"--limit must be positive, got {opts.limit}")
        return opts
