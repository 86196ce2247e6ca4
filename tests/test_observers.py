"""Range estimators, fed batch after batch."""

import pytest
import torch

from vitq.errors import ConfigError
from vitq.quant import EMAObserver, MinMaxObserver, OMSEObserver, PercentileObserver, UniformQuantizer, make_observer
from vitq.quant.observers import PercentileSearchObserver, ReservoirSample


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


def test_ema_is_fq_vits():
    """FQ-ViT: the first batch sets the range, then range += sigma * (batch - range), sigma = 0.01."""
    o = EMAObserver()
    assert o.momentum == 0.99
    o.update(torch.tensor([0.0, 1.0]))
    o.update(torch.tensor([0.0, 3.0]))
    o.update(torch.tensor([-1.0, 2.0]))
    hi = 1.0 + 0.01 * (3.0 - 1.0)
    hi = hi + 0.01 * (2.0 - hi)
    assert o.compute()[1].item() == pytest.approx(hi) and o.compute()[0].item() == pytest.approx(-0.01)
    with pytest.raises(ValueError):
        EMAObserver(momentum=1.0)


def test_percentile_is_fq_vits():
    """FQ-ViT: the 99.999th percentile of each batch, followed by the same moving average."""
    torch.manual_seed(0)
    xs = [torch.randn(200_000) * s for s in (1.0, 2.0)]
    xs[0][0] = 1000.0  # one outlier: clipped
    o = PercentileObserver()
    assert o.percentile == 99.999 and o.momentum == 0.99
    for x in xs:
        o.update(x)
    per_batch = [torch.quantile(x[:100_000], 0.99999).item() for x in xs]  # torch.quantile caps input size
    lo, hi = o.compute()
    exact = [x.kthvalue(int(round(0.99999 * (x.numel() - 1))) + 1).values.item() for x in xs]
    assert hi.item() == pytest.approx(exact[0] + 0.01 * (exact[1] - exact[0]), rel=1e-6)
    assert 3.5 < exact[0] < 5.5 and abs(per_batch[0] - exact[0]) < 1.0  # clips the outlier; close to torch.quantile


def test_omse_follows_fq_vits_grid_and_beats_minmax_on_heavy_tails():
    torch.manual_seed(0)
    x = torch.distributions.StudentT(2.0).sample((50000,))
    q = UniformQuantizer(4, symmetric=False)
    linear = OMSEObserver()
    assert linear.factors()[:3] == [1.0, 0.99, 0.98] and len(linear.factors()) == 90 and linear.factors()[-1] == pytest.approx(0.11)
    errs = {}
    for obs in (MinMaxObserver(), OMSEObserver(), OMSEObserver(grid="geometric", steps=100)):
        obs.update(x[:25000])
        obs.update(x[25000:])
        q.set_range(*obs.compute(q))
        errs[getattr(obs, "grid", "minmax")] = (q(x) - x).pow(2).mean().item()
    assert errs["linear"] < 0.7 * errs["minmax"] and errs["geometric"] < 0.7 * errs["minmax"]
    # with the geometric grid, no hand-picked clipping range does clearly better
    for clip in (2.0, 5.0, 10.0, 20.0, 50.0):
        q.set_range(torch.tensor(-clip), torch.tensor(clip))
        assert errs["geometric"] <= 1.02 * (q(x) - x).pow(2).mean().item()


def test_reservoir_sample_is_uniform_over_batches():
    """Every calibration value has the same chance to be kept, whichever batch it came in: over 20
    batches each holds about 1/20 of the sample (a merge-and-cut sample gave the last batch half)."""
    o = OMSEObserver(max_samples=2048)
    n = 20
    for i in range(n):
        o.update(torch.full((10_000,), float(i)))
    kept = o.samples.reshape(-1)
    assert kept.numel() == 2048
    shares = torch.bincount(kept.long(), minlength=n).float() / kept.numel()
    # binomial standard deviation of one share: sqrt(0.05 * 0.95 / 2048) = 0.0048
    assert (shares - 1 / n).abs().max() < 0.025, shares


def test_reservoir_sample_keeps_channels_aligned_and_bounded():
    g = torch.Generator().manual_seed(0)
    r = ReservoirSample(100, g)
    for i in range(5):
        block = torch.arange(300, dtype=torch.float32).repeat(3, 1) + 1000 * i
        r.add(block)
    assert r.values.shape == (3, 100) and r.seen == 1500
    assert torch.equal(r.values[0], r.values[1])  # the same positions for every channel
    assert ReservoirSample(None, g).k is None


def test_search_memory_bounded_and_per_channel():
    o = OMSEObserver(axis=0, max_samples=100)
    for _ in range(4):
        o.update(torch.randn(3, 1000))
    assert o.samples.shape == (3, 2048)  # at least 2048 values per channel are kept, never more
    lo, hi = o.compute(UniformQuantizer(4, axis=0))
    assert lo.shape == (3,) and (hi > 0).all()


def test_seeded_sample():
    def sample(seed):
        o = OMSEObserver(max_samples=2048, seed=seed)
        for i in range(3):
            o.update(torch.randn(5000, generator=torch.Generator().manual_seed(i)))
        return o.samples

    assert torch.equal(sample(1), sample(1)) and not torch.equal(sample(1), sample(2))


def test_errors():
    with pytest.raises(ConfigError, match="known|use one of"):
        make_observer("nope")
    with pytest.raises(RuntimeError, match="saw no data"):
        MinMaxObserver().compute()
    assert isinstance(make_observer("percentile", percentile=99.0, momentum=0.3), PercentileObserver)
    with pytest.raises(ConfigError, match="takes no option steps") as err:
        make_observer("percentile", steps=3)
    assert "percentile, momentum" in err.value.hint
    with pytest.raises(ConfigError, match="percentile must be"):
        make_observer("percentile", percentile=20)


def test_percentile_search_picks_least_error():
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
