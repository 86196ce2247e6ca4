"""Range estimators (observers): fed batch after batch, they propose a clipping range [lo, hi].

They are kept apart from the quantizers: an observer only sees data and returns per-channel (or
per-tensor) ranges; the quantizer turns a range into a scale and zero-point. OMSE is the one
observers that search (OMSE, RepQ-ViT's percentile search) need the quantizer's grid, so
``compute`` receives the quantizer.
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
        """The proposed range: tensors of one value per channel (one value for per-tensor)."""
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


class SearchObserver(Observer):
    """Base of observers that pick, among candidate ranges, the one with the least L2 error.

    Keeps the running min/max and a bounded, seeded sample of values per channel (memory does
    not grow with the data); candidates are scored on the quantizer's own levels through
    ``quantizer.simulate(rows, lo, hi)``.
    """

    def __init__(self, axis=None, max_samples: int = 1 << 18, seed: int = 0):
        super().__init__(axis)
        self.max_samples = max_samples
        self.generator = torch.Generator().manual_seed(seed)
        self.minmax = MinMaxObserver(axis)
        self.samples: torch.Tensor | None = None

    def _update(self, rows):
        self.minmax._update(rows)
        self.minmax.batches += 1
        # The sample budget is shared by the channels, with at least 2048 values per channel.
        k = max(2048, self.max_samples // rows.shape[0])
        rows = self._subsample(rows, k)
        self.samples = rows if self.samples is None else self._subsample(torch.cat([self.samples, rows], 1), k)

    def _subsample(self, rows, k):
        if rows.shape[1] <= k:
            return rows
        idx = torch.randperm(rows.shape[1], generator=self.generator)[:k]
        return rows[:, idx]

    def candidates(self):
        """Yield (lo, hi) candidate ranges, one value per channel each."""
        raise NotImplementedError

    @torch.no_grad()
    def _compute(self, quantizer):
        if quantizer is None:
            raise ValueError(f"the {self.name} observer needs the quantizer whose error it minimises")
        x = self.samples
        best_err = best_lo = best_hi = None
        for c_lo, c_hi in self.candidates():
            err = (quantizer.simulate(x, c_lo, c_hi) - x).pow(2).sum(dim=1)
            if best_err is None:
                best_err, best_lo, best_hi = err, c_lo.clone(), c_hi.clone()
                continue
            better = err < best_err
            best_err = torch.where(better, err, best_err)
            best_lo = torch.where(better, c_lo, best_lo)
            best_hi = torch.where(better, c_hi, best_hi)
        return best_lo, best_hi


class OMSEObserver(SearchObserver):
    """The clipping range that minimises the L2 quantization error (Choukroun et al. 2019):
    shrink factors of [min, max] on a geometric grid down to 1/100 (heavy tails want small ones)."""

    name = "omse"

    def __init__(self, axis=None, max_samples: int = 1 << 18, steps: int = 100, seed: int = 0):
        super().__init__(axis, max_samples, seed)
        self.steps = steps

    def candidates(self):
        lo, hi = self.minmax.lo, self.minmax.hi
        for i in range(self.steps):
            factor = 0.01 ** (i / (self.steps - 1))
            yield lo * factor, hi * factor


class PercentileSearchObserver(SearchObserver):
    """RepQ-ViT's calibration: of the ranges clipped at a few percentiles (99.9, 99.99, 99.999),
    the one with the least L2 error on the calibration data."""

    name = "pct_search"

    def __init__(self, axis=None, max_samples: int = 1 << 18, percentiles=(99.9, 99.99, 99.999), seed: int = 0):
        super().__init__(axis, max_samples, seed)
        self.percentiles = tuple(percentiles)

    def candidates(self):
        for p in self.percentiles:
            yield _row_quantiles(self.samples, 1.0 - p / 100.0, p / 100.0)


OBSERVERS = {cls.name: cls for cls in (MinMaxObserver, EMAObserver, PercentileObserver, OMSEObserver, PercentileSearchObserver)}


def make_observer(name: str, axis: int | None = None, **options) -> Observer:
    """An observer by name (minmax, ema, percentile, omse) with its options (momentum, percentile, ...)."""
    from ..errors import ConfigError

    if name not in OBSERVERS:
        raise ConfigError(f"unknown range estimator {name!r}", hint=f"use one of: {', '.join(OBSERVERS)}")
    cls = OBSERVERS[name]
    accepted = cls.__init__.__code__.co_varnames[: cls.__init__.__code__.co_argcount]
    return cls(axis=axis, **{k: v for k, v in options.items() if k in accepted})
