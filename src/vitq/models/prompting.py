"""Learned prompts and image adapters on CLIP-style dual encoders (P4Q): where they attach, how a
prompt becomes a token sequence, and how the text tower runs from input embeddings.

- :func:`prompt_tokens` lays out each class prompt as ``[start] ctx… name… . [end]`` (the class
  name at the ``end``, ``middle`` or ``front`` of the context, as in CoOp), with the slots the
  context vectors fill;
- :func:`encode_text_embeds` runs the text tower (quantized or not) from input embeddings: through
  the tower's own ``inputs_embeds`` argument where it has one (BERT-style towers), else through its
  parts (CLIP's text transformer, whose forward takes token ids only), pooled as the tower pools;
- :func:`attach_prompt` / :func:`attach_image_adapter` put the trained modules into the model, so
  that a saved model carries them and evaluation and export use them.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import ModelError
from ..nn.prompt import AdaptedProjection, LearnedPrompt, QAdapter
from .adapter import unwrap

PROMPT_ATTR = "text_prompt"  # "text" in the name: the text tower's fingerprint and size group include it


def _towers(model: nn.Module):
    inner = unwrap(model)
    text, proj = getattr(inner, "text_model", None), getattr(inner, "text_projection", None)
    vision = getattr(inner, "visual_projection", None)
    if text is None or proj is None or vision is None or not hasattr(inner, "logit_scale"):
        raise ModelError(f"prompts and adapters need a CLIP-style dual encoder (text_model, text_projection, "
                         f"visual_projection, logit_scale); {type(inner).__name__} has not all of them",
                         hint="use a CLIPModel or VisionTextDualEncoderModel")
    return inner, text, proj


def check_dual_encoder(model: nn.Module) -> None:
    _towers(model)


def token_table(model: nn.Module) -> nn.Embedding:
    """The text tower's token-embedding table."""
    _, text, _ = _towers(model)
    table = text.get_input_embeddings() if hasattr(text, "get_input_embeddings") else None
    if not isinstance(table, nn.Embedding):
        raise ModelError(f"cannot find the token-embedding table of {type(text).__name__}")
    return table


@dataclass
class PromptTokens:
    """Class prompts as token ids with context slots: ``ctx_index`` is the context vector filling a
    position (-1: the token id there), ``end`` the position of each prompt's end token."""

    input_ids: torch.Tensor  # [C, L]
    attention_mask: torch.Tensor  # [C, L]
    ctx_index: torch.Tensor  # [C, L]
    end: torch.Tensor  # [C]


def _specials(tokenizer) -> tuple[int, int]:
    ids = tokenizer("", add_special_tokens=True)["input_ids"]
    if len(ids) != 2:
        raise ModelError(f"{type(tokenizer).__name__} wraps a text in {len(ids)} special tokens, not a start and an end token",
                         hint="learned prompts support tokenizers of the CLIP and BERT kind")
    return ids[0], ids[1]


def prompt_tokens(tokenizer, class_names, n_ctx: int, position: str = "end", max_length: int = 77) -> PromptTokens:
    start, end = _specials(tokenizer)
    period = tokenizer(".", add_special_tokens=False)["input_ids"]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else end
    rows = []
    for name in class_names:
        room = max_length - n_ctx - len(period) - 2
        if room < 1:
            raise ModelError(f"{n_ctx} context vectors leave no room for a class name in {max_length} tokens", hint="use fewer context vectors")
        words = tokenizer(name, add_special_tokens=False)["input_ids"][:room]
        ctx = list(range(n_ctx))
        if position == "end":
            parts = [("ctx", ctx), ("ids", words)]
        elif position == "front":
            parts = [("ids", words), ("ctx", ctx)]
        elif position == "middle":
            half = n_ctx // 2
            parts = [("ctx", ctx[:half]), ("ids", words), ("ctx", ctx[half:])]
        else:
            raise ModelError(f"unknown class-token position {position!r}", hint="use end, middle or front")
        ids, slots = [start], [-1]
        for kind, values in parts:
            ids += [pad] * len(values) if kind == "ctx" else list(values)
            slots += list(values) if kind == "ctx" else [-1] * len(values)
        ids += list(period) + [end]
        slots += [-1] * (len(period) + 1)
        rows.append((ids, slots))
    length = max(len(ids) for ids, _ in rows)
    input_ids = torch.full((len(rows), length), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), length), dtype=torch.long)
    ctx_index = torch.full((len(rows), length), -1, dtype=torch.long)
    for i, (ids, slots) in enumerate(rows):
        input_ids[i, :len(ids)] = torch.tensor(ids)
        mask[i, :len(ids)] = 1
        ctx_index[i, :len(ids)] = torch.tensor(slots)
    ends = mask.sum(1) - 1
    return PromptTokens(input_ids, mask, ctx_index, ends)


