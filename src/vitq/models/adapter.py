"""The ModelAdapter protocol: what vitq needs to know of an architecture, found from the model's
module structure rather than its class name.

An adapter names

- the **components** (``image``, ``text``; later ``unet``): module-name prefixes, and the batch
  keys each one reads;
- the **blocks** of each component, in forward order, and inside each block the **roles** of its
  layers (q, k, v or a fused qkv, the attention output projection, fc1, fc2, the LayerNorms):
  :class:`BlockRoles`;
- the **heads** (projections, classifiers, logit scale), which size reports count apart;
- how to **run a batch** (a dict of keyword arguments) through a component, and how to **encode**
  images and texts for evaluation;
- how to **hook attention** so that q·kᵀ and softmax·v go through quantizable matmuls.

:class:`TransformersAdapter` implements it for Hugging Face transformers models: towers are found
by what they contain (a patch-embedding convolution: image; a token-embedding table: text), blocks
by containing an attention module (q/k/v linears, or a fused qkv) and an MLP (fc1/fc2), roles by the
naming conventions transformers uses. A subclass of a supported model, a ``torch.compile``d model,
or an architecture vitq has never seen but that follows these conventions all work. For one that
does not, register its block layout with :func:`register_block_roles`.

Adapters are stateless: each method takes the model, so a copy of a model (``copy.deepcopy``) needs
no new adapter.
"""

from __future__ import annotations

import inspect
import re
from dataclasses import dataclass, field, fields, replace
from typing import Callable

import torch
from torch import nn

from ..errors import ModelError


@dataclass(frozen=True)
class BlockRoles:
    """Relative paths inside one transformer block.

    ``qkv`` is set instead of ``q``/``k``/``v`` where one linear computes all three (BLIP).
    ``ln_attn``/``ln_mlp`` are set for pre-LN blocks, whose LayerNorm output feeds only the linears
    after it, so the post-LayerNorm quantizer sits on the LayerNorm. Post-LN blocks (BERT) add the
    LayerNorm output to the residual too: there the linears quantize their inputs, and
    ``residual_lns`` names the LayerNorms whose input is a residual sum.
    """

    attention: str
    out: str
    fc1: str
    fc2: str
    q: str | None = None
    k: str | None = None
    v: str | None = None
    qkv: str | None = None
    ln_attn: str | None = None
    ln_mlp: str | None = None
    residual_lns: tuple[str, ...] = ()

    @property
    def qkv_linears(self) -> list[str]:
        return [self.qkv] if self.qkv else [r for r in (self.q, self.k, self.v) if r]

    @classmethod
    def from_dict(cls, d: dict) -> "BlockRoles":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ModelError(f"unknown block roles {', '.join(unknown)}", hint=f"roles: {', '.join(sorted(known))}")
        d = dict(d)
        if "residual_lns" in d:
            d["residual_lns"] = tuple(d["residual_lns"])
        return cls(**d)


# Block layouts registered by users for architectures whose naming vitq does not recognise,
# by block class name.
_REGISTERED: dict[str, BlockRoles] = {}


def register_block_roles(block_class: str | type, roles: BlockRoles | dict) -> None:
    """Tell vitq where the layers of a block class are (paths relative to the block), e.g.
    ``register_block_roles("MyBlock", {"attention": "attn", "q": "attn.wq", "k": "attn.wk", "v": "attn.wv",
    "out": "attn.wo", "fc1": "ffn.w1", "fc2": "ffn.w2", "ln_attn": "norm1", "ln_mlp": "norm2"})``."""
    name = block_class if isinstance(block_class, str) else block_class.__name__
    _REGISTERED[name] = roles if isinstance(roles, BlockRoles) else BlockRoles.from_dict(roles)


def unwrap(model: nn.Module) -> nn.Module:
    """The module behind a ``torch.compile`` wrapper."""
    return getattr(model, "_orig_mod", model)


