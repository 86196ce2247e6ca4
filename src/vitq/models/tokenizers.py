"""The tokenizer that belongs to a model: given, loaded from a path or hub id, or saved beside it."""

from __future__ import annotations

from pathlib import Path

from ..errors import ModelError


def text_vocab_size(model) -> int | None:
    config = getattr(model, "config", None)
    text = getattr(config, "text_config", None) or config
    size = getattr(text, "vocab_size", None)
    return int(size) if isinstance(size, int) else None


def check_tokenizer(tokenizer, model=None, where: str = "") -> None:
    """Refuse a degenerate tokenizer: transformers builds one with a handful of tokens from a folder
    that has a config but no tokenizer files, and everything tokenized with it is garbage."""
    size = len(tokenizer)
    vocab = text_vocab_size(model) if model is not None else None
    if size < 16 or (vocab is not None and vocab >= 64 and size < vocab // 4):
        expected = f" (the model's text tower has {vocab} tokens)" if vocab else ""
        raise ModelError(
            f"the tokenizer{' from ' + where if where else ''} has only {size} tokens{expected}: its vocabulary files are missing",
            hint="pass the model's tokenizer (tokenizer=… or --tokenizer PATH_OR_HUB_ID), or save the model with its tokenizer",
        )


def resolve_tokenizer(model, tokenizer=None):
    """``tokenizer`` itself, loaded from a path/hub id, or the one saved with ``model``."""
    from transformers import AutoTokenizer

    if tokenizer is not None and not isinstance(tokenizer, (str, Path)):
        return tokenizer
    where = tokenizer or getattr(model, "name_or_path", None) or getattr(getattr(model, "config", None), "_name_or_path", None)
    if not where:
        raise ModelError(f"{type(model).__name__} was built in memory and has no tokenizer",
                         hint="pass tokenizer=… (or --tokenizer PATH_OR_HUB_ID)")
    try:
        local_only = not Path(str(where)).exists()  # a hub id: use the local cache, never wait on the network
        loaded = AutoTokenizer.from_pretrained(str(where), local_files_only=local_only)
    except Exception as err:
        raise ModelError(f"cannot load a tokenizer from {where}: {err}",
                         hint="pass tokenizer=… (or --tokenizer PATH_OR_HUB_ID) naming a folder with tokenizer files") from None
    check_tokenizer(loaded, model, str(where))
    return loaded


def text_max_length(model, tokenizer) -> int | None:
    """The longest input both the tokenizer and the text tower's position table allow."""
    config = getattr(model, "config", None)
    text = getattr(config, "text_config", None) or config
    limits = [getattr(text, "max_position_embeddings", None), getattr(tokenizer, "model_max_length", None)]
    limits = [int(x) for x in limits if isinstance(x, int) and 0 < x < 1_000_000]
    return min(limits) if limits else None
