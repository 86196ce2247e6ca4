"""The files that travel with a model besides its weights: tokenizer and image processor.

A model loaded from a local folder has them beside its config; one loaded from the Hugging Face
hub has them in the hub cache, under its id. :func:`save_side_files` writes them next to a saved
or exported model either way (copied from the folder, or ``save_pretrained`` from the cache), so
that the folder stands alone: without them, evaluation would not know the model's preprocessing
and transformers would build a useless tokenizer.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from torch import nn

SIDE_FILES = (
    "tokenizer.json", "tokenizer_config.json", "vocab.txt", "vocab.json", "merges.txt", "special_tokens_map.json",
    "added_tokens.json", "spiece.model", "sentencepiece.bpe.model",
    "preprocessor_config.json", "processor_config.json",
    "scheduler_config.json",  # a diffusion UNet's sampler
)


def model_source(model: nn.Module) -> str:
    """Where the model came from: its folder or hub id ('' for a model built in memory)."""
    return str(getattr(model, "name_or_path", "") or getattr(getattr(model, "config", None), "_name_or_path", "") or "")


def save_side_files(model: nn.Module, folder: str | Path) -> list[str]:
    """Write the model's tokenizer and image-processor files into ``folder``; returns their names."""
    folder = Path(folder)
    src = model_source(model)
    if not src:
        return []
    path = Path(src)
    if path.is_dir():
        if path.resolve() == folder.resolve():
            return []
        written = []
        for name in SIDE_FILES:
            if (path / name).is_file():
                shutil.copy2(path / name, folder / name)
                written.append(name)
        return written
    before = {p.name for p in folder.iterdir()}
    from transformers import AutoImageProcessor, AutoTokenizer

    for loader in (AutoTokenizer, AutoImageProcessor):
        try:  # only from the local hub cache: never wait on the network here
            loader.from_pretrained(src, local_files_only=True).save_pretrained(str(folder))
        except Exception:  # the cache has no such files (e.g. a vision-only model has no tokenizer)
            continue
    return sorted({p.name for p in folder.iterdir()} - before)
