"""Image-generation metrics for quantized diffusion models, computable offline.

Standard FID and Inception Score need Inception-v3 weights, which cannot be downloaded here. vitq
reports instead:

- **FID in the feature space of zoo:deit-tiny** (``fid_deit``): the Fréchet distance between
  Gaussians fitted to deit-tiny's final class-token features (192-d) of generated and of real
  images. Its scale is not that of published FID: compare it only with itself.
- **An Inception-Score analogue** (``is_deit``): exp(E_x KL(p(y|x) || p(y))) with deit-tiny's 200
  Tiny ImageNet classes as the classifier (CIFAR-10 samples are out of its label set, so the value
  measures how confidently and diversely the classifier reads them, not CIFAR-10 class quality).
- **PSNR and SSIM against the full-precision samples** drawn from the same noise (``psnr``, ``ssim``):
  how far quantization moves each image. SSIM uses Wang et al.'s 11x11 Gaussian window (sigma 1.5)
  over valid positions, per channel, on [0, 1] images.

Images are tensors in [-1, 1] (a sampler's output); they are clipped, and resized with bilinear
interpolation to deit-tiny's 64x64 input and normalised with its training statistics.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..data.imagefolder import ImageFolder
from ..data.paths import data_path


def to_unit(images: torch.Tensor) -> torch.Tensor:
    """[-1, 1] sampler output -> [0, 1], clipped."""
    return ((images.float().clamp(-1, 1) + 1) / 2).clamp(0, 1)


def _mean_se(values: torch.Tensor) -> tuple[float, float]:
    v = values.double()
    se = float(v.std(unbiased=True) / math.sqrt(v.numel())) if v.numel() > 1 else 0.0
    return float(v.mean()), se


def psnr(images: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR (dB) of [-1, 1] images against a reference, on the [0, 1] scale (capped at 100)."""
    mse = (to_unit(images) - to_unit(reference)).pow(2).flatten(1).mean(1)
    return (10 * torch.log10(1.0 / mse.clamp_min(1e-10))).clamp(max=100.0)


def _gaussian_window(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(x ** 2) / (2 * sigma ** 2))
    g = g / g.sum()
    return (g[:, None] * g[None, :]).float()


def ssim(images: torch.Tensor, reference: torch.Tensor, window: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Per-image SSIM (Wang et al. 2004) of [-1, 1] images against a reference, mean over channels."""
    x, y = to_unit(images), to_unit(reference)
    c = x.shape[1]
    size = min(window, x.shape[-1], x.shape[-2])
    w = _gaussian_window(size, sigma).to(x.device)[None, None].repeat(c, 1, 1, 1)
    blur = lambda t: F.conv2d(t, w, groups=c)  # noqa: E731
    mx, my = blur(x), blur(y)
    sxx, syy, sxy = blur(x * x) - mx ** 2, blur(y * y) - my ** 2, blur(x * y) - mx * my
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    s = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx ** 2 + my ** 2 + c1) * (sxx + syy + c2))
    return s.flatten(1).mean(1)


def frechet_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2)) of Gaussians fitted to two feature sets."""
    a, b = a.double(), b.double()
    mu_a, mu_b = a.mean(0), b.mean(0)
    sa, sb = torch.cov(a.T), torch.cov(b.T)
    # Tr((S_a S_b)^(1/2)) = sum of sqrt(eigenvalues of S_a^(1/2) S_b S_a^(1/2)), which is symmetric PSD.
    ea, va = torch.linalg.eigh(sa)
    root_a = (va * ea.clamp_min(0).sqrt()) @ va.T
    middle = torch.linalg.eigvalsh(root_a @ sb @ root_a).clamp_min(0).sqrt().sum()
    return float((mu_a - mu_b).pow(2).sum() + sa.trace() + sb.trace() - 2 * middle)


def inception_score(probs: torch.Tensor) -> float:
    """exp(E_x KL(p(y|x) || p(y))) of class probabilities (one row per image)."""
    p = probs.double().clamp_min(1e-12)
    marginal = p.mean(0, keepdim=True)
    return float(torch.exp((p * (p.log() - marginal.log())).sum(1).mean()))


class DeiTScorer:
    """deit-tiny's class-token features and class probabilities of [-1, 1] images."""

    def __init__(self, model=None, batch_size: int = 256):
        from .. import zoo

        self.model = model if model is not None else zoo.load("deit-tiny")
        self.model.eval()
        proc = zoo.processor("deit-tiny") if model is None else None
        self.size = int(proc.size["height"]) if proc is not None else 64
        mean = proc.image_mean if proc is not None else (0.485, 0.456, 0.406)
        std = proc.image_std if proc is not None else (0.229, 0.224, 0.225)
        self.mean = torch.tensor(mean).view(1, 3, 1, 1)
        self.std = torch.tensor(std).view(1, 3, 1, 1)
        self.batch_size = batch_size

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feats, probs = [], []
        for start in range(0, images.shape[0], self.batch_size):
            x = to_unit(images[start:start + self.batch_size])
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False)
            x = (x - self.mean) / self.std
            hidden = self.model.vit(pixel_values=x).last_hidden_state[:, 0]
            feats.append(hidden.float())
            probs.append(self.model.classifier(hidden).float().softmax(-1))
        return torch.cat(feats), torch.cat(probs)


