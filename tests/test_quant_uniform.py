"""Uniform quantizer mathematics against float64 references and PyTorch's own fake-quantize."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from vitq.errors import ConfigError
from vitq.quant import UniformQuantizer, fake_quantize, int_range, params_from_range, round_ste
from vitq.quant.packing import pack_codes, unpack_codes


def reference_fake_quant(x, lo, hi, bits, symmetric):
    """Textbook formulas in float64: S = (beta - alpha)/(2^b - 1), Q = clip(round(r/S) + Z)."""
    x = x.double()
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    if symmetric:
        a = max(-lo, hi)
        lo, hi = -a, a
        qmin, qmax = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
        s, z = (hi - lo) / (2**bits - 1), 0.0
    else:
        qmin, qmax = 0, 2**bits - 1
        s = (hi - lo) / (2**bits - 1)
        z = min(max(round(-lo / s), qmin), qmax)
    q = torch.clamp(torch.round(x / s) + z, qmin, qmax)
    return (q - z) * s


@pytest.mark.parametrize("bits", [2, 3, 4, 6, 8])
@pytest.mark.parametrize("symmetric", [True, False])
def test_matches_float64_reference(bits, symmetric):
    torch.manual_seed(bits)
    x = torch.randn(4096) * 3 + 0.5
    lo, hi = float(x.min()), float(x.max())
    q = UniformQuantizer(bits, symmetric=symmetric)
    q.set_range(torch.tensor(lo), torch.tensor(hi))
    ref = reference_fake_quant(x, lo, hi, bits, symmetric)
    assert torch.allclose(q(x).double(), ref, atol=1e-5 * (hi - lo))


def test_asymmetric_8bit_matches_torch_fake_quantize():
    torch.manual_seed(0)
    x = torch.randn(10000) * 2 + 1
    q = UniformQuantizer(8, symmetric=False)
    q.set_range(x.min(), x.max())
    ours = q(x)
    theirs = torch.fake_quantize_per_tensor_affine(x, float(q.scale), int(q.zero_point), 0, 255)
    # Division versus multiplication by 1/S may round a value sitting on a tie the other way.
    diff = (ours - theirs).abs()
    assert (diff > 1e-6).float().mean() < 1e-3
    assert diff.max() <= float(q.scale) + 1e-6


def test_symmetric_per_channel_8bit_matches_torch():
    torch.manual_seed(0)
    w = torch.randn(16, 32) * torch.linspace(0.1, 5, 16)[:, None]
    q = UniformQuantizer(8, symmetric=True, axis=0)
    q.set_range(w.amin(1), w.amax(1))
    theirs = torch.fake_quantize_per_channel_affine(w, q.scale, q.zero_point.int(), 0, -128, 127)
    diff = (q(w) - theirs).abs()
    assert (diff > 1e-6).float().mean() < 1e-3
    # and PyTorch's own observer picks the same scales
    obs = torch.ao.quantization.PerChannelMinMaxObserver(ch_axis=0, dtype=torch.qint8, qscheme=torch.per_channel_symmetric)
    obs(w)
    scale, _ = obs.calculate_qparams()
    assert torch.allclose(scale, q.scale, rtol=1e-6)


@pytest.mark.parametrize("axis", [0, 1, 2, -1])
def test_per_channel_any_axis(axis):
    torch.manual_seed(1)
    x = torch.randn(3, 5, 7) * torch.arange(1, 8).float()
    q = UniformQuantizer(4, symmetric=False, axis=axis)
    moved = x.movedim(axis, 0).reshape(x.shape[axis], -1)
    q.set_range(moved.amin(1), moved.amax(1))
    out = q(x)
    for c in range(x.shape[axis]):
        xc = x.select(axis, c)
        ref = reference_fake_quant(xc, float(xc.min()), float(xc.max()), 4, False)
        assert torch.allclose(out.select(axis, c).double(), ref, atol=1e-5)


finite = st.floats(-100, 100, allow_nan=False, width=32)


@settings(max_examples=60, deadline=None)
@given(bits=st.integers(2, 8), symmetric=st.booleans(), values=st.lists(finite, min_size=2, max_size=64))
def test_error_bound_idempotence_monotonicity(bits, symmetric, values):
    x = torch.tensor(values)
    if float(x.max() - x.min()) < 1e-3:
        return
    q = UniformQuantizer(bits, symmetric=symmetric)
    q.set_range(x.min(), x.max())
    y = q(x)
    s = float(q.scale)
    # inside the range the error is at most half a step
    assert (y - x).abs().max() <= s / 2 + 1e-4 * max(1.0, float(x.abs().max()))
    # quantizing twice changes nothing
    assert torch.allclose(q(y), y, atol=1e-5 * max(1.0, float(x.abs().max())))
    # order is kept
    xs, _ = torch.sort(x)
    ys = q(xs)
    assert (ys[1:] >= ys[:-1] - 1e-6).all()


def test_codes_in_range_and_dequantize_inverse():
    x = torch.randn(1000) * 4
    for bits in (2, 4, 8):
        for sym in (True, False):
            q = UniformQuantizer(bits, symmetric=sym)
            q.set_range(x.min(), x.max())
            codes = q.quantize(x)
            qmin, qmax = int_range(bits, sym)
            assert codes.min() >= qmin and codes.max() <= qmax
            assert torch.allclose(q.dequantize(codes), q(x), atol=1e-6)


@pytest.mark.parametrize("bad", [1, 9, 0, 16, 4.0, True])
def test_bad_bits_rejected(bad):
    with pytest.raises(ConfigError, match="out of range"):
        UniformQuantizer(bad)


def test_straight_through_gradient_and_learnable_scale():
    x = torch.linspace(-1, 1, 50, requires_grad=True)
    round_ste(x * 3.3).sum().backward()
    assert torch.allclose(x.grad, torch.full_like(x, 3.3))
    q = UniformQuantizer(4, symmetric=True, learnable=True)
    q.set_range(torch.tensor(-1.0), torch.tensor(1.0))
    assert isinstance(q.scale, torch.nn.Parameter)
    x = torch.randn(100) * 2
    ((q(x) - x) ** 2).mean().backward()
    assert q.scale.grad is not None and q.scale.grad.abs().item() > 0


def test_zero_is_exact_for_asymmetric():
    q = UniformQuantizer(3, symmetric=False)
    q.set_range(torch.tensor(0.3), torch.tensor(5.0))  # range widened to contain 0
    assert q(torch.zeros(1)).item() == 0.0


@pytest.mark.parametrize("bits", [2, 3, 4, 5, 8])
@pytest.mark.parametrize("symmetric", [True, False])
def test_packing_round_trip(bits, symmetric):
    qmin, qmax = int_range(bits, symmetric)
    codes = torch.randint(qmin, qmax + 1, (7, 9), dtype=torch.int32)
    packed = pack_codes(codes, bits, qmin)
    assert packed.dtype == torch.uint8
    assert packed.numel() == (math.ceil(63 / 2) if bits <= 4 else 63)
    assert torch.equal(unpack_codes(packed, bits, qmin, codes.shape), codes)


def test_params_from_range_formula():
    s, z = params_from_range(torch.tensor([-1.0]), torch.tensor([3.0]), 4, False)
    assert torch.allclose(s, torch.tensor([4.0 / 15]))
    assert z.item() == round(1.0 / (4.0 / 15))
    s, z = params_from_range(torch.tensor([-2.0]), torch.tensor([1.0]), 8, True)
    assert torch.allclose(s, torch.tensor([4.0 / 255])) and z.item() == 0
    y = fake_quantize(torch.tensor([10.0, -10.0]), s, z, 8, True)
    assert torch.allclose(y, torch.tensor([127 * 4.0 / 255, -128 * 4.0 / 255]))


@pytest.mark.parametrize("axis", [None, 1])
def test_inference_path_is_bit_identical_to_torch_and_the_training_path(axis):
    """The fast in-place inference path gives exactly PyTorch's fake-quantize kernels' values and the
    straight-through (training) path's, ties included."""

    torch.manual_seed(0)
    for trial in range(50):
        x = torch.randn(300, 24) * float(torch.rand(1) * 8 + 0.1)
        q = UniformQuantizer(4 if trial % 2 else 8, symmetric=bool(trial % 3 == 0), axis=axis)
        q.set_range(x.amin(0) if axis is not None else x.min(), x.amax(0) if axis is not None else x.max())
        step = q.scale.reshape(1, -1) if axis is not None else q.scale
        x[:5] = (torch.arange(5).reshape(-1, 1) + 0.5) * step  # values on rounding ties
        qmin, qmax = int_range(q.bits, q.symmetric)
        if axis is None:
            kernel = torch.fake_quantize_per_tensor_affine(x, q.scale.reshape(()), q.zero_point.int().reshape(()), qmin, qmax)
        else:
            kernel = torch.fake_quantize_per_channel_affine(x, q.scale, q.zero_point.int(), axis, qmin, qmax)
        with torch.no_grad():
            fast = q(x)
        slow = fake_quantize(x, q.scale, q.zero_point, q.bits, q.symmetric, axis)
        assert torch.equal(fast, kernel) and torch.equal(fast, slow)


def test_learnable_scale_keeps_its_parameter_across_set_params():
    """An optimizer holding the scale must keep working after a re-calibration."""
    q = UniformQuantizer(4, axis=0, learnable=True)
    q.set_range(torch.tensor([-1.0, -2.0]), torch.tensor([1.0, 2.0]))
    param = q.scale
    opt = torch.optim.SGD([param], lr=0.1)
    q.set_range(torch.tensor([-3.0, -4.0]), torch.tensor([3.0, 4.0]))
    assert q.scale is param and torch.allclose(param, torch.tensor([6.0, 8.0]) / 15)
    (q(torch.randn(2, 5)) ** 2).sum().backward()
    opt.step()
    assert q.scale is param and param.grad is not None
