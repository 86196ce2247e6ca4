"""RepQ-ViT (Li et al., ICCV 2023): scale reparameterization of post-LayerNorm and post-Softmax
quantizers.

Calibration uses quantizers that fit the data; inference uses simple ones; an exact
reparameterization links the two:

1. Initial calibration (32 images by default): channel-wise asymmetric quantizers for
   post-LayerNorm activations, a log-sqrt2 quantizer for post-Softmax attention, channel-wise
   weights, layer-wise everything else. Ranges come from RepQ-ViT's percentile search
   (:class:`vitq.quant.observers.PercentileSearchObserver`); the patch-embedding input is 8-bit.
2. Post-LayerNorm: with per-channel (s, z), mean scale s~ and mean zero-point z~ (rounded, so the
   layer-wise quantizer stays integer and reproduces the channel-wise codes exactly),
   r1 = s / s~ and r2 = b = (-z*s)/r1 + z~*s~ (Eq. 15, 17). LayerNorm: gamma/r1, beta/r1 - b.
   Next linear: W*r1 (per input channel), bias + (W*r1) b. Then the activation is quantized
   layer-wise with (s~, z~) and the changed weights are calibrated again. Where the LayerNorm
   output also feeds a residual (post-LN blocks: BERT) or a layer kept in float, the LayerNorm
   stays as it is and each quantized consumer gets X / r1 - b as an explicit per-channel
   multiply-add on its input (:class:`vitq.nn.modules.InputAffine`): the same codes, one extra
   float op that the runtime executes.
3. Post-Softmax: log-sqrt2 becomes log2 with a parity-dependent de-quantization scale
   (Eq. 18-20, :mod:`vitq.quant.log`), which needs only bit shifts at inference.

Options (:class:`RepQOptions`) select the ablations of the paper's Tables 4 and 5:
``post_ln`` = ``reparam`` (default), ``channel`` (keep channel-wise), ``layer`` (layer-wise from the
start); ``softmax`` = ``reparam`` (default), ``logsqrt2``, ``log2``; and the calibration:
``sequential`` (default true, as the official code: each quantizer is initialised on inputs that
went through every quantizer before it), ``percentiles`` and ``max_samples`` of the search; and,
for deployment, ``symmetric_attention`` (signed q/k/v; as in the baselines, signed by default where
attention has 8 bits).
"""

from __future__ import annotations

import typing
from dataclasses import dataclass

import torch
from torch import nn

from ..config import QuantConfig
from ..models.prepare import prepare
from ..nn import QuantConv2d, QuantLayerNorm, QuantLinear, TensorQuantizer
from ..nn.modules import InputAffine
from . import MethodResult, register
from .common import as_batches, calibrate, embedding_settings, observer_settings, qkv_settings
from .options import MethodOptions

POST_LN_MODES = ("reparam", "channel", "layer")
SOFTMAX_MODES = ("reparam", "logsqrt2", "log2")


@dataclass(frozen=True)
class RepQOptions(MethodOptions):
    post_ln: str = "reparam"
    softmax: str = "reparam"
    sequential: bool = True
    percentiles: tuple[float, ...] = (99.9, 99.99, 99.999)
    max_samples: int = 1 << 18
    symmetric_attention: typing.Optional[bool] = None  # None: signed at 8-bit attention (common.qkv_settings)

    CHOICES = {"post_ln": POST_LN_MODES, "softmax": SOFTMAX_MODES}
    HELP = {
        "post_ln": "post-LayerNorm quantizer: reparam (channel-wise calibration, layer-wise inference), channel, layer",
        "softmax": "post-Softmax quantizer: reparam (log-sqrt2 as shift-only log2), logsqrt2, log2",
        "sequential": "calibrate in forward order on quantized inputs, as the official code (false: all at once on float)",
        "percentiles": "clipping percentiles the range search chooses from",
        "max_samples": "values kept (a uniform sample over all batches) to score the candidates",
        "symmetric_attention": "signed q, k, v (zero-point 0; OpenVINO runs attention in int8 only then): "
                               "true, false, or none (the default: signed where attention has 8 bits)",
    }

    def __post_init__(self):
        super().__post_init__()
        from ..quant.observers import make_observer

        make_observer("pct_search", percentiles=self.percentiles, max_samples=self.max_samples)


def repq_scheme(cfg: QuantConfig, opts: RepQOptions) -> dict:
    post_ln, softmax = opts.post_ln, opts.softmax
    search = observer_settings("pct_search", cfg.seed, percentiles=opts.percentiles, max_samples=opts.max_samples)
    act = dict(bits=cfg.a_bits, symmetric=False, axis=None, **search)
    attn = dict(act, bits=cfg.attn_bits)
    qkv = qkv_settings(attn, opts)
    return {
        "weight": dict(bits=cfg.w_bits, symmetric=False, axis=0, **search),
        "embedding": embedding_settings(cfg),
        "input": act,
        "patch_input": dict(act, bits=8),
        "post_ln": dict(act, axis=None if post_ln == "layer" else -1),
        "post_gelu": act,
        "attn_q": qkv,
        "attn_k": qkv,
        "attn_v": qkv,
        "softmax": dict(attn, kind="log2" if softmax == "log2" else "logsqrt2"),
    }


