"""PTQ baselines of P4Q's Table 1: MinMax, EMA, Percentile and OMSE range estimation.

The four differ only in the range estimator (:mod:`vitq.quant.observers`); everything else is
P4Q's recipe (:func:`vitq.methods.common.baseline_scheme`).
"""

from __future__ import annotations

from ..config import QuantConfig
from ..models.prepare import prepare
from . import register
from .common import as_batches, baseline_scheme, calibrate


def _baseline(observer: str):
    def run(model, calib, cfg: QuantConfig, progress: bool = True):
        scheme = baseline_scheme(cfg, observer, cfg.options)
        summary = prepare(model, scheme, cfg.components, cfg.exclude)
        calibrate(model, as_batches(calib), summary["components"], progress=progress)
        return model, summary

    run.__name__ = f"{observer}_baseline"
    run.__doc__ = f"P4Q baseline with the {observer} range estimator."
    return run


register("minmax")(_baseline("minmax"))
register("ema")(_baseline("ema"))
register("percentile")(_baseline("percentile"))
register("omse")(_baseline("omse"))