def _takes_inputs_embeds(module: nn.Module) -> bool:
    try:
        return "inputs_embeds" in inspect.signature(module.forward).parameters
    except (TypeError, ValueError):
        return False


def _clip_pool_positions(text: nn.Module, tokens: PromptTokens) -> torch.Tensor:
    """Where CLIPTextModel pools: its configs with ``eos_token_id == 2`` (written before
    transformers fixed it) take the highest token id, which is the end token of CLIP's own
    tokenizer; the others the first end token. Context slots hold no token and are skipped."""
    if getattr(text, "eos_token_id", None) == 2:
        return tokens.input_ids.masked_fill(tokens.ctx_index >= 0, -1).argmax(-1)
    return tokens.end


def _clip_text_from_embeds(text: nn.Module, embeds: torch.Tensor, mask: torch.Tensor, end: torch.Tensor) -> torch.Tensor:
    """CLIP's text transformer from token embeddings: positions, causal encoder, final LayerNorm,
    the state at the pooled position (what CLIPTextModel pools)."""
    from transformers.masking_utils import create_causal_mask

    hidden = text.embeddings(inputs_embeds=embeds)
    causal = create_causal_mask(config=text.config, inputs_embeds=hidden, attention_mask=mask, cache=None)
    out = text.encoder(inputs_embeds=hidden, attention_mask=causal, is_causal=True)
    last = text.final_layer_norm(out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0])
    return last[torch.arange(len(last), device=last.device), end.to(last.device)]


def encode_text_embeds(model: nn.Module, embeds: torch.Tensor, tokens: PromptTokens) -> torch.Tensor:
    """Projected text features [C, D] from input embeddings [C, L, D] laid out as ``tokens``."""
    _, text, proj = _towers(model)
    mask = tokens.attention_mask.to(embeds.device)
    if _takes_inputs_embeds(text):
        out = text(inputs_embeds=embeds, attention_mask=mask, return_dict=True)
        pooled = out.pooler_output
        if pooled is None:
            raise ModelError(f"{type(text).__name__} pools no output to project")
    elif all(hasattr(text, a) for a in ("embeddings", "encoder", "final_layer_norm")):
        pooled = _clip_text_from_embeds(text, embeds, mask, _clip_pool_positions(text, tokens))
    else:
        raise ModelError(f"cannot run {type(text).__name__} from input embeddings", hint="learned prompts support CLIP and BERT text towers")
    return proj(pooled)


def learned_prompt(model: nn.Module) -> LearnedPrompt | None:
    found = getattr(unwrap(model), PROMPT_ATTR, None)
    return found if isinstance(found, LearnedPrompt) else None


def attach_prompt(model: nn.Module, prompt: LearnedPrompt) -> None:
    check_dual_encoder(model)
    setattr(unwrap(model), PROMPT_ATTR, prompt)


def image_adapter(model: nn.Module) -> AdaptedProjection | None:
    found = getattr(unwrap(model), "visual_projection", None)
    return found if isinstance(found, AdaptedProjection) else None


def attach_image_adapter(model: nn.Module, adapter: QAdapter, ratio: float) -> AdaptedProjection:
    """Put ``adapter`` after the image projection (replacing an adapter attached before)."""
    inner, _, _ = _towers(model)
    current = inner.visual_projection
    projection = current.projection if isinstance(current, AdaptedProjection) else current
    inner.visual_projection = AdaptedProjection(projection, adapter, ratio)
    return inner.visual_projection


def prompted_text_features(model: nn.Module, tokens: PromptTokens, prompt: LearnedPrompt | None = None) -> torch.Tensor:
    """Projected text features of the class prompts through the model's (quantized) text tower."""
    prompt = prompt if prompt is not None else learned_prompt(model)
    if prompt is None:
        raise ModelError("this model has no learned prompt")
    table = token_table(model)
    embeds = table(tokens.input_ids.to(table.weight.device))
    return encode_text_embeds(model, prompt(embeds, tokens.ctx_index.to(embeds.device)), tokens)


def text_length_limit(model: nn.Module, tokenizer) -> int:
    """The longest prompt the tokenizer and the text tower allow (CLIP's 77 where neither says)."""
    from .tokenizers import text_max_length

    return text_max_length(model, tokenizer) or 77