# -- role finding by naming convention ---------------------------------------------------------
_Q, _K, _V = ("q_proj", "query", "q", "q_lin"), ("k_proj", "key", "k", "k_lin"), ("v_proj", "value", "v", "v_lin")
_QKV = ("qkv", "qkv_proj", "in_proj", "c_attn")
_OUT = ("o_proj", "out_proj", "proj", "projection", "out_lin", "c_proj")
_FC1 = ("fc1", "lin1", "intermediate.dense", "mlp.0")
_FC2 = ("fc2", "lin2", "output.dense", "mlp.2")
_LN_ATTN = re.compile(r"(before|norm_?1|layer_norm1|ln_?1|attention_norm)$")
_LN_MLP = re.compile(r"(after|norm_?2|layer_norm2|ln_?2|ffn_norm)$")


def _linear(modules: dict, path: str | None) -> bool:
    return path is not None and isinstance(modules.get(path), nn.Linear)


def _child(modules: dict, parent: str, names) -> str | None:
    for n in names:
        path = f"{parent}.{n}" if parent else n
        if _linear(modules, path):
            return path
    return None


def _find_roles(block: nn.Module) -> BlockRoles | None:
    """Roles inside ``block`` by transformers' naming conventions, or None if it is not a block."""
    modules = dict(block.named_modules())
    attention = q = k = v = qkv = None
    for name, _ in modules.items():  # the shallowest module holding q/k/v (or a fused qkv) linears
        if name.count(".") > 2:
            continue
        cq, ck, cv = _child(modules, name, _Q), _child(modules, name, _K), _child(modules, name, _V)
        cqkv = _child(modules, name, _QKV)
        if (cq and ck and cv) or cqkv:
            attention, q, k, v, qkv = name, cq, ck, cv, (None if (cq and ck and cv) else cqkv)
            break
    if attention is None or attention == "":
        return None
    out = _child(modules, attention, _OUT)
    parent = attention.rpartition(".")[0]
    if out is None:  # BERT: attention.self holds q/k/v, attention.output.dense projects
        out = _child(modules, f"{parent}.output" if parent else "output", ("dense",))
    fc1 = next((p for p in ([f"mlp.{n}" for n in _FC1] + list(_FC1)) if _linear(modules, p)), None)
    fc2 = next((p for p in ([f"mlp.{n}" for n in _FC2] + list(_FC2)) if _linear(modules, p) and p != out), None)
    if out is None or fc1 is None or fc2 is None:
        return None
    direct_lns = [n for n, m in block.named_children() if isinstance(m, nn.LayerNorm)]
    ln_attn = next((n for n in direct_lns if _LN_ATTN.search(n)), None)
    ln_mlp = next((n for n in direct_lns if _LN_MLP.search(n)), None)
    if ln_attn and ln_mlp:
        return BlockRoles(attention=attention, q=q, k=k, v=v, qkv=qkv, out=out, fc1=fc1, fc2=fc2, ln_attn=ln_attn, ln_mlp=ln_mlp)
    # Post-LN (BERT): LayerNorms after the attention output and after fc2, fed by residual sums.
    nested = tuple(n for n in (f"{out.rpartition('.')[0]}.LayerNorm", f"{fc2.rpartition('.')[0]}.LayerNorm")
                   if isinstance(modules.get(n), nn.LayerNorm))
    return BlockRoles(attention=attention, q=q, k=k, v=v, qkv=qkv, out=out, fc1=fc1, fc2=fc2, residual_lns=nested)


def block_roles_of(module: nn.Module) -> BlockRoles | None:
    """The roles of ``module`` if it is a transformer block (registered layout first)."""
    registered = _REGISTERED.get(type(module).__name__)
    if registered is not None:
        return registered
    if isinstance(module, (nn.ModuleList, nn.Sequential)) or not any(isinstance(m, nn.Linear) for m in module.children()) and \
            not any(True for _ in module.children()):
        return None
    return _find_roles(module)


