"""Synthetic calibration images, made from the model itself: data-free calibration.

Images start as Gaussian noise in the model's normalised pixel space and are optimised by gradient
descent (Adam) on a loss computed by the full-precision model. Recipes:

- ``noise``: no optimisation, the Gaussian noise itself (the weakest baseline).
- ``psaq``: PSAQ-ViT (Li et al., ECCV 2022): maximise the differential entropy of the patch
  similarities of every MHSA output (a Gaussian kernel density estimate), with class guidance.
- ``clamp``: CLAMP-ViT (Ramachandran et al., ECCV 2024): a patch-level contrastive loss on every
  MHSA output. For each patch, the positives are the ``top_n`` most similar patches within its
  ``neighbourhood`` × ``neighbourhood`` spatial window, the negatives every other patch of the image
  (InfoNCE at ``temperature``). Plus class guidance and image priors, and, in a later cycle, the
  quantized model's feedback.

Terms every optimised recipe adds:

- class guidance: cross-entropy of the model's head towards a random target per image (the
  classifier's labels; for a CLIP model, zero-shot logits against the built-in sentences of
  :mod:`vitq.data.texts`, which then also calibrate its text tower);
- image priors: total variation and the L2 norm of the image (DeepInversion's), and random jitter
  and flips between steps;
- feedback (CLAMP's cycles): with a quantized model, minus the KL divergence of its head output from
  the full-precision one, so that the next images are those the quantized model still gets wrong.

The result, :class:`SyntheticImages`, iterates as calibration batches and saves as PNGs.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError, ModelError

RECIPES = ("noise", "psaq", "clamp")


@dataclass(frozen=True)
class SynthesisConfig:
    recipe: str = "clamp"
    steps: int = 500
    lr: float = 0.25
    batch_size: int = 32
    neighbourhood: int = 3  # CLAMP: side of the square spatial window around a patch
    top_n: int = 2  # CLAMP: positives per patch within the window
    temperature: float = 0.2  # CLAMP: InfoNCE temperature
    ce_weight: float = 1.0
    tv_weight: float = 0.05
    l2_weight: float = 1e-4
    feedback_weight: float = 1.0
    jitter: int = 2  # pixels of random shift between steps (0: none)
    seed: int = 0

    def __post_init__(self):
        if self.recipe not in RECIPES:
            raise ConfigError(f"unknown synthesis recipe {self.recipe!r}", hint=f"use one of: {', '.join(RECIPES)}")
        if self.steps < 0 or self.batch_size < 1:
            raise ConfigError(f"need steps >= 0 and batch_size >= 1, got {self.steps} and {self.batch_size}")
        if self.neighbourhood < 3 or self.neighbourhood % 2 == 0:
            raise ConfigError(f"neighbourhood must be an odd window side of at least 3, got {self.neighbourhood}")
        if not 1 <= self.top_n < self.neighbourhood ** 2:
            raise ConfigError(f"top_n must be between 1 and {self.neighbourhood ** 2 - 1} (the patches in the window)")
        if self.temperature <= 0 or self.lr <= 0:
            raise ConfigError("temperature and lr must be positive")


@dataclass
class SyntheticImages:
    """Images in the model's normalised pixel space, with the target each was guided to."""

    pixel_values: torch.Tensor  # (N, 3, H, W)
    targets: torch.Tensor  # (N,) class index (or sentence index for a CLIP model)
    low: torch.Tensor  # (3,) normalised value of a black pixel
    high: torch.Tensor  # (3,) normalised value of a white pixel
    recipe: str
    seconds: float = 0.0
    sentences: list[str] | None = None  # a CLIP model's guidance texts (targets index them)
    tokenizer: object = field(default=None, repr=False)
    batch_size: int = 32

    def __len__(self) -> int:
        return (len(self.pixel_values) + self.batch_size - 1) // self.batch_size

    def __iter__(self):
        """Calibration batches; for a CLIP model, each image's sentence calibrates the text tower."""
        for start in range(0, len(self.pixel_values), self.batch_size):
            batch = {"pixel_values": self.pixel_values[start : start + self.batch_size]}
            if self.tokenizer is not None and self.sentences is not None:
                texts = [self.sentences[int(t)] for t in self.targets[start : start + self.batch_size]]
                tok = self.tokenizer(texts, padding=True, truncation=True, return_tensors="pt")
                batch["input_ids"], batch["attention_mask"] = tok["input_ids"], tok["attention_mask"]
            yield batch

    def as_uint8(self) -> torch.Tensor:
        """(N, H, W, 3) uint8 RGB."""
        unit = (self.pixel_values - self.low.view(1, 3, 1, 1)) / (self.high - self.low).view(1, 3, 1, 1)
        return (unit.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).contiguous()

    def save_pngs(self, folder: str | Path) -> list[Path]:
        """One PNG per image (``synthetic_00000.png``, ...), each written atomically."""
        import io

        from PIL import Image

        from ..io_utils import atomic_write_bytes

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        paths = []
        for i, img in enumerate(self.as_uint8().numpy()):
            buf = io.BytesIO()
            Image.fromarray(img).save(buf, format="PNG")
            paths.append(atomic_write_bytes(folder / f"synthetic_{i:05d}.png", buf.getvalue()))
        return paths


