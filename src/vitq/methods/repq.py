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
   layer-wise with (s~, z~) and the changed weights are calibrated again.
3. Post-Softmax: log-sqrt2 becomes log2 with a parity-dependent de-quantization scale
   (Eq. 18-20, :mod:`vitq.quant.log`), which needs only bit shifts at inference.

Options (:class:`RepQOptions`) select the ablations of the paper's Tables 4 and 5:
``post_ln`` = ``reparam`` (default), ``channel`` (keep channel-wise), ``layer`` (layer-wise from the
start); ``softmax`` = ``reparam`` (default), ``logsqrt2``, ``log2``; and the calibration:
``sequential`` (default true, as the official code: each quantizer is initialised on inputs that
went through every quantizer before it), ``percentiles`` and ``max_samples`` of the search.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..config import QuantConfig
from ..models.prepare import prepare
from ..nn import QuantLayerNorm, QuantLinear, TensorQuantizer
from . import register
from .common import as_batches, calibrate, observer_settings
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

    CHOICES = {"post_ln": POST_LN_MODES, "softmax": SOFTMAX_MODES}
    HELP = {
        "post_ln": "post-LayerNorm quantizer: reparam (channel-wise calibration, layer-wise inference), channel, layer",
        "softmax": "post-Softmax quantizer: reparam (log-sqrt2 as shift-only log2), logsqrt2, log2",
        "sequential": "calibrate in forward order on quantized inputs, as the official code (false: all at once on float)",
        "percentiles": "clipping percentiles the range search chooses from",
        "max_samples": "values kept (a uniform sample over all batches) to score the candidates",
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
    return {
        "weight": dict(bits=cfg.w_bits, symmetric=False, axis=0, **search),
        "input": act,
        "patch_input": dict(act, bits=8),
        "post_ln": dict(act, axis=None if post_ln == "layer" else -1),
        "post_gelu": act,
        "attn_q": attn,
        "attn_k": attn,
        "attn_v": attn,
        "softmax": dict(attn, kind="log2" if softmax == "log2" else "logsqrt2"),
    }


@torch.no_grad()
def reparameterize_post_ln(model: nn.Module, ln_name: str, consumers: list[str]) -> None:
    """Fold a channel-wise post-LayerNorm quantizer into the LayerNorm and the linears it feeds."""
    ln = model.get_submodule(ln_name)
    point = ln.output_quantizer
    if point is None or point.axis is None or ln.weight is None:
        return
    s, z = point.quantizer.scale.detach().clone(), point.quantizer.zero_point.detach().clone()
    s_mean, z_mean = s.mean(), torch.round(z.mean())
    r1 = s / s_mean
    b = (-z * s) / r1 + z_mean * s_mean
    ln.weight.div_(r1)
    if ln.bias is None:
        ln.bias = nn.Parameter(torch.zeros_like(ln.weight))
    ln.bias.div_(r1).sub_(b)
    for name in consumers:
        linear = model.get_submodule(name)
        linear.weight.mul_(r1)  # scales input channel c by r1[c]
        shift = linear.weight @ b
        if linear.bias is None:
            linear.bias = nn.Parameter(shift)
        else:
            linear.bias.add_(shift)
        if isinstance(linear, QuantLinear):
            linear.calibrate_weight()
    layer_wise = TensorQuantizer(bits=point.bits, symmetric=False, axis=None, observer=point.observer_name)
    layer_wise.role = point.role
    layer_wise.quantizer.set_params(s_mean.reshape(1), z_mean.reshape(1))
    layer_wise.mode = point.mode
    ln.output_quantizer = layer_wise


def reparameterize_softmax(model: nn.Module) -> int:
    """Turn every log-sqrt2 post-Softmax quantizer into its shift-only log2 form; returns how many."""
    count = 0
    for m in model.modules():
        if isinstance(m, TensorQuantizer) and m.kind == "logsqrt2":
            m.quantizer.kind = "log2_parity"
            count += 1
    return count


@register("repq-vit", "repq", options=RepQOptions)
def repq_vit(model, calib, cfg: QuantConfig, opts: RepQOptions, progress: bool = True):
    """RepQ-ViT: scale reparameterization of post-LayerNorm and post-Softmax quantizers."""
    post_ln, softmax = opts.post_ln, opts.softmax
    summary = prepare(model, repq_scheme(cfg, opts), cfg.components, cfg.exclude)
    calibrate(model, as_batches(calib), summary["components"], progress=progress, sequential=opts.sequential)
    if post_ln == "reparam":
        for ln_name, consumers in summary["post_ln_consumers"].items():
            if isinstance(model.get_submodule(ln_name), QuantLayerNorm):
                reparameterize_post_ln(model, ln_name, consumers)
    if softmax == "reparam":
        reparameterize_softmax(model)
    summary["repq"] = {"post_ln": post_ln, "softmax": softmax}
    summary["calibration"] = "sequential" if opts.sequential else "parallel"
    return model, summary
