"""Log2 and log-sqrt2 quantizers for post-Softmax values."""

import math

import pytest
import torch

from vitq.quant import LogQuantizer


def test_log2_levels_are_powers_of_two():
    q = LogQuantizer(4, "log2")
    x = torch.tensor([1.0, 0.5, 0.3, 0.25, 0.1, 2**-15, 2**-16, 2**-20, 0.0])
    y = q(x)
    assert y[0] == 1.0 and y[1] == 0.5 and y[3] == 0.25
    assert y[2] == 0.25  # -log2(0.3) = 1.74 rounds to 2
    assert y[5] == 2**-15  # the last level (2^b - 1 = 15)
    assert y[7] == 0.0 and y[8] == 0.0  # beyond the last level: zero


def test_logsqrt2_levels():
    q = LogQuantizer(3, "logsqrt2")
    levels = [math.sqrt(2) ** -k for k in range(8)]
    x = torch.tensor(levels)
    assert torch.allclose(q(x), x, rtol=1e-6)
    assert q(torch.tensor([0.6])).item() == pytest.approx(math.sqrt(2) ** -1.0 if abs(-2 * math.log2(0.6) - 1) < 0.5 else 0.5)


def test_logsqrt2_finer_than_log2_on_softmax():
    torch.manual_seed(0)
    p = torch.softmax(torch.randn(64, 64) * 3, dim=-1)
    e2 = (LogQuantizer(4, "log2")(p) - p).pow(2).mean()
    es = (LogQuantizer(4, "logsqrt2")(p) - p).pow(2).mean()
    assert es < e2


def test_codes_and_straight_through():
    q = LogQuantizer(4, "log2")
    x = torch.tensor([0.5, 1e-9], requires_grad=True)
    codes = q.quantize(x.detach())
    assert codes.tolist() == [1, 16]
    q(x).sum().backward()
    assert torch.equal(x.grad, torch.ones(2))
    with pytest.raises(ValueError):
        LogQuantizer(4, "log3")


@pytest.mark.parametrize("bits", [2, 3, 4, 6, 8])
def test_logsqrt2_to_log2_parity_identity(bits):
    """RepQ-ViT Eq. 18-20: sqrt2^(-q) * s == 2^(-ceil(q/2)) * (sqrt2 if q odd else 1) * s, for every code."""
    q = torch.arange(0, 2**bits + 1, dtype=torch.int32)
    for s in (1.0, 0.37, 2.0**-3):
        a, b = LogQuantizer(bits, "logsqrt2"), LogQuantizer(bits, "log2_parity")
        a.scale.fill_(s)
        b.scale.fill_(s)
        assert torch.allclose(a.dequantize(q), b.dequantize(q), rtol=1e-6, atol=0)
        # and the codes are the same for any input
        x = torch.rand(1000) ** 4
        assert torch.equal(a.quantize(x), b.quantize(x))
        # even codes are pure shifts of s; odd codes pure shifts of sqrt2 * s
        deq = b.dequantize(q[: 2**bits])
        shifts = torch.ceil(q[: 2**bits].float() / 2)
        base = torch.where(q[: 2**bits] % 2 == 1, torch.tensor(math.sqrt(2) * s), torch.tensor(s))
        assert torch.equal(deq, base * torch.pow(2.0, -shifts))


def test_kinds_are_classes_and_parity_is_a_conversion():
    from vitq.quant import Log2Quantizer, LogSqrt2Quantizer, ParityLog2Quantizer

    q = LogQuantizer(4, "logsqrt2")
    assert isinstance(q, LogSqrt2Quantizer) and q.kind == "logsqrt2" and isinstance(LogQuantizer(4, "log2"), Log2Quantizer)
    q.set_range(torch.tensor(0.0), torch.tensor(0.8))
    parity = q.to_parity()
    assert isinstance(parity, ParityLog2Quantizer) and parity.bits == 4 and torch.equal(parity.scale, q.scale)
    p = torch.rand(1000)
    assert torch.allclose(parity(p), q(p), atol=1e-6) and torch.equal(parity.quantize(p), q.quantize(p))
