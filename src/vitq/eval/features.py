"""Passes over data: image batches and text batches through a model, sharded across ranks.

The model-facing helpers use the models' standard methods (``get_image_features``,
``get_text_features``, classifier logits) and accept both plain tensors and transformers-5 model
outputs, so a quantized model that keeps those methods works unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from ..data.imagefolder import collate_skip_bad
from ..errors import DataError, ModelError
from ..memory import release_free_memory
from ..tensors import device_of, dtype_of  # noqa: F401  (the evaluators import device_of from here)
from . import distributed


def as_tensor(out) -> torch.Tensor:
    """The embedding tensor in whatever a ``get_*_features`` call returned."""
    if torch.is_tensor(out):
        return out
    for name in ("pooler_output", "image_embeds", "text_embeds", "logits"):
        value = getattr(out, name, None)
        if torch.is_tensor(value):
            return value
    if isinstance(out, (tuple, list)) and out and torch.is_tensor(out[0]):
        return out[0]
    raise ModelError(f"cannot find an embedding tensor in a {type(out).__name__}")


def is_dual_encoder(model) -> bool:
    return callable(getattr(model, "get_image_features", None)) and callable(getattr(model, "get_text_features", None))




def image_embeddings(model, pixel_values: torch.Tensor) -> torch.Tensor:
    """Projected image embeddings of a CLIP-style model (not normalised)."""
    return as_tensor(model.get_image_features(pixel_values=pixel_values))


def text_embeddings(model, tokenizer, texts: Sequence[str], max_length: int | None = None) -> torch.Tensor:
    """Projected text embeddings of a CLIP-style model (not normalised)."""
    tokens = tokenizer(list(texts), padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    device = device_of(model)
    kwargs = {"input_ids": tokens["input_ids"].to(device)}
    if "attention_mask" in tokens:
        kwargs["attention_mask"] = tokens["attention_mask"].to(device)
    return as_tensor(model.get_text_features(**kwargs))


from ..models.tokenizers import text_max_length  # noqa: E402,F401  (the evaluators import it from here)


def classifier_head(model):
    """The final linear layer of a ``*ForImageClassification`` model (its input is the image feature)."""
    for name in ("classifier", "head", "fc"):
        head = getattr(model, name, None)
        if isinstance(head, torch.nn.Module):
            return head
    raise ModelError(f"{type(model).__name__} has no classifier head (classifier/head/fc) to read features from")


def logits_and_features(model, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits of a classifier and the features its head sees (read with a forward hook)."""
    seen = {}

    def keep_input(_module, args):
        seen["x"] = args[0]

    handle = classifier_head(model).register_forward_pre_hook(keep_input)
    try:
        logits = as_tensor(model(pixel_values=pixel_values))
    finally:
        handle.remove()
    return logits, seen["x"].flatten(1)


@dataclass
class ImagePass:
    """What a pass over a data set produced: outputs per kept image, their targets, skip count."""

    outputs: tuple[torch.Tensor, ...]
    targets: torch.Tensor
    skipped: int

    @property
    def count(self) -> int:
        return len(self.targets)


class _Failure:
    """A data error raised in a DataLoader worker, carried back whole (workers re-raise as RuntimeError)."""

    def __init__(self, err: DataError):
        self.message, self.hint = err.message, err.hint


class _Guarded:
    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, i):
        try:
            return self.dataset[i]
        except DataError as err:
            return _Failure(err)


def _collate(batch):
    failures = [b for b in batch if isinstance(b, _Failure)]
    if failures:
        return failures[0], 0
    kept = [b for b in batch if b is not None]
    return (collate_skip_bad(kept) if kept else None), len(batch) - len(kept)


def _as_tuple(out) -> tuple[torch.Tensor, ...]:
    out = out if isinstance(out, tuple) else (out,)
    return tuple(as_tensor(o).detach().float().cpu() for o in out)


def run_images(dataset, fn: Callable, device, batch_size: int = 32, num_workers: int = 0,
               desc: str = "images", progress: bool = True, checkpoint=None) -> ImagePass:
    """Apply ``fn(pixel_values)`` to this rank's batches of ``dataset``; gather all ranks' results in order.

    Items are ``(tensor, target)``; ``None`` items (unreadable images under ``skip_bad``) are dropped and counted.
    With a :class:`~vitq.eval.checkpoint.Checkpoint`, finished batches are saved as it goes and a
    resumed run computes only the rest.
    """
    # ``device`` is where the images go; a model there gives its device and floating dtype (bf16 models).
    dtype = None
    if isinstance(device, torch.nn.Module):
        device, dtype = device_of(device), dtype_of(device)
    mine = distributed.my_batches(len(dataset), batch_size)
    rank = distributed.rank_and_world()[0]
    signature = {"desc": desc, "images": len(dataset), "batch_size": batch_size}
    done = checkpoint.load(desc, rank, signature) if checkpoint else {}
    local = sorted(done.items())
    todo = [(number, idx) for number, idx in mine if number not in done]
    source = _Guarded(dataset) if num_workers > 0 else dataset
    loader = DataLoader(source, batch_sampler=[idx for _, idx in todo], collate_fn=_collate, num_workers=num_workers)
    # Only rank 0 draws a bar, over its own share (the other ranks run alongside).
    bar = tqdm(total=sum(len(idx) for _, idx in mine), initial=sum(len(idx) for n, idx in mine if n in done),
               desc=desc, unit="img", disable=not progress or not distributed.is_main())
    with torch.inference_mode():
        for step, ((number, idx), (batch, skipped)) in enumerate(zip(todo, loader), start=1):
            if isinstance(batch, _Failure):
                raise DataError(batch.message, hint=batch.hint)
            if batch is None:
                local.append((number, (None, None, skipped)))
            else:
                x, y = batch
                local.append((number, (_as_tuple(fn(x.to(device=device, dtype=dtype))), torch.as_tensor(y), skipped)))
            bar.update(len(idx))
            release_free_memory()
            if checkpoint and step % checkpoint.every == 0:
                checkpoint.save(desc, rank, signature, local)
    bar.close()
    local.sort(key=lambda item: item[0])
    parts = distributed.gather_in_order(local)
    kept = [p for p in parts if p[0] is not None]
    skipped = sum(p[2] for p in parts)
    if not kept:
        raise DataError(f"no readable images to evaluate ({skipped} skipped as unreadable, {len(dataset)} in the data set)",
                        hint="check the data path and --limit")
    outputs = tuple(torch.cat([p[0][i] for p in kept]) for i in range(len(kept[0][0])))
    if checkpoint:
        checkpoint.clear(desc, rank)
    return ImagePass(outputs, torch.cat([p[1] for p in kept]), skipped)


def run_texts(texts: Sequence[str], fn: Callable, batch_size: int = 256, desc: str = "texts",
              progress: bool = True) -> torch.Tensor:
    """Apply ``fn(list_of_texts)`` batch by batch (sharded across ranks); the outputs concatenated in order."""
    mine = distributed.my_batches(len(texts), batch_size)
    local = []
    bar = tqdm(total=sum(len(idx) for _, idx in mine), desc=desc, unit="text", disable=not progress or not distributed.is_main())
    with torch.inference_mode():
        for number, idx in mine:
            local.append((number, _as_tuple(fn([texts[i] for i in idx]))[0]))
            bar.update(len(idx))
            release_free_memory()
    bar.close()
    parts = distributed.gather_in_order(local)
    return torch.cat(parts) if parts else torch.empty(0)