def _layer_wise_params(point: TensorQuantizer):
    """RepQ-ViT's Eq. 15/17 for a channel-wise point (s, z): the layer-wise (s~, z~) and the
    per-channel (r1, b) with X' = X / r1 - b, whose layer-wise codes equal the channel-wise codes of X."""
    s, z = point.quantizer.scale.detach().clone(), point.quantizer.zero_point.detach().clone()
    s_mean, z_mean = s.mean(), torch.round(z.mean())
    r1 = s / s_mean
    b = (-z * s) / r1 + z_mean * s_mean
    return s_mean, z_mean, r1, b


def _absorb_into_consumer(layer: nn.Module, r1: torch.Tensor, b: torch.Tensor) -> None:
    """The next linear takes X' = X / r1 - b: W·r1 per input channel, bias + (W·r1)·b."""
    # in float32 whatever the model's dtype, so a bf16 model is rounded once, not at every step
    weight = layer.weight.float() * r1
    shift = weight @ b
    layer.weight.copy_(weight)
    if layer.bias is None:
        layer.bias = nn.Parameter(shift.to(layer.weight.dtype))
    else:
        layer.bias.copy_(layer.bias.float() + shift)
    if isinstance(layer, QuantLinear):
        layer.calibrate_weight()


def _layer_wise_point(point: TensorQuantizer, s_mean, z_mean) -> TensorQuantizer:
    layer_wise = TensorQuantizer(bits=point.bits, symmetric=False, axis=None, observer=point.observer_name,
                                 observer_options=point.observer_options, role=point.role)
    layer_wise.quantizer.set_params(s_mean.reshape(1), z_mean.reshape(1))
    layer_wise.mode = point.mode
    return layer_wise


@torch.no_grad()
def reparameterize_post_ln(model: nn.Module, ln_name: str, consumers: list[str]) -> None:
    """Fold a channel-wise post-LayerNorm quantizer into the LayerNorm and the linears it feeds."""
    ln = model.get_submodule(ln_name)
    point = ln.output_quantizer
    if point is None or point.axis is None or ln.weight is None:
        return
    s_mean, z_mean, r1, b = _layer_wise_params(point)
    if ln.bias is None:
        ln.bias = nn.Parameter(torch.zeros_like(ln.weight))
    ln.bias.copy_(ln.bias.float() / r1 - b)
    ln.weight.copy_(ln.weight.float() / r1)
    for name in consumers:
        _absorb_into_consumer(model.get_submodule(name), r1, b)
    ln.output_quantizer = _layer_wise_point(point, s_mean, z_mean)


@torch.no_grad()
def reparameterize_input(model: nn.Module, layer_name: str) -> None:
    """The same reparameterization where the LayerNorm cannot take it: its output also feeds a
    residual (post-LN blocks: BERT) or a layer kept in float. The linear gets its own
    X' = X / r1 - b (an :class:`InputAffine`, one per-channel multiply-add in float), a layer-wise
    input quantizer, and W·r1, bias + (W·r1)·b. Its codes equal the channel-wise codes exactly."""
    layer = model.get_submodule(layer_name)
    point = layer.input_quantizer
    s_mean, z_mean, r1, b = _layer_wise_params(point)
    affine = InputAffine(r1.numel()).to(r1.device)
    affine.scale.copy_(1.0 / r1)
    affine.shift.copy_(-b)
    layer.input_affine = affine
    _absorb_into_consumer(layer, r1, b)
    layer.input_quantizer = _layer_wise_point(point, s_mean, z_mean)


def channel_wise_inputs(model: nn.Module) -> list[str]:
    """Layers whose own input point is channel-wise (post-LN points not taken by a LayerNorm)."""
    return [n for n, m in model.named_modules() if isinstance(m, (QuantLinear, QuantConv2d))
            and m.input_quantizer is not None and m.input_quantizer.axis is not None and m.input_quantizer.kind == "uniform"]


def reparameterize_softmax(model: nn.Module) -> int:
    """Turn every log-sqrt2 post-Softmax quantizer into its shift-only log2 form; returns how many."""
    count = 0
    for m in model.modules():
        if isinstance(m, TensorQuantizer) and m.kind == "logsqrt2":
            m.quantizer = m.quantizer.to_parity()
            count += 1
    return count


@register("repq-vit", "repq", options=RepQOptions)
def repq_vit(model, calib, cfg: QuantConfig, opts: RepQOptions, progress: bool = True):
    """RepQ-ViT: scale reparameterization of post-LayerNorm and post-Softmax quantizers."""
    post_ln, softmax = opts.post_ln, opts.softmax
    summary = prepare(model, repq_scheme(cfg, opts), cfg.components, cfg.exclude, cfg.plan)
    calibrate(model, as_batches(calib), summary["components"], progress=progress, sequential=opts.sequential)
    affines = 0
    if post_ln == "reparam":
        for ln_name, consumers in summary["post_ln_consumers"].items():
            if isinstance(model.get_submodule(ln_name), QuantLayerNorm):
                reparameterize_post_ln(model, ln_name, consumers)
        for name in channel_wise_inputs(model):
            reparameterize_input(model, name)
            affines += 1
    if softmax == "reparam":
        reparameterize_softmax(model)
    return model, MethodResult.from_prepare(summary, calibration="sequential" if opts.sequential else "parallel",
                                            details={"repq": {"post_ln": post_ln, "softmax": softmax, "input_affines": affines}})
