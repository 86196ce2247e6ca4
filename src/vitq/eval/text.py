"""The text side of CLIP-style models: finding the tokenizer, and class embeddings with a cache.

Class embeddings (class names × prompt templates, averaged and normalised) cost as much as a small
evaluation on their own, and are the same for every run of the same text tower. They are cached in
memory under a fingerprint of the text tower's weights (and quantizer state), the templates and the
class names; optionally also on disk.
"""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path
from typing import Sequence

import torch

from ..errors import ModelError  # noqa: F401  (re-exported users catch it from here)
from ..io_utils import atomic_write_bytes
from ..models.tokenizers import resolve_tokenizer  # noqa: F401  (kept importable from here)
from . import distributed
from .features import run_texts, text_embeddings, text_max_length
from .metrics import normalize
from .templates import fill

_MEMORY_CACHE: dict[str, torch.Tensor] = {}


def text_modules(model) -> list[tuple[str, torch.nn.Module]]:
    """The children that make up the text tower (``text_model``, ``text_projection``, …)."""
    found = [(n, m) for n, m in model.named_children() if "text" in n.lower()]
    return found or [("", model)]


def text_fingerprint(model) -> str:
    """A hash of the text tower: weights, buffers (quantizer scales) and module reprs (bit widths)."""
    h = hashlib.blake2b(digest_size=16)
    for name, module in text_modules(model):
        h.update(f"{name}:{module!r}".encode())
        h.update(repr(_switches(module)).encode())
        for key, tensor in module.state_dict().items():
            for part in _plain_parts(tensor.detach() if isinstance(tensor, torch.Tensor) else tensor):
                t = part.cpu().contiguous().reshape(-1)
                h.update(f"{key}:{t.dtype}:{tuple(part.shape)}".encode())
                h.update(t.view(torch.uint8).numpy() if t.numel() else b"")
    return h.hexdigest()


def _plain_parts(tensor) -> list:
    """The plain tensors behind a state-dict entry: a tensor subclass (torchao's int8 weights: codes
    and scales), a quantized tensor or quantize_dynamic's packed (weight, bias) tuple."""
    if isinstance(tensor, (tuple, list)):
        return [p for t in tensor for p in _plain_parts(t)]
    if not isinstance(tensor, torch.Tensor):
        return [torch.tensor(list(repr(tensor).encode()), dtype=torch.uint8)]  # a dtype or other plain value
    if tensor.is_quantized:
        return [tensor.int_repr(), torch.tensor([tensor.q_scale() if tensor.qscheme() in (torch.per_tensor_affine, torch.per_tensor_symmetric) else 0.0])]
    if type(tensor) is torch.Tensor or not hasattr(tensor, "__tensor_flatten__"):
        return [tensor]
    names, _ = tensor.__tensor_flatten__()
    return [p for n in names for p in _plain_parts(getattr(tensor, n))]


def _switches(module) -> list:
    """Quantizer state that lives in plain attributes, not in the state dict (on/off, mode, bits)."""
    found = []
    for sub_name, sub in module.named_modules():
        for attr in ("active", "enabled", "mode", "bits"):
            value = getattr(sub, attr, None)
            if callable(value) and attr == "active":
                value = value()
            if isinstance(value, (bool, int, str)):
                found.append((sub_name, attr, value))
    return found


def class_embeddings(model, tokenizer, class_names: Sequence[str], templates: Sequence[str],
                     batch_size: int = 256, cache_dir: str | Path | None = None, progress: bool = True) -> torch.Tensor:
    """Normalised class embeddings ``[C, D]``: each class's template embeddings normalised, averaged, renormalised."""
    key = hashlib.blake2b(
        json.dumps([text_fingerprint(model), list(templates), list(class_names)]).encode(), digest_size=16
    ).hexdigest()
    cached = _lookup(key, cache_dir)
    if distributed.all_true(cached is not None):
        return cached
    texts = [fill(t, c) for c in class_names for t in templates]
    max_length = text_max_length(model, tokenizer)
    emb = run_texts(texts, lambda batch: text_embeddings(model, tokenizer, batch, max_length),
                    batch_size=batch_size, desc="class prompts", progress=progress)
    weights = normalize(normalize(emb).view(len(class_names), len(templates), -1).mean(1))
    _store(key, weights, cache_dir)
    return weights


def _lookup(key: str, cache_dir) -> torch.Tensor | None:
    if key in _MEMORY_CACHE:
        return _MEMORY_CACHE[key]
    if cache_dir is not None:
        path = Path(cache_dir) / f"text-{key}.pt"
        if path.is_file():
            try:
                weights = torch.load(path, weights_only=True)
            except Exception:  # a damaged cache file is recomputed, not fatal
                return None
            _MEMORY_CACHE[key] = weights
            return weights
    return None


def _store(key: str, weights: torch.Tensor, cache_dir) -> None:
    _MEMORY_CACHE[key] = weights
    if cache_dir is not None and distributed.is_main():
        buffer = io.BytesIO()
        torch.save(weights, buffer)
        atomic_write_bytes(Path(cache_dir) / f"text-{key}.pt", buffer.getvalue())


def clear_cache() -> None:
    _MEMORY_CACHE.clear()
