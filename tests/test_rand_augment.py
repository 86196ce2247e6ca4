"""RandAugment on float batches (scripts/rand_augment.py): each operation's defining property."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import rand_augment as ra  # noqa: E402
import zoo_training as zt  # noqa: E402


def _images(n: int = 4, size: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _full(n: int, value: float) -> torch.Tensor:
    return torch.full((n,), value)


@pytest.mark.parametrize("op", ra.OPS, ids=lambda op: op.__name__)
def test_every_operation_keeps_shape_and_range(op):
    x = _images()
    out = op(x, _full(4, 0.9), torch.tensor([1.0, -1.0, 1.0, -1.0]))
    assert out.shape == x.shape and out.dtype == x.dtype
    assert float(out.min()) >= -1e-6 and float(out.max()) <= 1 + 1e-6


@pytest.mark.parametrize("op", [ra.rotate, ra.shear_x, ra.shear_y, ra.translate_x, ra.translate_y,
                                ra.color, ra.contrast, ra.brightness, ra.sharpness], ids=lambda op: op.__name__)
def test_magnitude_zero_is_the_identity(op):
    x = _images()
    torch.testing.assert_close(op(x, _full(4, 0.0), _full(4, 1.0)), x, rtol=0, atol=1e-6)


def test_translate_moves_content_by_whole_pixels_and_fills_grey():
    x = _images(1, 20)
    level = torch.tensor([5 / 20 / 0.45])  # a shift of 5 of 20 pixels
    out = ra.translate_x(x, level, torch.tensor([1.0]))
    torch.testing.assert_close(out[..., :15], x[..., 5:], rtol=0, atol=1e-6)
    torch.testing.assert_close(out[..., 15:], torch.full_like(out[..., 15:], 0.5), rtol=0, atol=1e-6)


def test_solarize_posterize_autocontrast_equalize():
    x = _images()
    out = ra.solarize(x, _full(4, 0.3), _full(4, 1.0))
    torch.testing.assert_close(out, torch.where(x >= 0.7, 1 - x, x))
    post = ra.posterize(x, _full(4, 0.5), _full(4, 1.0))  # 4 - 2 = 2 bits
    assert set((post * 255).round().long().unique().tolist()) <= {0, 64, 128, 192}
    dull = 0.4 + 0.2 * x
    stretched = ra.autocontrast(dull, _full(4, 0.0), _full(4, 1.0))
    assert torch.allclose(stretched.amin(dim=(2, 3)), torch.zeros(4, 3), atol=1e-6)
    assert torch.allclose(stretched.amax(dim=(2, 3)), torch.ones(4, 3), atol=1e-6)
    lo, hi = x.amin(dim=(2, 3), keepdim=True), x.amax(dim=(2, 3), keepdim=True)
    torch.testing.assert_close(stretched, (x - lo) / (hi - lo), atol=1e-5, rtol=0)  # the squeeze is undone
    # 64 distinct dark levels (0..63 of 255) in random places: equalised, pixel of rank r becomes r / 63.
    rank = torch.stack([torch.randperm(64, generator=torch.Generator().manual_seed(c)) for c in range(3)])
    dark = (rank.float() / 255).view(1, 3, 8, 8)
    eq = ra.equalize(dark, _full(1, 0.0), _full(1, 1.0))
    torch.testing.assert_close(eq, (rank.float() / 63).view(1, 3, 8, 8))
    one_bright = torch.full((1, 3, 8, 8), 0.3)
    one_bright[..., 0, 0] = 0.6  # two levels, one pixel above: stretched to 0 and 1
    eq2 = ra.equalize(one_bright, _full(1, 0.0), _full(1, 1.0))
    torch.testing.assert_close(eq2, (one_bright > 0.5).float())
    constant = torch.full((1, 3, 8, 8), 0.3)
    torch.testing.assert_close(ra.equalize(constant, _full(1, 0.0), _full(1, 1.0)), constant)
    torch.testing.assert_close(ra.autocontrast(constant, _full(1, 0.0), _full(1, 1.0)), constant)


def test_enhance_ops_move_towards_their_degenerate_image():
    x = _images()
    grey = ra.color(x, _full(4, 1.0), _full(4, -1.0))  # factor 0.1: nearly grey
    assert (grey.std(dim=1).mean() < 0.2 * x.std(dim=1).mean()).item()
    dark = ra.brightness(x, _full(4, 1.0), _full(4, -1.0))
    torch.testing.assert_close(dark, 0.1 * x)


def test_rand_augment_is_deterministic_and_changes_images():
    x = _images(16)
    a = ra.rand_augment(x, torch.Generator().manual_seed(3))
    b = ra.rand_augment(x, torch.Generator().manual_seed(3))
    c = ra.rand_augment(x, torch.Generator().manual_seed(4))
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not torch.equal(a, c) and not torch.equal(a, x)


def test_augment_with_randaug_off_draws_exactly_as_before():
    x = (_images(8, 64) * 255).to(torch.uint8)
    g1, g2 = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    off = zt.augment(x, g1, zt.AugConfig(randaug_ops=0))
    on = zt.augment(x, g2, zt.AugConfig(randaug_ops=2))
    assert not torch.equal(off, on)
    g3 = torch.Generator().manual_seed(0)
    torch.testing.assert_close(zt.augment(x, g3, zt.AugConfig()), off, rtol=0, atol=0)
    assert torch.equal(g1.get_state(), g3.get_state())
