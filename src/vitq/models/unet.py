"""The ModelAdapter of diffusers UNets (``UNet2DModel``, ``UNet2DConditionModel``), found by
structure: a model with ``conv_in``, ``down_blocks``, ``up_blocks`` and ``conv_out`` whose forward
takes ``sample`` and ``timestep``.

- One component, ``unet``, read from batch keys ``sample`` and ``timestep`` (and, where given,
  ``encoder_hidden_states``, ``class_labels``, ``added_cond_kwargs``): a batch is a dict of the
  UNet's own keyword arguments, and running it returns the predicted noise.
- **Blocks** (the units block reconstruction learns one at a time, as Q-Diffusion does): every
  residual block (``ResnetBlock2D``: norm1, conv1, time_emb_proj, norm2, conv2), every transformer
  block of a ``Transformer2DModel`` (self-attention, cross-attention, feed-forward), and every
  stand-alone attention module (``UNet2DModel``'s spatial self-attention); in the order a forward
  pass reaches them. What lies outside them (conv_in, the time embedding, down- and up-samplers,
  Transformer2DModel's proj_in/proj_out, conv_out) is quantized and reconstructed layer by layer.
- **Attention**: each diffusers ``Attention`` module gets :class:`QuantAttnProcessor`, which
  computes q·kᵀ and softmax·v through the module's ``vitq_qk``/``vitq_pv`` QuantMatMuls.
- **Skip concatenations**: each up-block residual block reads ``cat([h, skip])``;
  :func:`skip_splits` gives, for the layer that consumes that concatenation directly (the 1x1
  ``conv_shortcut``), the channel where ``h`` ends and the skip begins (Q-Diffusion's split).

:func:`prepare_unet` puts the quantization points in (see :mod:`vitq.models.prepare` for the roles).
"""

from __future__ import annotations

from fnmatch import fnmatch

import torch
from torch import nn

from ..config import BitPlan
from ..errors import ModelError
from ..nn import QuantConv2d, QuantLinear, QuantMatMul, SplitQuantConv2d
from ..nn.split import split_points
from .adapter import ModelAdapter, unwrap

COMPONENT = "unet"
INPUTS = ("sample", "timestep")
OPTIONAL = ("encoder_hidden_states", "class_labels", "timestep_cond", "added_cond_kwargs", "encoder_attention_mask")


def is_unet(model: nn.Module) -> bool:
    model = unwrap(model)
    return all(hasattr(model, a) for a in ("conv_in", "down_blocks", "up_blocks", "conv_out"))


def _is_resnet(m: nn.Module) -> bool:
    return all(isinstance(getattr(m, a, None), nn.Conv2d) for a in ("conv1", "conv2")) and hasattr(m, "norm1")


def _is_attention(m: nn.Module) -> bool:
    return all(isinstance(getattr(m, a, None), nn.Linear) for a in ("to_q", "to_k", "to_v")) and hasattr(m, "to_out")


def _is_transformer_block(m: nn.Module) -> bool:
    return _is_attention(getattr(m, "attn1", None) or nn.Module()) and hasattr(m, "ff")


def _order_key(name: str) -> tuple:
    """Forward order of a UNet's modules: conv_in, time embedding, down path, middle, up path, out."""
    top = name.split(".")[0]
    rank = {"conv_in": 0, "time_proj": 1, "time_embedding": 1, "class_embedding": 1, "add_embedding": 1,
            "down_blocks": 2, "mid_block": 3, "up_blocks": 4}.get(top, 5)
    return (rank,)


def _blocks(model: nn.Module) -> list[str]:
    found: list[str] = []
    for name, m in model.named_modules():
        if any(name.startswith(b + ".") for b in found):
            continue
        if _is_resnet(m) or _is_transformer_block(m) or _is_attention(m):
            found.append(name)
    return _forward_order(model, found)


def _forward_order(model: nn.Module, names: list[str]) -> list[str]:
    """``names`` in forward order: by the UNet's stages, and inside a diffusers block its attention
    after the residual block it follows (``resnets.i`` then ``attentions.i``)."""
    def key(name: str):
        parts = name.split(".")
        numbers = [int(p) for p in parts if p.isdigit()]
        inner = 0 if "resnets" in parts else 1
        return (*_order_key(name), numbers[:1], numbers[1:2], inner, numbers[2:])

    return sorted(names, key=key)