def _attention_hookable(attention: nn.Module) -> bool:
    """Whether the attention module calls transformers' attention-function registry (so that
    ``vitq_eager`` can route its matmuls through QuantMatMuls)."""
    try:
        source = inspect.getsource(type(attention).forward)
    except (OSError, TypeError):
        return False
    return "ALL_ATTENTION_FUNCTIONS" in source or "attention_interface" in source


# -- towers ------------------------------------------------------------------------------------
def _is_patch_conv(m: nn.Module) -> bool:
    return isinstance(m, nn.Conv2d) and tuple(m.kernel_size) == tuple(m.stride) and m.kernel_size[0] > 1


def is_token_table(name: str, m: nn.Module) -> bool:
    last = name.rpartition(".")[2]
    return isinstance(m, nn.Embedding) and m.num_embeddings >= 50 and ("word" in last or "token" in last or last == "embed_tokens")


def _first_output(out):
    """transformers 5 returns model outputs where 4.x returned tensors: take the pooled tensor."""
    if isinstance(out, torch.Tensor):
        return out
    for key in ("image_embeds", "text_embeds", "pooler_output"):
        value = getattr(out, key, None)
        if isinstance(value, torch.Tensor):
            return value
    return out[0]


def _mean_pool(hidden: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    if mask is None:
        return hidden.mean(dim=1)
    m = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * m).sum(1) / m.sum(1).clamp_min(1.0)


def _under(name: str, prefix: str) -> bool:
    return prefix == "" or name == prefix or name.startswith(prefix + ".")


# The transformers classes vitq is tested on (tiny random configs of each, tests/test_adapters.py).
# Others that follow the same conventions are found by structure as well.
SUPPORTED_CLASSES = (
    "CLIPModel", "VisionTextDualEncoderModel", "CLIPVisionModel", "CLIPVisionModelWithProjection", "CLIPTextModel",
    "CLIPTextModelWithProjection", "ViTModel", "ViTForImageClassification", "DeiTModel", "DeiTForImageClassification",
    "DeiTForImageClassificationWithTeacher", "SwinModel", "SwinForImageClassification", "BertModel",
    "SiglipModel", "SiglipVisionModel", "SiglipTextModel", "Siglip2Model", "Siglip2VisionModel", "Siglip2TextModel",
    "Dinov2Model", "Dinov2ForImageClassification", "BeitModel", "BeitForImageClassification",
    "OwlViTModel", "OwlViTVisionModel", "OwlViTTextModel",
)


COMPONENT_INPUTS = {"image": ("pixel_values",), "text": ("input_ids",), "unet": ("sample", "timestep")}
# Further keyword arguments a component passes on when a batch has them (SigLIP2's NaFlex images).
OPTIONAL_INPUTS = {"image": ("pixel_attention_mask", "spatial_shapes", "interpolate_pos_encoding"),
                   "text": ("attention_mask", "token_type_ids", "position_ids")}
_HEAD_NAMES = ("classifier", "cls_classifier", "distillation_classifier", "head", "logit_scale", "logit_bias")


