"""Range estimators, fed batch after batch."""

import pytest
import torch

from vitq.errors import ConfigError
from vitq.quant import EMAObserver, MinMaxObserver, OMSEObserver, PercentileObserver, UniformQuantizer, make_observer


def batches(n=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(8, 16, 4, generator=g) * (i + 1) for i in range(n)]


def test_minmax_over_batches_per_tensor_and_channel():
    data = batches()
    o = MinMaxObserver()
    oc = MinMaxObserver(axis=-1)
    for b in data:
        o.update(b)
        oc.update(b)
    allx = torch.cat(data)
    lo, hi = o.compute()
    assert lo.item() == allx.min().item() and hi.item() == allx.max().item()
    lo_c, hi_c = oc.compute()
    assert torch.equal(hi_c, allx.reshape(-1, 4).amax(0))


def test_ema_follows_momentum():
    o = EMAObserver(momentum=0.5)
    o.update(torch.tensor([0.0, 1.0]))
    o.update(torch.tensor([0.0, 3.0]))
    assert o.compute()[1].item() == pytest.approx(2.0)
    with pytest.raises(ValueError):
        EMAObserver(momentum=1.0)


def test_percentile_clips_outliers():
    x = torch.randn(100000)
    x[0] = 1000.0
    o = PercentileObserver(percentile=99.9)
    o.update(x)
    lo, hi = o.compute()
    assert 2.5 < hi.item() < 4.0 and -4.0 < lo.item() < -2.5


def test_omse_beats_minmax_on_heavy_tails():
    torch.manual_seed(0)
    x = torch.distributions.StudentT(2.0).sample((50000,))
    q = UniformQuantizer(4, symmetric=False)
    errs = {}
    for obs in (MinMaxObserver(), OMSEObserver()):
        obs.update(x[:25000])
        obs.update(x[25000:])
        q.set_range(*obs.compute(q))
        errs[obs.name] = (q(x) - x).pow(2).mean().item()
    assert errs["omse"] < 0.7 * errs["minmax"]
    # no hand-picked clipping range does clearly better
    for clip in (2.0, 5.0, 10.0, 20.0, 50.0):
        q.set_range(torch.tensor(-clip), torch.tensor(clip))
        assert errs["omse"] <= 1.02 * (q(x) - x).pow(2).mean().item()


def test_omse_memory_bounded_and_per_channel():
    o = OMSEObserver(axis=0, max_samples=100)
    for _ in range(4):
        o.update(torch.randn(3, 1000))
    assert o.samples.shape == (3, 2048)  # at least 2048 values per channel are kept, never more
    lo, hi = o.compute(UniformQuantizer(4, axis=0))
    assert lo.shape == (3,) and (hi > 0).all()


def test_errors():
    with pytest.raises(ConfigError, match="known|use one of"):
        make_observer("nope")
    with pytest.raises(RuntimeError, match="saw no data"):
        MinMaxObserver().compute()
    assert isinstance(make_observer("percentile", percentile=99.0, momentum=0.3), PercentileObserver)


def test_percentile_search_picks_least_error():
    from vitq.quant import PercentileSearchObserver

    torch.manual_seed(0)
    x = torch.randn(4, 20000)
    x[0, :5] = 80.0  # one channel with outliers
    q = UniformQuantizer(4, axis=0)
    o = PercentileSearchObserver(axis=0)
    o.update(x)
    lo, hi = o.compute(q)
    assert hi[1] < x[1].max()  # a clipped candidate wins on a Gaussian channel
    errs = []
    for p in (99.9, 99.99, 99.999):
        k = torch.quantile(x, torch.tensor([1 - p / 100, p / 100]), dim=1)
        errs.append((q.simulate(x, k[0], k[1]) - x).pow(2).sum(1))
    best = torch.stack(errs).min(0).values
    assert torch.allclose((q.simulate(x, lo, hi) - x).pow(2).sum(1), best, rtol=1e-3)
