"""RandAugment (Cubuk et al. 2020) on batches of float images in [0, 1], as DeiT's recipe uses it.

Each image gets ``num_ops`` operations in turn, each drawn uniformly from ``OPS``, at a magnitude
drawn per image from N(``magnitude``, ``magnitude_std``) on the usual 0-10 scale (DeiT:
"rand-m9-mstd0.5-inc1": 2 ops, magnitude 9, std 0.5, the "increasing" variants whose strength grows
with the magnitude). Signed operations (rotate, shear, translate, the enhance factors) pick their
sign per image. Geometric operations fill uncovered pixels with mid-grey, as timm's do.

Everything runs batched: for each drawn operation the images that drew it are transformed together.
All draws come from the generator passed in, so training stays deterministic and resumable.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

MAX_LEVEL = 10.0
LUMA = (0.299, 0.587, 0.114)  # ITU-R 601-2, as PIL's convert("L")


def _grey(x: torch.Tensor) -> torch.Tensor:
    w = x.new_tensor(LUMA).view(1, 3, 1, 1)
    return (x * w).sum(dim=1, keepdim=True)


def _blend(x: torch.Tensor, degenerate: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """PIL's ImageEnhance: degenerate + factor * (x - degenerate); factor 1 is the identity."""
    return (degenerate + factor.view(-1, 1, 1, 1) * (x - degenerate)).clamp(0, 1)


def _enhance_factor(level: torch.Tensor, sign: torch.Tensor) -> torch.Tensor:
    return 1.0 + sign * 0.9 * level  # the "increasing" enhance ops: factor in [0.1, 1.9]


def _affine(x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Sample x at theta @ (u, v, 1) (normalised coordinates); outside the image: grey 0.5."""
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x - 0.5, grid, mode="bilinear", padding_mode="zeros", align_corners=False) + 0.5


def _eye(x: torch.Tensor) -> torch.Tensor:
    """One identity affine matrix per image of x (same dtype and device)."""
    theta = x.new_zeros(len(x), 2, 3)
    theta[:, 0, 0] = theta[:, 1, 1] = 1.0
    return theta


def identity(x, level, sign):
    return x


def autocontrast(x, level, sign):
    lo = x.amin(dim=(2, 3), keepdim=True)
    hi = x.amax(dim=(2, 3), keepdim=True)
    flat = hi <= lo  # a constant channel stays as it is
    return torch.where(flat, x, (x - lo) / (hi - lo).clamp_min(1e-12))


def equalize(x, level, sign):
    """Histogram equalisation per image and channel on 256 levels (output CDF made uniform)."""
    n, c, h, w = x.shape
    v = (x * 255).round().long().view(n * c, h * w)
    hist = x.new_zeros(n * c, 256).scatter_add_(1, v, torch.ones_like(v, dtype=x.dtype))
    cdf = hist.cumsum(1)
    cdf_min = cdf.gather(1, v.min(dim=1, keepdim=True).values)
    lut = ((cdf - cdf_min) / (h * w - cdf_min).clamp_min(1)).clamp(0, 1)
    out = lut.gather(1, v).view(n, c, h, w)
    constant = (cdf_min >= h * w).view(n, c, 1, 1)  # one value only: nothing to spread
    return torch.where(constant, x, out)


def rotate(x, level, sign):
    angle = sign * level * math.radians(30.0)
    theta = _eye(x)
    theta[:, 0, 0] = theta[:, 1, 1] = angle.cos()
    theta[:, 0, 1] = -angle.sin()
    theta[:, 1, 0] = angle.sin()
    return _affine(x, theta)


def solarize(x, level, sign):
    threshold = (1.0 - level).view(-1, 1, 1, 1)  # increasing: more pixels inverted at higher levels
    return torch.where(x >= threshold, 1.0 - x, x)


def posterize(x, level, sign):
    bits = (4 - (level * 4).long()).clamp(min=1)  # increasing: 4 bits down to 1
    shift = (8 - bits).view(-1, 1, 1, 1)
    v = (x * 255).round().long()
    return ((v >> shift) << shift).to(x.dtype) / 255.0


def color(x, level, sign):
    return _blend(x, _grey(x), _enhance_factor(level, sign))


def contrast(x, level, sign):
    return _blend(x, _grey(x).mean(dim=(1, 2, 3), keepdim=True), _enhance_factor(level, sign))


def brightness(x, level, sign):
    return _blend(x, torch.zeros_like(x), _enhance_factor(level, sign))


def sharpness(x, level, sign):
    """PIL's SHARPEN: blend with a 3x3 smoothing (centre 5, 1 around; /13), borders unchanged."""
    kernel = x.new_ones(3, 1, 3, 3)
    kernel[:, :, 1, 1] = 5.0
    smooth = x.clone()
    smooth[..., 1:-1, 1:-1] = F.conv2d(x, kernel / 13.0, groups=3)
    return _blend(x, smooth, _enhance_factor(level, sign))


def shear_x(x, level, sign):
    theta = _eye(x)
    theta[:, 0, 1] = sign * 0.3 * level
    return _affine(x, theta)


def shear_y(x, level, sign):
    theta = _eye(x)
    theta[:, 1, 0] = sign * 0.3 * level
    return _affine(x, theta)


def translate_x(x, level, sign):
    theta = _eye(x)
    theta[:, 0, 2] = sign * 0.45 * level * 2  # up to 45% of the width; normalised width is 2
    return _affine(x, theta)


def translate_y(x, level, sign):
    theta = _eye(x)
    theta[:, 1, 2] = sign * 0.45 * level * 2
    return _affine(x, theta)


OPS = (identity, autocontrast, equalize, rotate, solarize, color, posterize, contrast, brightness, sharpness,
       shear_x, shear_y, translate_x, translate_y)


def rand_augment(x: torch.Tensor, g: torch.Generator, num_ops: int = 2, magnitude: float = 9.0,
                 magnitude_std: float = 0.5) -> torch.Tensor:
    """``num_ops`` random operations per image of an (N, 3, H, W) batch in [0, 1]; a new tensor."""
    n = x.shape[0]
    for _ in range(num_ops):
        # draws on the generator's (CPU) device, so the same seed gives the same choices anywhere
        pick = torch.randint(len(OPS), (n,), generator=g).to(x.device)
        level = ((magnitude + magnitude_std * torch.randn(n, generator=g)).clamp(0, MAX_LEVEL) / MAX_LEVEL).to(x)
        sign = torch.where(torch.rand(n, generator=g) < 0.5, -1.0, 1.0).to(x)
        out = x.clone()
        for k, op in enumerate(OPS):
            idx = (pick == k).nonzero().flatten()
            if idx.numel():
                out[idx] = op(x[idx], level[idx], sign[idx]).clamp(0, 1)
        x = out
    return x