def real_images(n: int, size: int = 16, folder=None, seed: int = 0) -> torch.Tensor:
    """``n`` class-balanced images of ``folder`` (class subfolders or a zip; default: the CIFAR-10
    test set of the shared data), area-resized to ``size`` (as zoo:ddpm-tiny was trained), in [-1, 1]."""
    import numpy as np
    from PIL import Image

    ds = ImageFolder(folder if folder is not None else data_path("cifar10", "test"), limit=n, seed=seed)
    out = torch.empty(len(ds), 3, size, size)
    for i in range(len(ds)):
        img, _ = ds[i]
        img = img.convert("RGB").resize((size, size), resample=Image.BOX)
        out[i] = torch.from_numpy(np.asarray(img, dtype=np.float32).copy()).permute(2, 0, 1) / 127.5 - 1
    return out


def generation_metrics(samples: torch.Tensor, reference_samples: torch.Tensor | None, real_features: torch.Tensor,
                       scorer: DeiTScorer) -> dict:
    """FID (deit-tiny features) against real images, the IS analogue, and PSNR/SSIM (mean and standard
    error over images) against the full-precision samples of the same noise when given."""
    feats, probs = scorer(samples)
    out = {"n": int(samples.shape[0]), "fid_deit": frechet_distance(feats, real_features), "is_deit": inception_score(probs)}
    if reference_samples is not None:
        out["psnr"], out["psnr_se"] = _mean_se(psnr(samples, reference_samples))
        out["ssim"], out["ssim_se"] = _mean_se(ssim(samples, reference_samples))
    return out


def evaluate_generation(model, reference=None, real=None, samples: int = 500, steps: int = 50, reals: int = 1000,
                        seed: int = 0, scheduler=None, progress: bool = True) -> dict:
    """Sample ``samples`` images with ``model`` (DDIM, ``steps`` steps, the noise of ``seed``) and score
    them: FID and IS analogue in deit-tiny's space against ``reals`` images of ``real``, and PSNR /
    SSIM against the ``reference`` (full-precision) model's samples from the same noise."""
    from ..data.diffusion import initial_noise, sample
    from ..models.loading import load_scheduler
    from ..models.unet import sample_shape

    scheduler = scheduler or load_scheduler(model)
    shape = sample_shape(model)
    size = shape[-1]
    noise = initial_noise(samples, shape, seed)
    images = sample(model, scheduler, noise, steps, progress=progress)
    ref = sample(reference, scheduler, noise, steps, progress=progress, desc="sampling the reference") if reference is not None else None
    scorer = DeiTScorer()
    real_features = scorer(real_images(reals, size=size, folder=real, seed=seed))[0]
    out = generation_metrics(images, ref, real_features, scorer)
    out.update(task="generation", steps=steps, reals=int(real_features.shape[0]),
               note="fid_deit and is_deit use zoo:deit-tiny features, not Inception: not comparable to published FID/IS")
    return out
