"""Architecture knowledge: which transformers classes vitq supports, their components, and the roles
of the layers inside each transformer block.

This is the one place to read "which tensors of a HF CLIP model are quantized": every Linear and
the patch-embedding Conv2d of the selected components; inside each block the post-LayerNorm
activation (input of q/k/v and of fc1), the post-GELU activation (input of fc2), both inputs of
q·kᵀ, the post-Softmax probabilities and v (inputs of softmax·v), and the attention output
(input of the output projection). LayerNorm, Softmax and residual additions stay in floating point.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..errors import ModelError


@dataclass(frozen=True)
class BlockRoles:
    """Relative paths inside one transformer block.

    ``ln_attn``/``ln_mlp`` are set for pre-LN blocks, whose LayerNorm output feeds only the
    linears after it, so the post-LayerNorm quantizer sits on the LayerNorm. Post-LN blocks
    (BERT) add the LayerNorm output to the residual too: there the linears quantize their inputs.
    """

    attention: str
    q: str
    k: str
    v: str
    out: str
    fc1: str
    fc2: str
    ln_attn: str | None = None
    ln_mlp: str | None = None
    residual_lns: tuple[str, ...] = ()  # post-LN blocks: the LayerNorms whose input is a residual sum


_VIT_LIKE = BlockRoles(
    attention="attention", q="attention.q_proj", k="attention.k_proj", v="attention.v_proj", out="attention.o_proj",
    fc1="mlp.fc1", fc2="mlp.fc2", ln_attn="layernorm_before", ln_mlp="layernorm_after",
)
_CLIP = BlockRoles(
    attention="self_attn", q="self_attn.q_proj", k="self_attn.k_proj", v="self_attn.v_proj", out="self_attn.out_proj",
    fc1="mlp.fc1", fc2="mlp.fc2", ln_attn="layer_norm1", ln_mlp="layer_norm2",
)
_BERT = BlockRoles(
    attention="attention.self", q="attention.self.query", k="attention.self.key", v="attention.self.value",
    out="attention.output.dense", fc1="intermediate.dense", fc2="output.dense",
    residual_lns=("attention.output.LayerNorm", "output.LayerNorm"),
)

# Block classes by name (transformers 5.x). Matching by class name keeps subclasses of other
# libraries out unless they really share the layout.
BLOCKS: dict[str, BlockRoles] = {
    "ViTLayer": _VIT_LIKE,
    "DeiTLayer": _VIT_LIKE,
    "SwinLayer": _VIT_LIKE,
    "CLIPEncoderLayer": _CLIP,
    "BertLayer": _BERT,
}

# Other LayerNorms whose output feeds only the listed linears (Swin's patch merging).
EXTRA_PRE_LN: dict[str, tuple[str, tuple[str, ...]]] = {
    "SwinPatchMerging": ("norm", ("reduction",)),
}


def _first_output(out):
    """transformers 5 returns model outputs where 4.x returned tensors: take the pooled tensor."""
    if isinstance(out, torch.Tensor):
        return out
    pooled = getattr(out, "pooler_output", None)
    return pooled if pooled is not None else out[0]


def _mean_pool(hidden: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    if mask is None:
        return hidden.mean(dim=1)
    m = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * m).sum(1) / m.sum(1).clamp_min(1.0)


@dataclass(frozen=True)
class Family:
    """A supported model family: its classes, components (module-name prefixes) and encoders.

    ``heads``: name prefixes of the task heads (projections, classifiers, logit scale), which size
    reports count apart from the towers.
    """

    name: str
    classes: tuple[str, ...]
    components: dict[str, tuple[str, ...]]
    heads: tuple[str, ...] = ()

    def encode_image(self, model: nn.Module, pixel_values: torch.Tensor) -> torch.Tensor:
        if hasattr(model, "get_image_features"):
            return _first_output(model.get_image_features(pixel_values=pixel_values))
        out = model(pixel_values=pixel_values)
        if hasattr(out, "logits"):
            return out.logits
        if hasattr(out, "image_embeds"):
            return out.image_embeds
        return _first_output(out)

    def encode_text(self, model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        if hasattr(model, "get_text_features"):
            return _first_output(model.get_text_features(input_ids=input_ids, attention_mask=attention_mask))
        out = model(input_ids=input_ids, attention_mask=attention_mask)
        if hasattr(out, "text_embeds"):
            return out.text_embeds
        # Sentence encoders such as all-MiniLM-L6-v2 were trained with mean pooling, not BERT's pooler.
        return _mean_pool(out.last_hidden_state, attention_mask)


_DUAL = {"image": ("vision_model", "visual_projection"), "text": ("text_model", "text_projection")}
_IMAGE_ONLY = {"image": ("",)}
_TEXT_ONLY = {"text": ("",)}

_DUAL_HEADS = ("visual_projection", "text_projection", "logit_scale", "logit_bias")

FAMILIES: tuple[Family, ...] = (
    Family("clip", ("CLIPModel",), _DUAL, _DUAL_HEADS),
    Family("vision-text-dual-encoder", ("VisionTextDualEncoderModel",), _DUAL, _DUAL_HEADS),
    Family("clip-vision", ("CLIPVisionModel", "CLIPVisionModelWithProjection"), _IMAGE_ONLY, ("visual_projection",)),
    Family("clip-text", ("CLIPTextModel", "CLIPTextModelWithProjection"), _TEXT_ONLY, ("text_projection",)),
    Family("vit", ("ViTModel", "ViTForImageClassification"), _IMAGE_ONLY, ("classifier",)),
    Family("deit", ("DeiTModel", "DeiTForImageClassification", "DeiTForImageClassificationWithTeacher"), _IMAGE_ONLY,
           ("classifier", "cls_classifier", "distillation_classifier")),
    Family("swin", ("SwinModel", "SwinForImageClassification"), _IMAGE_ONLY, ("classifier",)),
    Family("bert", ("BertModel",), _TEXT_ONLY),
)

SUPPORTED_CLASSES = tuple(c for f in FAMILIES for c in f.classes)


def family_of(model: nn.Module) -> Family:
    """The family of a model instance, or a ModelError naming the supported classes."""
    cls = type(model).__name__
    for fam in FAMILIES:
        if cls in fam.classes:
            return fam
    raise ModelError(
        f"vitq has no adapter for {cls}",
        hint="supported transformers classes: " + ", ".join(SUPPORTED_CLASSES),
    )


def _under(name: str, prefix: str) -> bool:
    return prefix == "" or name == prefix or name.startswith(prefix + ".")


def component_of(family: Family, module_name: str) -> str | None:
    """Which component (image, text) a module belongs to, by its name."""
    for comp, prefixes in family.components.items():
        if any(_under(module_name, p) for p in prefixes):
            return comp
    return None


def size_group_of(family: Family, param_name: str) -> str:
    """``heads`` for a task head's parameter, else its component (image, text); what is in neither is a head."""
    if any(_under(param_name, p) for p in family.heads):
        return "heads"
    return component_of(family, param_name) or "heads"


# What each component reads from a batch, and how one batch is run through it.
COMPONENT_INPUTS = {"image": ("pixel_values",), "text": ("input_ids",)}


def component_runner(model: nn.Module, component: str):
    """A function running one batch (a dict of model inputs) through ``component``; batches without
    that component's inputs are skipped."""
    family = family_of(model)
    if component == "image":
        return lambda b: family.encode_image(model, b["pixel_values"]) if "pixel_values" in b else None
    if component == "text":
        return lambda b: family.encode_text(model, b["input_ids"], b.get("attention_mask")) if "input_ids" in b else None
    raise ModelError(f"unknown component {component!r}", hint="use image or text")


def blocks_of(model: nn.Module, component: str) -> list[str]:
    """Names of the transformer blocks of ``component``, in forward order."""
    family = family_of(model)
    return [name for name, m in model.named_modules() if type(m).__name__ in BLOCKS and component_of(family, name) == component]