class QuantAttnProcessor:
    """diffusers' eager attention with q·kᵀ and softmax·v through the module's QuantMatMuls
    (``vitq_qk``, ``vitq_pv``) when it has them; otherwise the same float computation."""

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, *args, **kwargs):
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        ndim = hidden_states.ndim
        if ndim == 4:
            batch, channels, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch, channels, height * width).transpose(1, 2)
        batch_size, length, _ = (hidden_states if encoder_hidden_states is None else encoder_hidden_states).shape
        attention_mask = attn.prepare_attention_mask(attention_mask, length, batch_size)
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        query = attn.to_q(hidden_states)
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states  # self-attention: after the norm
        if encoder_hidden_states is not None and attn.norm_cross:
            context = attn.norm_encoder_hidden_states(context)
        key, value = attn.to_k(context), attn.to_v(context)
        query, key, value = (attn.head_to_batch_dim(t) for t in (query, key, value))
        qk, pv = getattr(attn, "vitq_qk", None), getattr(attn, "vitq_pv", None)
        key_t = key.transpose(-1, -2)
        scores = (qk(query, key_t) if qk is not None else torch.bmm(query, key_t)) * attn.scale
        if attention_mask is not None:
            scores = scores + attention_mask
        probs = scores.float().softmax(dim=-1).to(query.dtype)
        out = pv(probs, value) if pv is not None else torch.bmm(probs, value)
        out = attn.batch_to_head_dim(out)
        out = attn.to_out[1](attn.to_out[0](out))
        if ndim == 4:
            out = out.transpose(-1, -2).reshape(batch, channels, height, width)
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor


class UNetAdapter(ModelAdapter):
    """The adapter of a diffusers UNet (see the module docstring)."""

    kind = "unet"

    def inputs(self, component: str) -> tuple[str, ...]:
        return INPUTS if component == COMPONENT else ()

    def run(self, model: nn.Module, component: str, batch: dict):
        if component != COMPONENT:
            raise ModelError(f"a UNet has no component {component!r}", hint="its one component is unet")
        if not all(k in batch for k in INPUTS):
            return None
        from ..tensors import device_of, dtype_of, to_device

        batch = to_device(batch, device_of(model), dtype_of(model))
        kwargs = {k: batch[k] for k in INPUTS + OPTIONAL if k in batch}
        return unwrap(model)(**kwargs, return_dict=False)[0]

    def encode_image(self, model, pixel_values, **extra):
        raise ModelError("a diffusion UNet does not encode images", hint="evaluate it by sampling (vitq.eval.generation)")

    def encode_text(self, model, input_ids, attention_mask=None, **extra):
        raise ModelError("a diffusion UNet does not encode text", hint="evaluate it by sampling (vitq.eval.generation)")

    def extra_pre_ln(self, model, component):
        return []

    def hook_attention(self, model: nn.Module) -> None:
        for m in unwrap(model).modules():
            if _is_attention(m) and hasattr(m, "set_processor"):
                m.set_processor(QuantAttnProcessor())

    def example_inputs(self, model: nn.Module, batch: int = 1) -> dict:
        """Zero inputs of the model's own sample size, for cost accounting and tracing."""
        inner = unwrap(model)
        cfg = inner.config
        p = next(inner.parameters())
        out = {"sample": torch.zeros(batch, *sample_shape(inner), dtype=p.dtype, device=p.device),
               "timestep": torch.full((batch,), 500, device=p.device)}
        cross = getattr(cfg, "cross_attention_dim", None)
        if cross:
            out["encoder_hidden_states"] = torch.zeros(batch, 8, cross if isinstance(cross, int) else cross[0], dtype=p.dtype, device=p.device)
        return out


def sample_shape(model: nn.Module) -> tuple[int, int, int]:
    """(channels, height, width) of one sample the UNet denoises (``sample_size`` may be one int)."""
    cfg = unwrap(model).config
    size = cfg.sample_size
    height, width = (size, size) if isinstance(size, int) else tuple(size)[:2]
    return int(cfg.in_channels), int(height), int(width)


