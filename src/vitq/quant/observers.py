"""Range estimators (observers): fed batch after batch, they propose a clipping range [lo, hi].

They are kept apart from the quantizers: an observer only sees data and returns per-channel (or
per-tensor) ranges; the quantizer turns a range into a scale and zero-point. The
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
    """Exponential moving average of each batch's min and max, as FQ-ViT defines it: the first batch
    sets the range, then ``range += (1 - momentum) * (batch range - range)`` (FQ-ViT's sigma = 0.01,
    i.e. momentum 0.99)."""

    name = "ema"

    def __init__(self, axis=None, momentum: float = 0.99):
        super().__init__(axis)
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"EMA momentum must be in [0, 1), got {momentum}")
        self.momentum = momentum
        self.lo = self.hi = None

    def _update(self, rows):
        lo, hi = rows.amin(dim=1), rows.amax(dim=1)
        self.lo, self.hi = _ema(self.lo, lo, self.momentum), _ema(self.hi, hi, self.momentum)

    def _compute(self, quantizer):
        return self.lo, self.hi


def _ema(old, new, momentum: float):
    return new if old is None else old + (1.0 - momentum) * (new - old)


def _kth_smallest(rows: torch.Tensor, k: int) -> torch.Tensor:
    """The k-th smallest value of each row (1-based): a partial top-k for the tails, where clipping
    percentiles live (several times faster than kthvalue on large rows), kthvalue otherwise."""
    n = rows.shape[1]
    if k <= n // 16:
        return torch.topk(rows, k, dim=1, largest=False, sorted=True).values[:, -1]
    if n - k + 1 <= n // 16:
        return torch.topk(rows, n - k + 1, dim=1, largest=True, sorted=True).values[:, -1]
    return rows.kthvalue(k, dim=1).values


def _row_quantiles(rows: torch.Tensor, q_lo: float, q_hi: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row lower and upper quantiles by order statistics (torch.quantile caps its input size)."""
    n = rows.shape[1]
    k_lo = min(max(int(round(q_lo * (n - 1))) + 1, 1), n)
    k_hi = min(max(int(round(q_hi * (n - 1))) + 1, 1), n)
    return _kth_smallest(rows, k_lo), _kth_smallest(rows, k_hi)


class PercentileObserver(Observer):
    """FQ-ViT's percentile estimator: the p-th and (100-p)-th percentiles of each batch (default
    99.999), followed over batches by the same moving average as :class:`EMAObserver`."""

    name = "percentile"

    def __init__(self, axis=None, percentile: float = 99.999, momentum: float = 0.99):
        super().__init__(axis)
        if not 50.0 < percentile <= 100.0:
            raise ValueError(f"percentile must be in (50, 100], got {percentile}")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"percentile momentum must be in [0, 1), got {momentum}")
        self.percentile = percentile
        self.momentum = momentum
        self.lo = self.hi = None

    def _update(self, rows):
        p = self.percentile / 100.0
        lo, hi = _row_quantiles(rows, 1.0 - p, p)
        self.lo, self.hi = _ema(self.lo, lo, self.momentum), _ema(self.hi, hi, self.momentum)

    def _compute(self, quantizer):
        return self.lo, self.hi


class ReservoirSample:
    """A uniform random sample, without replacement, of the columns of a stream of (channels, n)
    blocks: every column seen so far has the same chance to be kept, whichever batch it came in.

    Each column gets a uniform random key; the ``k`` columns with the smallest keys are kept
    (the "random keys" form of reservoir sampling). Memory is bounded by ``k`` columns plus one batch.
    ``k=None`` keeps everything.
    """

    def __init__(self, k: int | None, generator: torch.Generator):
        self.k, self.generator = k, generator
        self.values: torch.Tensor | None = None
        self.keys: torch.Tensor | None = None
        self.seen = 0

    def add(self, rows: torch.Tensor) -> None:
        self.seen += rows.shape[1]
        keys = torch.rand(rows.shape[1], generator=self.generator).to(rows.device)  # the CPU generator: same draws on any device
        if self.values is not None:
            rows, keys = torch.cat([self.values, rows.to(self.values.device)], 1), torch.cat([self.keys, keys.to(self.keys.device)])
        if self.k is not None and rows.shape[1] > self.k:
            # The k smallest keys, in no particular order (the order of a sample does not matter).
            threshold = keys.kthvalue(self.k).values
            keep = torch.nonzero(keys <= threshold).reshape(-1)[: self.k]
            rows, keys = rows[:, keep], keys[keep]
        self.values, self.keys = rows, keys


