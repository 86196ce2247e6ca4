"""Put quantization points into a transformers model, by module type and role.

A *scheme* maps each role to the settings of its quantizer (``None``: leave that role in float):

- ``weight``: every Linear/Conv2d weight
- ``post_ln``: post-LayerNorm activations (inputs of q, k, v and fc1; Swin's patch-merging reduction)
- ``post_gelu``: inputs of fc2
- ``attn_q``, ``attn_k``: the two inputs of q·kᵀ
- ``softmax``, ``attn_v``: the two inputs of softmax·v
- ``patch_input``: the input of the patch-embedding Conv2d (falls back to ``input`` when absent)
- ``input``: the input of every other Linear/Conv2d (attention output, heads)
- ``embedding``: the rows of a text tower's token-embedding table (a weight: per row, no input point)

FQ-ViT's fuller scope adds (``None`` in vitq's own schemes):

- ``attn_scores``: the scaled q·kᵀ scores entering the Softmax
- ``linear_out``: the outputs of the attention output projection, fc2 and the patch embedding
- ``residual``: the residual sums: each pre-LN block's output and the input of its second
  LayerNorm (post-LN blocks: the inputs of their LayerNorms). Inside a pre-LN block the sum also
  continues, unquantized, along the residual path, which transformers computes inside the block's
  forward where no module sees it: a documented difference from FQ-ViT.
- ``embed``: the output of each embedding layer (patches, class token and positions summed)

``prepare`` returns a summary whose ``post_ln_consumers`` maps each quantized LayerNorm to the
linears it feeds: what a scale reparameterization (RepQ-ViT) folds into.
"""

from __future__ import annotations

from fnmatch import fnmatch

from torch import nn

from ..config import FULL_PRECISION_BITS, WEIGHT_ROLES, BitPlan
from ..errors import ConfigError, ModelError
from ..nn import QuantConv2d, QuantEmbedding, QuantLayerNorm, QuantLinear, QuantMatMul, TensorQuantizer
from ..nn.modules import attach_output_point
from .adapter import ModelAdapter, is_token_table, unwrap
from .families import family_of

ROLES = ("weight", "embedding", "input", "patch_input", "post_ln", "post_gelu", "attn_q", "attn_k", "softmax", "attn_v",
         "attn_scores", "linear_out", "residual", "embed")


def make_point(scheme: dict, role: str, layer: str | None = None, plan: BitPlan | None = None) -> TensorQuantizer | None:
    """The point of ``role`` from the scheme; a bit plan may give ``layer`` other bits."""
    settings = scheme.get(role)
    if settings is None:
        return None
    bits = plan.bits_for(layer, role) if plan and layer is not None else None
    if bits is not None:
        settings = dict(settings, bits=bits)
    if settings.get("bits", 8) >= FULL_PRECISION_BITS:  # A32: this role stays in full precision
        return None
    return TensorQuantizer(**settings, role="weight" if role in WEIGHT_ROLES else role)  # a table's rows are a weight


def _join(prefix: str, rel: str) -> str:
    return f"{prefix}.{rel}" if prefix else rel


def _excluded(name: str, patterns) -> bool:
    return any(fnmatch(name, p) for p in patterns)


def resolve_components(family: ModelAdapter, requested) -> tuple[str, ...]:
    available = tuple(family.components)
    if family.kind == "unet":  # a UNet is one component, whatever the (image/text) request says
        return available
    chosen = tuple(c for c in requested if c in available)
    if not chosen:
        raise ConfigError(
            f"a {family.name} model has no {' or '.join(requested)} component",
            hint=f"choose from: {', '.join(available)}",
        )
    return chosen


def quantizable_blocks(model: nn.Module, components) -> list[str]:
    """The transformer blocks of the selected components, or a ModelError saying none were found."""
    family = family_of(model)
    blocks = [b for c in components for b in family.blocks(c)]
    if not blocks:
        raise ModelError(
            f"vitq found no transformer blocks in the {', '.join(components)} component(s) of this {type(unwrap(model)).__name__}",
            hint="vitq recognises blocks by an attention module (q/k/v or qkv linears) and an MLP (fc1/fc2); "
                 "for another layout, register it: vitq.models.adapter.register_block_roles(BlockClass, {...})",
        )
    return blocks