@dataclass
class ModelAdapter:
    """The protocol (and the transformers implementation's data). See the module docstring."""

    kind = "transformer"  # the architecture kind methods declare they support (a UNet adapter: "unet")
    name: str
    components: dict[str, tuple[str, ...]]
    heads: tuple[str, ...] = ()
    blocks_by_component: dict[str, list[str]] = field(default_factory=dict)
    roles: dict[str, BlockRoles] = field(default_factory=dict)
    hookable: dict[str, bool] = field(default_factory=dict)  # block -> its attention can be routed

    # -- structure -------------------------------------------------------------------------
    def component_of(self, module_name: str) -> str | None:
        """Which component (image, text) a module belongs to, by its name."""
        for comp, prefixes in self.components.items():
            if any(_under(module_name, p) for p in prefixes):
                return comp
        return None

    def size_group_of(self, param_name: str) -> str:
        """``heads`` for a task head's parameter, else its component; what is in neither is a head."""
        if any(_under(param_name, p) for p in self.heads):
            return "heads"
        return self.component_of(param_name) or "heads"

    def blocks(self, component: str) -> list[str]:
        """Names of the transformer blocks of ``component``, in forward order."""
        return list(self.blocks_by_component.get(component, []))

    def block_roles(self, block_name: str) -> BlockRoles:
        return self.roles[block_name]

    def attention_hookable(self, block_name: str) -> bool:
        return self.hookable.get(block_name, False)

    # -- running ---------------------------------------------------------------------------
    def inputs(self, component: str) -> tuple[str, ...]:
        return COMPONENT_INPUTS.get(component, ())

    def run(self, model: nn.Module, component: str, batch: dict):
        """Run one batch (a dict of keyword arguments) through ``component``; a batch without that
        component's inputs is skipped (None)."""
        if not all(k in batch for k in self.inputs(component)):
            return None
        from ..tensors import device_of, dtype_of, to_device

        batch = to_device(batch, device_of(model), dtype_of(model))
        extra = {k: batch[k] for k in OPTIONAL_INPUTS.get(component, ()) if k in batch}
        if component == "image":
            return self.encode_image(model, batch["pixel_values"], **extra)
        if component == "text":
            mask = extra.pop("attention_mask", None)
            return self.encode_text(model, batch["input_ids"], mask, **extra)
        raise ModelError(f"{self.name} has no component {component!r}", hint=f"components: {', '.join(self.components)}")

    def runner(self, model: nn.Module, component: str) -> Callable[[dict], object]:
        return lambda batch: self.run(model, component, batch)

    def encode_image(self, model: nn.Module, pixel_values: torch.Tensor, **extra) -> torch.Tensor:
        model = unwrap(model)
        if hasattr(model, "get_image_features"):
            return _first_output(model.get_image_features(pixel_values=pixel_values, **extra))
        out = model(pixel_values=pixel_values, **extra)
        if hasattr(out, "logits") and out.logits is not None:
            return out.logits
        return _first_output(out)

    def encode_text(self, model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **extra) -> torch.Tensor:
        model = unwrap(model)
        if hasattr(model, "get_text_features"):
            return _first_output(model.get_text_features(input_ids=input_ids, attention_mask=attention_mask, **extra))
        out = model(input_ids=input_ids, attention_mask=attention_mask, **extra)
        if getattr(out, "text_embeds", None) is not None:
            return out.text_embeds
        # Sentence encoders such as all-MiniLM-L6-v2 were trained with mean pooling, not BERT's pooler.
        return _mean_pool(out.last_hidden_state, attention_mask)

    def extra_pre_ln(self, model: nn.Module, component: str) -> list[tuple[str, list[str]]]:
        """LayerNorms outside the blocks whose output feeds only a linear (Swin's patch merging:
        ``norm`` then ``reduction``): (LayerNorm, [linear]) pairs."""
        out = []
        for name, module in unwrap(model).named_modules():
            kids = dict(module.named_children())
            if set(kids) >= {"norm", "reduction"} and isinstance(kids["norm"], nn.LayerNorm) and isinstance(kids["reduction"], nn.Linear) \
                    and self.component_of(name) == component and not any(_under(name, b) for b in self.blocks(component)):
                out.append((f"{name}.norm" if name else "norm", [f"{name}.reduction" if name else "reduction"]))
        return out

    def hook_attention(self, model: nn.Module) -> None:
        """Route attention through vitq's quantizable eager attention (models/attention.py)."""
        from .attention import use_quant_attention

        model = unwrap(model)
        if hasattr(model, "set_attn_implementation"):  # a transformers model; others keep their own attention
            use_quant_attention(model)


def _forward_inputs(model: nn.Module) -> set[str]:
    try:
        return set(inspect.signature(model.forward).parameters)
    except (TypeError, ValueError):
        return set()