# -- the model's view -----------------------------------------------------------------------------
def pixel_range(transform, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The normalised values of a black and a white pixel under the model's image transform."""
    from PIL import Image

    lo = transform(Image.new("RGB", (size, size), (0, 0, 0)))
    hi = transform(Image.new("RGB", (size, size), (255, 255, 255)))
    return lo.flatten(1).mean(1), hi.flatten(1).mean(1)


class _PatchTaps:
    """Forward hooks on every block's attention module of the image tower: their outputs' patch
    tokens (the prefix tokens, class and registers, dropped), as (B, grid, grid, C)."""

    def __init__(self, model: nn.Module):
        from ..models.families import blocks_of, family_of

        family = family_of(model)
        blocks = blocks_of(model, "image")
        if not blocks:
            raise ModelError(f"{type(model).__name__} has no image transformer blocks to synthesise images for",
                             hint="data-free calibration needs a ViT-style image model")
        self.modules = [model.get_submodule(f"{b}.{family.block_roles(b).attention}") for b in blocks]
        self.outputs: list[torch.Tensor] = []
        self.handles = []

    def __enter__(self):
        def hook(mod, args, out):
            self.outputs.append(out[0] if isinstance(out, (tuple, list)) else out)

        self.handles = [m.register_forward_hook(hook) for m in self.modules]
        return self

    def __exit__(self, *exc):
        for h in self.handles:
            h.remove()

    def grids(self) -> list[torch.Tensor]:
        out = []
        for t in self.outputs:
            tokens = t.shape[1]
            side = int(math.isqrt(tokens))
            prefix = tokens - side * side
            if side < 2 or prefix > 8:
                raise ModelError(f"the image tower's {tokens} tokens are not a square grid of patches (plus a few class tokens)",
                                 hint="patch-level synthesis needs a ViT-style token layout")
            out.append(t[:, prefix:].reshape(t.shape[0], side, side, t.shape[-1]))
        self.outputs = []
        return out


# -- losses ---------------------------------------------------------------------------------------
def _window_mask(side: int, window: int, device) -> torch.Tensor:
    """(P, P) True where patch j lies in the window around patch i (j != i)."""
    r = torch.arange(side, device=device).repeat_interleave(side)
    c = torch.arange(side, device=device).repeat(side)
    half = window // 2
    near = ((r[:, None] - r[None, :]).abs() <= half) & ((c[:, None] - c[None, :]).abs() <= half)
    return near & ~torch.eye(side * side, dtype=torch.bool, device=device)


def patch_contrastive(grid: torch.Tensor, window: int = 3, top_n: int = 2, temperature: float = 0.2) -> torch.Tensor:
    """CLAMP-ViT's patch-level InfoNCE on (B, S, S, C) patch features: for each patch, the ``top_n``
    most similar patches of its window are positives, every other patch of the image a negative."""
    b, side, _, c = grid.shape
    f = F.normalize(grid.reshape(b, side * side, c).float(), dim=-1)
    sim = f @ f.transpose(1, 2) / temperature  # (B, P, P)
    near = _window_mask(side, window, grid.device)
    eye = torch.eye(side * side, dtype=torch.bool, device=grid.device)
    n = min(top_n, int(near.sum(1).min()))
    ranked = sim.detach().masked_fill(~near, float("-inf"))
    pos_idx = ranked.topk(n, dim=-1).indices  # (B, P, n)
    positives = torch.gather(sim, 2, pos_idx)
    all_but_self = sim.masked_fill(eye, float("-inf"))
    return (torch.logsumexp(all_but_self, dim=-1) - torch.logsumexp(positives, dim=-1)).mean()


def patch_similarity_entropy(grid: torch.Tensor, samples: int = 256, seed: int = 0) -> torch.Tensor:
    """PSAQ-ViT's differential entropy of the pairwise cosine similarities of the patches of each
    image, estimated with a Gaussian kernel density (Scott's bandwidth) on ``samples`` pairs."""
    b, side, _, c = grid.shape
    f = F.normalize(grid.reshape(b, side * side, c).float(), dim=-1)
    sim = f @ f.transpose(1, 2)
    p = side * side
    i, j = torch.triu_indices(p, p, offset=1, device=grid.device)
    if i.numel() > samples:
        pick = torch.randperm(i.numel(), generator=torch.Generator().manual_seed(seed))[:samples].to(grid.device)
        i, j = i[pick], j[pick]
    s = sim[:, i, j]  # (B, M)
    h = (s.std(dim=1, keepdim=True) * s.shape[1] ** (-1 / 5)).clamp_min(1e-3)  # Scott's rule, one dimension
    diff = (s[:, :, None] - s[:, None, :]) / h[:, :, None]
    density = torch.exp(-0.5 * diff.pow(2)).mean(-1) / (h * math.sqrt(2 * math.pi))
    return -torch.log(density.clamp_min(1e-12)).mean()  # the entropy estimate


def total_variation(x: torch.Tensor) -> torch.Tensor:
    return (x[..., 1:, :] - x[..., :-1, :]).pow(2).mean() + (x[..., :, 1:] - x[..., :, :-1]).pow(2).mean()


# -- guidance -------------------------------------------------------------------------------------
class _Head:
    """Logits the class guidance pushes towards a target: a classifier's own, or a CLIP model's
    zero-shot logits against the built-in sentences."""

    def __init__(self, model: nn.Module, tokenizer=None):
        from ..models.families import family_of

        self.model, self.family = model, family_of(model)
        self.sentences = None
        self.text = None
        if "text" in self.family.components:
            from .texts import sentences

            if tokenizer is None:
                from ..models.tokenizers import resolve_tokenizer

                tokenizer = resolve_tokenizer(model)
            self.sentences = sentences()
            tok = tokenizer(self.sentences, padding=True, truncation=True, return_tensors="pt")
            with torch.no_grad():
                emb = self.family.run(model, "text", {"input_ids": tok["input_ids"], "attention_mask": tok["attention_mask"]})
            self.text = F.normalize(emb.float(), dim=-1)
            from ..models.adapter import unwrap

            scale = getattr(unwrap(model), "logit_scale", None)
            self.scale = float(scale.detach().exp()) if isinstance(scale, torch.Tensor) else 100.0
        self.tokenizer = tokenizer

    @property
    def classes(self) -> int | None:
        if self.text is not None:
            return self.text.shape[0]
        config = getattr(self.model, "config", None)
        labels = getattr(config, "num_labels", None) if config is not None else None
        return int(labels) if labels else None

    def logits(self, pixel_values: torch.Tensor) -> torch.Tensor:
        out = self.family.encode_image(self.model, pixel_values)
        if self.text is None:
            return out.float()
        return self.scale * F.normalize(out.float(), dim=-1) @ self.text.to(out.device).T


# -- the loop -------------------------------------------------------------------------------------
def _recipe_loss(grids: list[torch.Tensor], cfg: SynthesisConfig, step: int) -> torch.Tensor:
    if cfg.recipe == "clamp":
        return sum(patch_contrastive(g, cfg.neighbourhood, cfg.top_n, cfg.temperature) for g in grids) / len(grids)
    return -sum(patch_similarity_entropy(g, seed=cfg.seed + step) for g in grids) / len(grids)


def _jitter(x: torch.Tensor, cfg: SynthesisConfig, gen: torch.Generator) -> torch.Tensor:
    if cfg.jitter > 0:
        dx, dy = (int(v) for v in torch.randint(-cfg.jitter, cfg.jitter + 1, (2,), generator=gen))
        x = torch.roll(x, shifts=(dx, dy), dims=(2, 3))
    if bool(torch.randint(0, 2, (1,), generator=gen)):
        x = torch.flip(x, dims=(3,))
    return x


def synthesize(model: nn.Module, num: int, cfg: SynthesisConfig = SynthesisConfig(), tokenizer=None,
               feedback: nn.Module | None = None, init: SyntheticImages | None = None, progress: bool = True) -> SyntheticImages:
    """``num`` synthetic calibration images for ``model`` (its quantization points, if any, are
    switched off: the full-precision model guides). With ``feedback`` (a quantized model, possibly
    ``model`` itself with its points on), the images also move to where its head output departs from
    the full-precision one. ``init`` continues from earlier images and their targets."""
    from tqdm.auto import tqdm

    from ..nn import points_disabled
    from ..tensors import device_of
    from .preprocess import image_size_of, image_transform

    if num < 1:
        raise ConfigError(f"need at least one synthetic image, got {num}")
    config = getattr(model, "config", None)
    size = image_size_of(config) if config is not None else 224
    low, high = pixel_range(image_transform(model), size)
    device = device_of(model)
    gen = torch.Generator().manual_seed(cfg.seed)
    was_training = model.training
    model.eval()
    start = time.perf_counter()
    with points_disabled(model):
        head = _Head(model, tokenizer)
    classes = head.classes
    if init is not None:
        pixels, targets = init.pixel_values.clone(), init.targets.clone()
    else:
        # noise with the spread of real images: a unit Gaussian in the normalised space, within range
        pixels = torch.randn(num, 3, size, size, generator=gen)
        pixels = torch.max(torch.min(pixels, high.view(1, 3, 1, 1)), low.view(1, 3, 1, 1))
        targets = torch.randint(0, classes, (num,), generator=gen) if classes else torch.zeros(num, dtype=torch.long)
    taps = _PatchTaps(model)
    student = None
    if feedback is not None and cfg.feedback_weight:
        student = head if feedback is model else _Head(feedback, head.tokenizer)
    steps = 0 if cfg.recipe == "noise" else cfg.steps
    chunks = range(0, num, cfg.batch_size)
    bar = tqdm(total=steps * len(chunks), desc=f"synthesising ({cfg.recipe})", disable=not progress or steps == 0, leave=False)
    out = []
    frozen = [p for p in model.parameters() if p.requires_grad]  # only the images learn
    for p in frozen:
        p.requires_grad_(False)
    try:
        with torch.enable_grad():
            for first in chunks:
                x = pixels[first : first + cfg.batch_size].clone().to(device).requires_grad_(True)
                y = targets[first : first + cfg.batch_size].to(device)
                opt = torch.optim.Adam([x], lr=cfg.lr)
                for step in range(steps):
                    opt.zero_grad(set_to_none=True)
                    view = _jitter(x, cfg, gen)
                    with points_disabled(model), taps:
                        logits = head.logits(view)
                    loss = _recipe_loss(taps.grids(), cfg, step)
                    if cfg.ce_weight and classes:
                        loss = loss + cfg.ce_weight * F.cross_entropy(logits, y)
                    loss = loss + cfg.tv_weight * total_variation(x) + cfg.l2_weight * x.pow(2).mean()
                    if student is not None:  # move to where the quantized head departs from the full-precision one
                        q = student.logits(view)
                        # through both heads: with straight-through rounding the quantized head alone
                        # moves like the full-precision one, and its KL to a fixed target fell instead of rising
                        kl = F.kl_div(F.log_softmax(q, -1), F.log_softmax(logits, -1), log_target=True, reduction="batchmean")
                        loss = loss - cfg.feedback_weight * kl
                    loss.backward()
                    opt.step()
                    with torch.no_grad():
                        x.copy_(torch.max(torch.min(x, high.to(x).view(1, 3, 1, 1)), low.to(x).view(1, 3, 1, 1)))
                    bar.update(1)
                    bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
                out.append(x.detach().cpu())
    finally:
        for p in frozen:
            p.requires_grad_(True)
        model.train(was_training)
    bar.close()
    return SyntheticImages(torch.cat(out), targets, low, high, cfg.recipe, time.perf_counter() - start,
                           sentences=head.sentences, tokenizer=head.tokenizer if head.sentences is not None else None,
                           batch_size=cfg.batch_size)