class SearchObserver(Observer):
    """Base of observers that pick, among candidate ranges, the one with the least L2 error.

    Keeps the running min/max and a uniform random sample of the values (per channel, the same
    positions for every channel) over all batches, bounded by ``max_samples`` (``None``: keep every
    value, as for weights); candidates are scored on the quantizer's own levels through
    ``quantizer.simulate(rows, lo, hi)``.
    """

    def __init__(self, axis=None, max_samples: int | None = 1 << 18, seed: int = 0):
        super().__init__(axis)
        self.max_samples = max_samples
        self.generator = torch.Generator().manual_seed(seed)
        self.minmax = MinMaxObserver(axis)
        self.reservoir: ReservoirSample | None = None

    @property
    def samples(self) -> torch.Tensor | None:
        return None if self.reservoir is None else self.reservoir.values

    def _update(self, rows):
        self.minmax._update(rows)
        self.minmax.batches += 1
        if self.reservoir is None:
            # The sample budget is shared by the channels, with at least 2048 values per channel.
            k = None if self.max_samples is None else max(2048, self.max_samples // rows.shape[0])
            self.reservoir = ReservoirSample(k, self.generator)
        self.reservoir.add(rows)

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


OMSE_GRIDS = ("linear", "geometric")


class OMSEObserver(SearchObserver):
    """The clipping range that minimises the L2 quantization error (Choukroun et al. 2019).

    Candidates shrink [min, max] by a factor: FQ-ViT's grid by default (``grid="linear"``:
    1, 0.99, ..., 0.11, 90 steps); ``grid="geometric"`` goes down to 1/100 in ``steps`` steps,
    for heavy tails. FQ-ViT scores the candidates on the last calibration batch; vitq scores them on
    a uniform sample of every batch.
    """

    name = "omse"

    def __init__(self, axis=None, max_samples: int | None = 1 << 18, steps: int = 90, grid: str = "linear", seed: int = 0):
        super().__init__(axis, max_samples, seed)
        if grid not in OMSE_GRIDS:
            raise ValueError(f"unknown OMSE grid {grid!r}: use one of {OMSE_GRIDS}")
        if not 2 <= steps <= (90 if grid == "linear" else 10_000):
            raise ValueError(f"OMSE steps must be in [2, {90 if grid == 'linear' else 10000}] for the {grid} grid, got {steps}")
        self.steps, self.grid = steps, grid

    def factors(self) -> list[float]:
        if self.grid == "linear":
            return [1.0 - 0.01 * i for i in range(self.steps)]
        return [0.01 ** (i / (self.steps - 1)) for i in range(self.steps)]

    def candidates(self):
        lo, hi = self.minmax.lo, self.minmax.hi
        for factor in self.factors():
            yield lo * factor, hi * factor


class PercentileSearchObserver(SearchObserver):
    """RepQ-ViT's calibration: of the ranges clipped at a few percentiles (99.9, 99.99, 99.999),
    the one with the least L2 error on the calibration data."""

    name = "pct_search"

    def __init__(self, axis=None, max_samples: int | None = 1 << 18, percentiles=(99.9, 99.99, 99.999), seed: int = 0):
        super().__init__(axis, max_samples, seed)
        self.percentiles = tuple(float(p) for p in percentiles)
        if not self.percentiles or not all(50.0 < p <= 100.0 for p in self.percentiles):
            raise ValueError(f"percentiles must be in (50, 100], got {percentiles}")

    def candidates(self):
        for p in self.percentiles:
            yield _row_quantiles(self.samples, 1.0 - p / 100.0, p / 100.0)


OBSERVERS = {cls.name: cls for cls in (MinMaxObserver, EMAObserver, PercentileObserver, OMSEObserver, PercentileSearchObserver)}


def observer_options(name: str) -> tuple[str, ...]:
    """The options an observer takes (besides ``axis``)."""
    import inspect

    params = inspect.signature(OBSERVERS[name].__init__).parameters
    return tuple(p for p in params if p not in ("self", "axis"))


def make_observer(name: str, axis: int | None = None, **options) -> Observer:
    """An observer by name (minmax, ema, percentile, omse, pct_search) with its options; an option it
    does not take is an error."""
    from ..errors import ConfigError

    if name not in OBSERVERS:
        raise ConfigError(f"unknown range estimator {name!r}", hint=f"use one of: {', '.join(OBSERVERS)}")
    known = observer_options(name)
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise ConfigError(f"the {name} range estimator takes no option {', '.join(unknown)}",
                          hint=f"its options: {', '.join(known) or 'none'}")
    try:
        return OBSERVERS[name](axis=axis, **options)
    except ValueError as err:
        raise ConfigError(str(err)) from None
