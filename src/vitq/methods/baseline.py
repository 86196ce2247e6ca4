"""PTQ baselines of P4Q's Table 1: MinMax, EMA, Percentile and OMSE range estimation.

The four differ only in the activation range estimator (:mod:`vitq.quant.observers`, as FQ-ViT
defines them); weights use per-channel min/max in all four (FQ-ViT's ``OBSERVER_W``). Everything
else is P4Q's recipe (:func:`vitq.methods.common.baseline_scheme`). Options common to all four:
``symmetric_attention`` (signed q/k/v; by default signed where attention has 8 bits), ``sequential`` (calibrate in forward order on quantized
inputs instead of FQ-ViT's float activations).
"""

from __future__ import annotations

import typing
from dataclasses import dataclass

from ..config import QuantConfig
from ..errors import ConfigError
from ..models.prepare import prepare
from ..quant.observers import make_observer
from . import MethodResult, register
from .common import as_batches, baseline_scheme, calibrate
from .options import MethodOptions


@dataclass(frozen=True)
class BaselineOptions(MethodOptions):
    symmetric_attention: typing.Optional[bool] = None  # None: signed at 8-bit attention (common.qkv_settings)
    sequential: bool = False
    scope: str = "vitq"

    CHOICES = {"scope": ("vitq", "fqvit")}
    HELP = {
        "scope": "vitq: the inputs of linears and attention matmuls; fqvit: also FQ-ViT's pre-Softmax scores, "
                 "linear outputs, residual sums and embeddings",
        "symmetric_attention": "signed q, k, v (zero-point 0; OpenVINO runs attention in int8 only then): "
                               "true, false, or none (the default: signed where attention has 8 bits)",
        "sequential": "calibrate points in forward order on quantized inputs (FQ-ViT: all at once on float activations)",
        "momentum": "weight of the history in the moving average of batch ranges (FQ-ViT's sigma = 1 - momentum = 0.01)",
        "percentile": "percentile of each batch (and 100 - p for the minimum)",
        "steps": "number of shrink factors of [min, max] searched",
        "grid": "linear: FQ-ViT's 1, 0.99, ..., 0.11; geometric: down to 1/100",
        "max_samples": "values kept (a uniform sample over all batches) to score the candidates",
    }
    ESTIMATOR = "minmax"

    def __post_init__(self):
        super().__post_init__()
        extra = {k: getattr(self, k) for k in ("momentum", "percentile", "steps", "grid", "max_samples") if hasattr(self, k)}
        make_observer(self.ESTIMATOR, **extra)  # range errors now, not after the first calibration batch


@dataclass(frozen=True)
class EMAOptions(BaselineOptions):
    momentum: float = 0.99
    ESTIMATOR = "ema"


@dataclass(frozen=True)
class PercentileOptions(BaselineOptions):
    percentile: float = 99.999
    momentum: float = 0.99
    ESTIMATOR = "percentile"


@dataclass(frozen=True)
class OMSEOptions(BaselineOptions):
    steps: int = 90
    grid: str = "linear"
    max_samples: int = 1 << 18
    ESTIMATOR = "omse"


def _baseline(observer: str):
    def run(model, calib, cfg: QuantConfig, opts: BaselineOptions, progress: bool = True):
        scheme = baseline_scheme(cfg, observer, opts)
        summary = prepare(model, scheme, cfg.components, cfg.exclude, cfg.plan)
        calibrate(model, as_batches(calib), summary["components"], progress=progress, sequential=opts.sequential)
        return model, MethodResult.from_prepare(summary, calibration="sequential" if opts.sequential else "parallel", scope=opts.scope)

    run.__name__ = f"{observer}_baseline"
    run.__doc__ = f"P4Q/FQ-ViT baseline with the {observer} activation range estimator."
    return run


BOTH = ("transformer", "unet")  # the baselines quantize diffusion UNets too (Q-Diffusion's linear baseline)
register("minmax", options=BaselineOptions, models=BOTH)(_baseline("minmax"))
register("ema", options=EMAOptions, models=BOTH)(_baseline("ema"))
register("percentile", options=PercentileOptions, models=BOTH)(_baseline("percentile"))
register("omse", options=OMSEOptions, models=BOTH)(_baseline("omse"))

__all__ = ["BaselineOptions", "EMAOptions", "PercentileOptions", "OMSEOptions", "ConfigError"]