def _towers(model: nn.Module) -> tuple[dict[str, tuple[str, ...]], tuple[str, ...]]:
    """Components (prefixes) and heads, from what the top-level children contain."""
    children = dict(model.named_children())
    kinds: dict[str, set[str]] = {}
    for name, child in children.items():
        found = set()
        signature = _forward_inputs(child)  # a tower's forward names its input (SigLIP2 embeds patches with a Linear)
        if "pixel_values" in signature:
            found.add("image")
        if "input_ids" in signature:
            found.add("text")
        for sub_name, sub in child.named_modules():
            if _is_patch_conv(sub):
                found.add("image")
            if is_token_table(sub_name or name, sub):
                found.add("text")
        kinds[name] = found
    has = set().union(*kinds.values()) if kinds else set()
    params = [n for n, _ in model.named_parameters(recurse=False)]
    if has == {"image", "text"} and all(len(k) <= 1 for k in kinds.values()):
        comps: dict[str, list[str]] = {"image": [], "text": []}
        for name, found in kinds.items():
            if found:
                comps[next(iter(found))].append(name)
            elif any(w in name for w in ("visual", "vision", "image")):
                comps["image"].append(name)
            elif "text" in name:
                comps["text"].append(name)
        heads = tuple(n for n in children if not kinds[n]) + tuple(params)
        return {c: tuple(p) for c, p in comps.items()}, heads
    heads = tuple(n for n, c in children.items() if n in _HEAD_NAMES or (isinstance(c, nn.Linear) and not kinds.get(n))) + tuple(
        p for p in params if p in _HEAD_NAMES)
    if has == {"image"} or (not has and "pixel_values" in _forward_inputs(model)):
        return {"image": ("",)}, heads
    if has == {"text"} or (not has and "input_ids" in _forward_inputs(model)):
        return {"text": ("",)}, heads
    raise ModelError(
        f"vitq cannot tell the image or text tower of a {type(model).__name__}",
        hint="vitq finds towers by a patch-embedding convolution (images) or a token-embedding table (text); "
             "tested transformers classes: " + ", ".join(SUPPORTED_CLASSES),
    )


def adapter_of(model: nn.Module) -> ModelAdapter:
    """The adapter of a model instance, found from its structure (see the module docstring)."""
    model = unwrap(model)
    from .unet import is_unet, unet_adapter

    if is_unet(model):  # a diffusers UNet: its own adapter (models/unet.py)
        return unet_adapter(model)
    components, heads = _towers(model)
    adapter = ModelAdapter(name=getattr(getattr(model, "config", None), "model_type", None) or type(model).__name__,
                           components=components, heads=heads)
    claimed: list[str] = []
    for name, module in model.named_modules():
        if any(_under(name, b) and name != b for b in claimed):
            continue  # inside a block already found
        roles = block_roles_of(module)
        comp = adapter.component_of(name)
        if roles is None or comp is None:
            continue
        claimed.append(name)
        adapter.blocks_by_component.setdefault(comp, []).append(name)
        adapter.roles[name] = roles
        attention = module.get_submodule(roles.attention)
        adapter.hookable[name] = _attention_hookable(attention)
    return adapter


def describe_adapter(adapter: ModelAdapter) -> dict:
    """A JSON-able summary: components, heads, blocks per component and one block's roles."""
    first = {c: adapter.roles[b[0]] for c, b in adapter.blocks_by_component.items() if b and b[0] in adapter.roles}
    return {"name": adapter.name, "components": {c: list(p) for c, p in adapter.components.items()}, "heads": list(adapter.heads),
            "blocks": {c: len(b) for c, b in adapter.blocks_by_component.items()},
            "roles": {c: {k: v for k, v in r.__dict__.items() if v} for c, r in first.items()}}


__all__ = ["BlockRoles", "ModelAdapter", "adapter_of", "register_block_roles", "describe_adapter", "unwrap", "replace"]