def prepare(model: nn.Module, scheme: dict, components=("image", "text"), exclude=(), bit_plan: BitPlan | dict | None = None,
            share_post_ln: bool = True) -> dict:
    """Insert quantization points in place; returns a summary (family, components, points).

    ``bit_plan`` (a :class:`vitq.config.BitPlan` or its dict) gives chosen layers other bits.
    ``share_post_ln=False`` gives every linear fed by a LayerNorm its own input point (each layer its
    own interval, as Liu et al. 2021 search them) instead of one point on the LayerNorm's output."""
    plan = bit_plan if isinstance(bit_plan, BitPlan) else BitPlan(bit_plan)
    point = lambda role, layer: make_point(scheme, role, layer, plan)  # noqa: E731
    unknown = set(scheme) - set(ROLES)
    if unknown:
        raise ValueError(f"unknown roles in scheme: {sorted(unknown)}; roles are {ROLES}")
    model = unwrap(model)
    family = family_of(model)
    if family.kind == "unet":
        from .unet import prepare_unet

        return prepare_unet(model, scheme, exclude, plan, split_shortcuts=False)  # the split is Q-Diffusion's own
    comps = resolve_components(family, components)
    blocks = quantizable_blocks(model, comps)
    family.hook_attention(model)
    unroutable = [b for b in blocks if not family.attention_hookable(b)]

    def selected(name: str) -> bool:
        return family.component_of(name) in comps and not _excluded(name, exclude)

    modules = dict(model.named_modules())
    input_role: dict[str, str | None] = {}  # linear name -> role of its input (None: covered upstream)
    consumers_of: dict[str, list[str]] = {}  # quantized LayerNorm -> the linears it feeds

    def quantize_ln(ln_name: str, consumers: list[str]) -> None:
        ln = modules[ln_name]
        if not isinstance(ln, nn.LayerNorm) or scheme.get("post_ln") is None:
            return
        if not share_post_ln or not all(selected(c) for c in consumers) or not selected(ln_name):
            for c in consumers:  # some consumer stays in float: each quantized consumer takes its own input point
                input_role[c] = "post_ln"
            return
        model.set_submodule(ln_name, QuantLayerNorm.from_float(ln, point("post_ln", consumers[0])))
        consumers_of[ln_name] = list(consumers)
        for c in consumers:
            input_role[c] = None

    outputs: list[str] = []  # layers whose output is quantized (linear_out)
    residual_lns: list[str] = []  # LayerNorms whose input is a residual sum
    residual_blocks: list[str] = []  # pre-LN blocks, whose output is a residual sum
    for name in blocks:
        roles = family.block_roles(name)
        p = lambda rel: _join(name, rel)  # noqa: E731
        qkv = [p(r) for r in roles.qkv_linears]
        if roles.ln_attn:
            quantize_ln(p(roles.ln_attn), qkv)
        else:
            input_role.update({n: "post_ln" for n in qkv})
        if roles.ln_mlp:
            quantize_ln(p(roles.ln_mlp), [p(roles.fc1)])
        else:
            input_role[p(roles.fc1)] = "post_ln"
        input_role[p(roles.fc2)] = "post_gelu"
        attn_name = p(roles.attention)
        if selected(attn_name) and family.attention_hookable(name):
            attn = modules[attn_name]
            attn.vitq_qk = QuantMatMul(point("attn_q", attn_name), point("attn_k", attn_name))
            attn.vitq_pv = QuantMatMul(point("softmax", attn_name), point("attn_v", attn_name))
            if scheme.get("attn_scores") is not None:
                attn.vitq_scores = point("attn_scores", attn_name)
        outputs += [p(roles.out), p(roles.fc2)]
        if roles.ln_attn:
            residual_lns.append(p(roles.ln_mlp))
            residual_blocks.append(name)
        else:
            residual_lns += [p(r) for r in roles.residual_lns]

    for comp in comps:
        for ln_name, consumers in family.extra_pre_ln(model, comp):
            quantize_ln(ln_name, consumers)

    for name, module in list(modules.items()):
        if not selected(name) or type(module) not in (nn.Linear, nn.Conv2d):
            continue
        default = "patch_input" if isinstance(module, nn.Conv2d) and scheme.get("patch_input") else "input"
        role = input_role.get(name, default)
        wrapper = QuantLinear if isinstance(module, nn.Linear) else QuantConv2d
        new = wrapper.from_float(module, point("weight", name), point(role, name) if role else None)
        if scheme.get("linear_out") is not None and (name in outputs or isinstance(module, nn.Conv2d)):
            new.output_quantizer = point("linear_out", name)
        model.set_submodule(name, new)

    if scheme.get("embedding") is not None:
        for name, module in list(model.named_modules()):
            if type(module) is nn.Embedding and is_token_table(name, module) and selected(name):
                wq = point("embedding", name)
                if wq is not None:
                    model.set_submodule(name, QuantEmbedding.from_float(module, wq))

    if scheme.get("residual") is not None:
        for ln_name in residual_lns:
            ln = model.get_submodule(ln_name)
            if not selected(ln_name) or not isinstance(ln, nn.LayerNorm):
                continue
            if not isinstance(ln, QuantLayerNorm):
                ln = QuantLayerNorm.from_float(ln)
                model.set_submodule(ln_name, ln)
            ln.input_quantizer = point("residual", ln_name)
        for block_name in residual_blocks:
            if selected(block_name):
                attach_output_point(model.get_submodule(block_name), point("residual", block_name))
    if scheme.get("embed") is not None:
        for name, module in list(model.named_modules()):
            kind = type(module).__name__
            if kind.endswith("Embeddings") and "Patch" not in kind and selected(name):
                attach_output_point(module, point("embed", name))

    summary = {"family": family.name, "components": list(comps), "post_ln_consumers": consumers_of}
    if unroutable:
        # The attention of these blocks does not call transformers' attention registry (BLIP's
        # vision tower): q·kᵀ and softmax·v stay in float there; say so in every result.
        summary["float_attention"] = unroutable
    return summary
