"""A quantizable eager attention, registered in transformers' attention-function registry.

Every supported model family calls ``ALL_ATTENTION_FUNCTIONS[config._attn_implementation]`` with
the attention module, so switching the implementation to ``vitq_eager`` routes q·kᵀ and
softmax·v through the module's ``vitq_qk`` and ``vitq_pv`` QuantMatMuls without copying any
modeling code (and the scaled scores through ``vitq_scores`` where a scheme quantizes them).
LayerNorm, Softmax and the scaling stay in floating point.
"""

from __future__ import annotations

import torch
from torch import nn

IMPLEMENTATION = "vitq_eager"


def quant_eager_attention(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs,
):
    if scaling is None:
        scaling = query.size(-1) ** -0.5
    qk = getattr(module, "vitq_qk", None)
    pv = getattr(module, "vitq_pv", None)
    key_t = key.transpose(-1, -2)
    scores = (qk(query, key_t) if qk is not None else torch.matmul(query, key_t)) * scaling
    pre_softmax = getattr(module, "vitq_scores", None)  # FQ-ViT's scope: the scores are quantized too
    if pre_softmax is not None:
        scores = pre_softmax(scores)
    if attention_mask is not None:
        if attention_mask.dtype == torch.bool:
            scores = scores.masked_fill(~attention_mask, torch.finfo(scores.dtype).min)
        else:
            scores = scores + attention_mask
    probs = nn.functional.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    probs = nn.functional.dropout(probs, p=dropout, training=module.training)
    out = pv(probs, value) if pv is not None else torch.matmul(probs, value)
    return out.transpose(1, 2).contiguous(), probs


_registered = False


def register() -> None:
    """Register ``vitq_eager`` (and its additive-mask builder) with transformers, once."""
    global _registered
    if _registered:
        return
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, eager_mask

    AttentionInterface.register(IMPLEMENTATION, quant_eager_attention)
    AttentionMaskInterface.register(IMPLEMENTATION, eager_mask)
    _registered = True


def use_quant_attention(model: nn.Module) -> None:
    """Switch a transformers model (and its sub-models) to the quantizable attention."""
    register()
    model.set_attn_implementation(IMPLEMENTATION)