def unet_adapter(model: nn.Module) -> UNetAdapter:
    model = unwrap(model)
    blocks = _blocks(model)
    adapter = UNetAdapter(name=type(model).__name__, components={COMPONENT: ("",)}, heads=(),
                          blocks_by_component={COMPONENT: blocks})
    adapter.hookable = {b: True for b in blocks}
    return adapter


def _channels_entering_up(model: nn.Module, index: int) -> int:
    """Channels of the hidden state entering ``up_blocks[index]`` (the middle block's or the previous
    up-block's output)."""
    if index == 0:
        return model.mid_block.resnets[-1].out_channels
    return model.up_blocks[index - 1].resnets[-1].out_channels


def skip_splits(model: nn.Module) -> dict[str, int]:
    """Layer name -> the input channel where the skip connection begins, for each layer that reads an
    up-block's ``cat([h, skip])`` directly (the residual block's 1x1 ``conv_shortcut``)."""
    model = unwrap(model)
    out = {}
    for b, block in enumerate(model.up_blocks):
        previous = _channels_entering_up(model, b)
        for i, resnet in enumerate(getattr(block, "resnets", [])):
            shortcut = getattr(resnet, "conv_shortcut", None)
            if isinstance(shortcut, nn.Conv2d) and 0 < previous < resnet.in_channels:
                out[f"up_blocks.{b}.resnets.{i}.conv_shortcut"] = previous
            previous = resnet.out_channels
    return out


def first_and_last_layers(model: nn.Module) -> list[str]:
    """The layers that read the noisy sample and write the prediction (``conv_in``, ``conv_out``)."""
    model = unwrap(model)
    return [n for n in ("conv_in", "conv_out") if isinstance(getattr(model, n, None), (nn.Conv2d, nn.Linear))]


def prepare_unet(model: nn.Module, scheme: dict, exclude=(), bit_plan: BitPlan | None = None,
                 split_shortcuts: bool = True) -> dict:
    """Quantization points of a UNet: every Conv2d and Linear gets a ``weight`` point and an ``input``
    point (Q-Diffusion quantizes the input of every layer); each attention module the two inputs of
    q·kᵀ (``attn_q``, ``attn_k``) and of softmax·v (``softmax``, ``attn_v``). With
    ``split_shortcuts`` the layers that read a skip concatenation get a second input and weight
    point for the skip's channels (:class:`vitq.nn.SplitQuantConv2d`)."""
    from .prepare import make_point

    plan = bit_plan if isinstance(bit_plan, BitPlan) else BitPlan(bit_plan)
    model = unwrap(model)
    adapter = unet_adapter(model)
    adapter.hook_attention(model)
    excluded = lambda name: any(fnmatch(name, p) for p in exclude)  # noqa: E731
    point = lambda role, layer: make_point(scheme, role, layer, plan)  # noqa: E731
    splits = skip_splits(model) if split_shortcuts else {}
    split_done = []
    for name, m in list(model.named_modules()):
        if excluded(name):
            continue
        if _is_attention(m):
            m.vitq_qk = QuantMatMul(point("attn_q", name), point("attn_k", name))
            m.vitq_pv = QuantMatMul(point("softmax", name), point("attn_v", name))
        if type(m) not in (nn.Linear, nn.Conv2d):
            continue
        w, x = point("weight", name), point("input", name)
        if name in splits and (w is not None or x is not None):
            new = SplitQuantConv2d.from_float(m, w, x, splits[name], split_points(w), split_points(x))
            split_done.append(name)
        else:
            new = (QuantLinear if isinstance(m, nn.Linear) else QuantConv2d).from_float(m, w, x)
        model.set_submodule(name, new)
    summary = {"family": adapter.name, "components": [COMPONENT], "post_ln_consumers": {}}
    if split_done:
        summary["split_shortcuts"] = {n: splits[n] for n in split_done}
    return summary


def noise_prediction(model: nn.Module, sample: torch.Tensor, timestep, **conditioning) -> torch.Tensor:
    """The UNet's output (predicted noise) for one batch."""
    return unwrap(model)(sample, timestep, **conditioning, return_dict=False)[0]


__all__ = ["UNetAdapter", "QuantAttnProcessor", "is_unet", "unet_adapter", "skip_splits", "first_and_last_layers", "sample_shape", "prepare_unet", "noise_prediction"]
