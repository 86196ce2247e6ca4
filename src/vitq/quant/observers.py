"""Range estimators (observers): fed batch after batch, they propose a clipping range [lo, hi].

They are kept apart from the quantizers: an observer only sees data and returns per-channel (or
per-tensor) ranges; the quantizer turns a range into a scale and zero-point. OMSE is the one
observer that needs the quantizer's grid, so ``compute`` receives the quantizer.
"""

from __future__ import annotations

import torch

from .channels import channels_first


class Observer:
    """Base class: ``update(x)`` for each batch, then ``compute(quantizer) -> (lo, hi)``."""

    name = "observer"

    def __init__(self, axis: int | None = None):
        self.axis = axis
        self.batches = 0

    def update(self, x: torch.Tensor) -> None:
        self._update(channels_first(x.detach().float(), self.axis))
        self.batches += 1

    def _update(self, rows: torch.Tensor) -> None:
        raise NotImplementedError

    def compute(self, quantizer=None) -> tuple[torch.Tensor, torch.Tensor]:
        if self.batches == 0:
            raise RuntimeError(f"{self.name} observer saw no data: run calibration batches through the model first")
        return self._compute(quantizer)

    def _compute(self, quantizer):
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(axis={self.axis})"


class MinMaxObserver(Observer):
    """The smallest and largest value seen over all batches."""

    name = "minmax"

    def __init__(self, axis=None):
        super().__init__(axis)
        self.lo = self.hi = None

    def _update(self, rows):
        lo, hi = rows.amin(dim=1), rows.amax(dim=1)
        self.lo = lo if self.lo is None else torch.minimum(self.lo, lo)
        self.hi = hi if self.hi is None else torch.maximum(self.hi, hi)

    def _compute(self, quantizer):
        return self.lo, self.hi


class EMAObserver(Observer):
    """Exponential moving average of each batch's min and max (momentum weights the history)."""

    name = "ema"

    def __init__(self, axis=None, momentum: float = 0.9):
        super().__init__(axis)
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"EMA momentum must be in [0, 1), got {momentum}")
        self.momentum = momentum
        self.lo = self.hi = None

    def _update(self, rows):
        lo, hi = rows.amin(dim=1), rows.amax(dim=1)
        if self.lo is None:
            self.lo, self.hi = lo, hi
        else:
            m = self.momentum
            self.lo = m * self.lo + (1 - m) * lo
            self.hi = m * self.hi + (1 - m) * hi

    def _compute(self, quantizer):
        return self.lo, self.hi


def _row_quantiles(rows: torch.Tensor, q_lo: float, q_hi: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row lower and upper quantiles by order statistics (torch.quantile caps its input size)."""
    n = rows.shape[1]
    k_lo = min(max(int(round(q_lo * (n - 1))) + 1, 1), n)
    k_hi = min(max(int(round(q_hi * (n - 1))) + 1, 1), n)
    lo = rows.kthvalue(k_lo, dim=1).values
    hi = rows.kthvalue(k_hi, dim=1).values
    return lo, hi


class PercentileObserver(Observer):
    """The p-th and (100-p)-th percentiles of each batch, averaged over batches."""

    name = "percentile"

    def __init__(self, axis=None, percentile: float = 99.99):
        super().__init__(axis)
        if not 50.0 < percentile <= 100.0:
            raise ValueError(f"percentile must be in (50, 100], got {percentile}")
        self.percentile = percentile
        self.lo_sum = self.hi_sum = None

    def _update(self, rows):
        p = self.percentile / 100.0
        lo, hi = _row_quantiles(rows, 1.0 - p, p)
        self.lo_sum = lo if self.lo_sum is None else self.lo_sum + lo
        self.hi_sum = hi if self.hi_sum is None else self.hi_sum + hi

    def _compute(self, quantizer):
        return self.lo_sum / self.batches, self.hi_sum / self.batches


class OMSEObserver(Observer):
    """The clipping range that minimises the L2 quantization error (Choukroun et al. 2019).

    Keeps the running min/max and a bounded, seeded sample of values per channel (memory does not
    grow with the data), then searches shrink factors of [min, max] on the quantizer's own grid.
    """

    name = "omse"

    def __init__(self, axis=None, max_samples: int = 65536, steps: int = 100, seed: int = 0):
        super().__init__(axis)
        self.max_samples = max_samples
        self.steps = steps
        self.generator = torch.Generator().manual_seed(seed)
        self.minmax = MinMaxObserver(axis)
        self.samples: torch.Tensor | None = None

    def _update(self, rows):
        self.minmax._update(rows)
        self.minmax.batches += 1
        rows = self._subsample(rows, self.max_samples)
        self.samples = rows if self.samples is None else self._subsample(torch.cat([self.samples, rows], 1), self.max_samples)

    def _subsample(self, rows, k):
        if rows.shape[1] <= k:
            return rows
        idx = torch.randperm(rows.shape[1], generator=self.generator)[:k]
        return rows[:, idx]

    def _compute(self, quantizer):
        if quantizer is None:
            raise ValueError("the OMSE observer needs the quantizer whose error it minimises")
        from .uniform import fake_quantize, params_from_range

        lo, hi = self.minmax.lo, self.minmax.hi
        x = self.samples
        best_err = torch.full_like(lo, float("inf"))
        best_lo, best_hi = lo.clone(), hi.clone()
        for i in range(self.steps):
            # Geometric grid from the full range down to 1/100 of it: heavy tails want small factors.
            factor = 0.01 ** (i / (self.steps - 1))
            c_lo, c_hi = lo * factor, hi * factor
            scale, zp = params_from_range(c_lo, c_hi, quantizer.bits, quantizer.symmetric)
            err = (fake_quantize(x, scale, zp, quantizer.bits, quantizer.symmetric, axis=0) - x).pow(2).sum(dim=1)
            better = err < best_err
            best_err = torch.where(better, err, best_err)
            best_lo = torch.where(better, c_lo, best_lo)
            best_hi = torch.where(better, c_hi, best_hi)
        return best_lo, best_hi


OBSERVERS = {cls.name: cls for cls in (MinMaxObserver, EMAObserver, PercentileObserver, OMSEObserver)}


def make_observer(name: str, axis: int | None = None, **options) -> Observer:
    """An observer by name (minmax, ema, percentile, omse) with its options (momentum, percentile, ...)."""
    from ..errors import ConfigError

    if name not in OBSERVERS:
        raise ConfigError(f"unknown range estimator {name!r}", hint=f"use one of: {', '.join(OBSERVERS)}")
    cls = OBSERVERS[name]
    accepted = cls.__init__.__code__.co_varnames[: cls.__init__.__code__.co_argcount]
    return cls(axis=axis, **{k: v for k, v in options.items() if k in accepted})
