"""Shared helpers for training the vitq reference models (clip-tiny, deit-tiny) on CPU.

The CPU is the bottleneck, so the training images are decoded once into a uint8 tensor and
augmented as whole batches with tensor ops; the loop runs under bf16 autocast with eager
attention (measured ~1.7x faster than SDPA's CPU flash kernel for 65 tokens, backward included).
Every random draw comes from a generator seeded by (seed, epoch), so a run is deterministic and
``--resume`` from an epoch checkpoint continues exactly as an uninterrupted run would.
Optional mixup/CutMix (``--mixup/--cutmix/--mix-p``) turn the labels into probability targets.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the hub is unreachable; never try it

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

import drop_path
from rand_augment import rand_augment
from vitq.data import ImageFolder, data_path

IMAGE_SIZE = 64
# ImageNet statistics; written into the shipped image processor config.
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
REPO = Path(__file__).resolve().parents[1]
WEIGHTS_DIR = REPO / "src" / "vitq" / "zoo" / "weights"


# -- run set-up ----------------------------------------------------------------------------------
def common_args(description: str, name: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--weight-decay", type=float, default=0.05)
    p.add_argument("--warmup", type=float, default=1.0, help="epochs of linear warm-up")
    p.add_argument("--cooldown", type=float, default=0.4, help="fraction of the steps in the final cosine decay")
    p.add_argument("--label-smoothing", type=float, default=0.1)
    p.add_argument("--lowres-p", type=float, default=0.3, help="probability of the 32/16-px round trip")
    p.add_argument("--crop-scale", type=float, default=0.25, help="smallest area fraction of the random resized crop")
    p.add_argument("--jitter", type=float, default=0.3, help="brightness/contrast/saturation strength")
    p.add_argument("--threads", type=int, default=1, help="1 beats 2 when other jobs share the 2 cores")
    p.add_argument("--low-res", type=int, default=32, help="input size of the early, cheap epochs")
    p.add_argument("--low-res-epochs", type=int, default=0, help="epochs at --low-res before full 64 px")
    p.add_argument("--limit", type=int, default=None, help="train on a balanced subset (smoke tests)")
    p.add_argument("--eval-limit", type=int, default=None, help="final evaluation on a balanced subset (smoke tests)")
    p.add_argument("--run-dir", type=Path, default=REPO / "runs" / name)
    p.add_argument("--out", type=Path, default=WEIGHTS_DIR / name, help="packaged fp16 folder")
    p.add_argument("--resume", action="store_true", help="continue from the checkpoint RUN_DIR/last")
    p.add_argument("--stop-after", type=int, default=None,
                   help="exit after this epoch's checkpoint (to --resume later, possibly with other augmentation flags)")
    p.add_argument("--no-export", action="store_true", help="train only; do not write the package folder")
    p.add_argument("--init-from", type=Path, default=None,
                   help="start from these model weights (an epochNNN.safetensors of an earlier run, its RUN_DIR/last, or an older "
                        "epochNNN.pt) with a fresh optimiser and schedule")
    p.add_argument("--teacher", type=Path, default=None,
                   help="HF image-classifier folder (train_cnn_teacher.py) to distil from, DeiT-style")
    p.add_argument("--distill-weight", type=float, default=0.5,
                   help="with --teacher: weight of the teacher-label loss; the true-label loss gets 1 - this")
    p.add_argument("--distill-kind", choices=("hard", "soft"), default="hard",
                   help="teacher's argmax as the label (DeiT's hard distillation) or its softmax at --distill-tau")
    p.add_argument("--distill-tau", type=float, default=1.0, help="temperature of soft distillation")
    p.add_argument("--mixup", type=float, default=0.0, help="Beta(a, a) of mixup (DeiT: 0.8); 0: off")
    p.add_argument("--cutmix", type=float, default=0.0, help="Beta(a, a) of CutMix (DeiT: 1.0); 0: off")
    p.add_argument("--randaug", type=int, default=0, help="RandAugment operations per image (DeiT: 2); 0: off")
    p.add_argument("--randaug-m", type=float, default=9.0, help="RandAugment magnitude, 0-10 (DeiT: 9)")
    p.add_argument("--randaug-mstd", type=float, default=0.5, help="per-image std of the magnitude (DeiT: 0.5)")
    p.add_argument("--repeat-aug", type=int, default=1,
                   help="repeated augmentation: each epoch shows 1/K of the images K times each (DeiT: 3); 1: off")
    p.add_argument("--mix-p", type=float, default=1.0,
                   help="probability that a batch is mixed (mixup or CutMix, half each when both are on)")
    return p


def setup(args) -> None:
    if args.stop_after is not None and not 1 <= args.stop_after < args.epochs:
        raise SystemExit(f"--stop-after {args.stop_after} must lie between 1 and --epochs - 1 ({args.epochs - 1})")
    if not 0.0 <= args.distill_weight <= 1.0 or args.distill_tau <= 0:
        raise SystemExit("--distill-weight must lie in [0, 1] and --distill-tau be > 0")
    if args.mixup < 0 or args.cutmix < 0 or not 0.0 <= args.mix_p <= 1.0:
        raise SystemExit("--mixup and --cutmix must be >= 0 (0: off) and --mix-p lie in [0, 1]")
    if args.randaug < 0 or not 0.0 <= args.randaug_m <= 10.0 or args.randaug_mstd < 0:
        raise SystemExit("--randaug must be >= 0 (0: off), --randaug-m lie in [0, 10] and --randaug-mstd be >= 0")
    if args.repeat_aug < 1:
        raise SystemExit("--repeat-aug must be >= 1 (1: off; DeiT uses 3)")
    if not 0.0 <= getattr(args, "drop_path", 0.0) < 1.0:
        raise SystemExit("--drop-path must lie in [0, 1) (0: off; DeiT-Ti uses 0.1)")
    init_ok = args.init_from is None or args.init_from.is_file() or (args.init_from / "tensors.safetensors").is_file()
    if not init_ok:
        raise SystemExit(f"--init-from {args.init_from}: no such file (epochNNN.safetensors, a .pt state dict) or checkpoint folder")
    for flag, path, kind in (("--teacher", args.teacher, "folder"),):
        if path is not None and not (path / "config.json").is_file():
            raise SystemExit(f"{flag} {path}: no such {kind}" + (" with a config.json (an HF model folder)" if kind == "folder" else ""))
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    random.seed(args.seed)
    np.random.seed(args.seed)
    args.run_dir.mkdir(parents=True, exist_ok=True)


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """One generator per epoch: the data order and augmentation depend only on (seed, epoch)."""
    return torch.Generator().manual_seed(seed * 100_003 + epoch)


def epoch_order(n: int, g: torch.Generator, repeats: int = 1) -> torch.Tensor:
    """The epoch's image order. ``repeats`` > 1 is DeiT's repeated augmentation: n / repeats images,
    each ``repeats`` times in a row (so in the same batch, augmented independently); the epoch keeps
    its length."""
    order = torch.randperm(n, generator=g)
    if repeats <= 1:
        return order
    return order[: math.ceil(n / repeats)].repeat_interleave(repeats)[:n]


def environment() -> dict:
    return {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
    }


# -- data ----------------------------------------------------------------------------------------
def aug_config(args) -> "AugConfig":
    return AugConfig(scale=(args.crop_scale, 1.0), lowres_p=args.lowres_p, jitter=args.jitter,
                     randaug_ops=args.randaug, randaug_magnitude=args.randaug_m, randaug_std=args.randaug_mstd)


def tiny_imagenet_train() -> Path:
    return data_path("tiny-imagenet-200", "train-200-per-class.zip")


def tiny_imagenet_val() -> Path:
    return data_path("tiny-imagenet-200", "val")


def cifar10_test() -> Path:
    return data_path("cifar10", "test")


def decode_uint8(ds: ImageFolder, size: int = IMAGE_SIZE, desc: str = "decode") -> tuple[torch.Tensor, torch.Tensor]:
    """Decode every image once into an (N, 3, size, size) uint8 tensor plus labels."""
    images = torch.empty(len(ds), 3, size, size, dtype=torch.uint8)
    labels = torch.empty(len(ds), dtype=torch.long)
    for i in tqdm(range(len(ds)), desc=desc, mininterval=5, leave=False):
        img, label = ds[i]
        if img.size != (size, size):
            img = img.resize((size, size), resample=2)  # bilinear, as the shipped processor does
        images[i] = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1)
        labels[i] = label
    return images, labels


def normalize(x: torch.Tensor) -> torch.Tensor:
    """uint8 or [0, 1] float images -> the normalised float input the models were trained on."""
    if x.dtype == torch.uint8:
        x = x.float() / 255.0
    mean = torch.tensor(MEAN).view(1, 3, 1, 1)
    std = torch.tensor(STD).view(1, 3, 1, 1)
    return (x - mean) / std


# -- augmentation on batches ---------------------------------------------------------------------
@dataclass
class AugConfig:
    scale: tuple[float, float] = (0.25, 1.0)  # random-resized-crop area fraction
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip: float = 0.5
    lowres_p: float = 0.3  # simulate 32-px (CIFAR-like) and 16-px inputs: down, then back up
    jitter: float = 0.3  # brightness / contrast / saturation strength
    randaug_ops: int = 0  # RandAugment operations per image (DeiT: 2); 0: off
    randaug_magnitude: float = 9.0  # 0-10 scale
    randaug_std: float = 0.5  # per-image spread of the magnitude


def augment(x: torch.Tensor, g: torch.Generator, cfg: AugConfig, size: int = IMAGE_SIZE) -> torch.Tensor:
    """Random resized crop + flip (one affine grid_sample), RandAugment, low-res round trip, colour jitter.

    ``size`` < 64 gives the cheap early-epoch inputs (progressive resizing: 4x fewer tokens at 32 px).
    """
    x = x.float() / 255.0
    x = _crop_flip(x, g, cfg)
    if cfg.randaug_ops > 0:  # no draws when off: earlier runs replay unchanged
        x = rand_augment(x, g, cfg.randaug_ops, cfg.randaug_magnitude, cfg.randaug_std)
    x = _lowres(x, g, cfg.lowres_p)
    x = _jitter(x, g, cfg.jitter)
    if size != x.shape[-1]:
        x = F.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)
    return normalize(x.clamp_(0, 1))


def _crop_flip(x: torch.Tensor, g: torch.Generator, cfg: AugConfig) -> torch.Tensor:
    n = x.shape[0]
    area = torch.empty(n).uniform_(*cfg.scale, generator=g)
    log_r = torch.empty(n).uniform_(math.log(cfg.ratio[0]), math.log(cfg.ratio[1]), generator=g)
    ratio = log_r.exp()
    # Half-widths of the crop in normalised [-1, 1] coordinates, clipped to the image.
    sx = (area * ratio).sqrt().clamp(max=1.0)
    sy = (area / ratio).sqrt().clamp(max=1.0)
    cx = (torch.rand(n, generator=g) * 2 - 1) * (1 - sx)
    cy = (torch.rand(n, generator=g) * 2 - 1) * (1 - sy)
    flip = torch.where(torch.rand(n, generator=g) < cfg.flip, -1.0, 1.0)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = sx * flip
    theta[:, 0, 2] = cx
    theta[:, 1, 1] = sy
    theta[:, 1, 2] = cy
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def mix_batch(x: torch.Tensor, y: torch.Tensor, g: torch.Generator, num_classes: int | None, mixup: float,
              cutmix: float, p: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Mixup / CutMix (as in DeiT's recipe) of a batch with a shuffled copy of itself.

    Returns the images and, whenever mixing is on, probability targets (``lam`` on an image's own
    class, ``1 - lam`` on its partner's), which ``F.cross_entropy`` takes like class indices; a
    teacher then labels the mixed images themselves. With both off, ``x`` and ``y`` come back as
    they are and ``g`` is not touched, so runs without mixing draw exactly what they drew before
    these flags existed. All draws come from ``g``, so a run stays deterministic.
    """
    if mixup <= 0 and cutmix <= 0:
        return x, y
    soft = F.one_hot(y, num_classes).float()
    use = torch.rand(1, generator=g).item() < p
    pick_cutmix = torch.rand(1, generator=g).item() < (0.5 if mixup > 0 and cutmix > 0 else float(cutmix > 0))
    rng = np.random.default_rng(int(torch.randint(2**31 - 1, (1,), generator=g)))  # Beta needs numpy
    partner = torch.randperm(len(x), generator=g)
    if not use:
        return x, soft
    if pick_cutmix:
        lam = float(rng.beta(cutmix, cutmix))
        h, w = x.shape[-2:]
        bh, bw = round(h * math.sqrt(1 - lam)), round(w * math.sqrt(1 - lam))
        top, left = int(rng.integers(0, h - bh + 1)), int(rng.integers(0, w - bw + 1))
        x = x.clone()
        x[..., top : top + bh, left : left + bw] = x[partner, :, top : top + bh, left : left + bw]
        lam = 1 - bh * bw / (h * w)  # the pasted box's exact share after rounding
    else:
        lam = float(rng.beta(mixup, mixup))
        x = lam * x + (1 - lam) * x[partner]
    return x, lam * soft + (1 - lam) * soft[partner]


def _lowres(x: torch.Tensor, g: torch.Generator, p: float) -> torch.Tensor:
    """Down to 32 px (2/3 of the picks) or 16 px and back up, so 32-px test images are familiar."""
    if p <= 0:
        return x
    pick = torch.rand(x.shape[0], generator=g)
    size = x.shape[-1]
    for lo, hi, small in ((0.0, p * 2 / 3, size // 2), (p * 2 / 3, p, size // 4)):
        idx = ((pick >= lo) & (pick < hi)).nonzero().flatten()
        if idx.numel():
            down = F.interpolate(x[idx], size=small, mode="bilinear", antialias=True, align_corners=False)
            x[idx] = F.interpolate(down, size=size, mode="bilinear", align_corners=False)
    return x


def _jitter(x: torch.Tensor, g: torch.Generator, s: float) -> torch.Tensor:
    if s <= 0:
        return x
    n = x.shape[0]

    def factor():
        return (1 + (torch.rand(n, 1, 1, 1, generator=g) * 2 - 1) * s)

    x = x * factor()  # brightness
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = (x - mean) * factor() + mean  # contrast
    grey = x.mean(dim=1, keepdim=True)
    return (x - grey) * factor() + grey  # saturation


# -- initialisation and distillation -------------------------------------------------------------
def init_weights(args, model: torch.nn.Module) -> None:
    """Load ``--init-from`` into a fresh run (not on --resume, whose checkpoint holds the newer weights).
    The recipe in training.json records the path."""
    if args.init_from is None or (args.resume and has_checkpoint(args.run_dir)):
        return
    path = Path(args.init_from)
    if path.is_dir():  # a RUN_DIR/last checkpoint folder
        from safetensors.torch import load_file

        blob = {k[len("model."):]: v for k, v in load_file(str(path / "tensors.safetensors")).items() if k.startswith("model.")}
    elif path.suffix == ".safetensors":  # epochNNN.safetensors
        from safetensors.torch import load_file

        blob = load_file(str(path))
    else:  # a .pt state dict of earlier runs, read without unpickling code
        blob = torch.load(path, map_location="cpu", weights_only=True)
        blob = blob["model"] if "model" in blob else blob
    try:
        model.load_state_dict(blob)
    except RuntimeError as err:
        raise SystemExit(f"--init-from {args.init_from} does not fit this model (same --width/--depth/--heads/--patch "
                         f"and heads as the run that wrote it?): {str(err).splitlines()[0]}") from None
    print(f"initialised from {args.init_from}", flush=True)


class Distiller:
    """DeiT-style distillation from a frozen classifier on the very images the student sees.

    ``loss(student_logits, y, teacher_out)``: (1 - w) * CE(student, y) + w * CE(student, teacher
    target), the target being the teacher's argmax (hard, DeiT's choice: it beat soft distillation
    there) or its softmax at temperature tau (soft, KL-equivalent up to a constant). Without a
    teacher it is plain CE with the given label smoothing.
    """

    def __init__(self, args, label_smoothing: float = 0.0, class_names: list[str] | None = None):
        self.weight = args.distill_weight if args.teacher is not None else 0.0
        self.kind, self.tau, self.smoothing = args.distill_kind, args.distill_tau, label_smoothing
        self.teacher, self.folder = None, args.teacher
        if args.teacher is not None:
            from transformers import AutoModelForImageClassification

            self.teacher = AutoModelForImageClassification.from_pretrained(args.teacher, dtype=torch.float32).eval()
            for p in self.teacher.parameters():
                p.requires_grad = False
            if class_names is not None:
                self._check_classes(class_names)

    def _check_classes(self, class_names: list[str]) -> None:
        """The teacher's logit k must mean the student's class k, or its labels teach nonsense silently."""
        id2label = self.teacher.config.id2label
        theirs = [id2label[i] for i in range(len(id2label))]
        if theirs != list(class_names):
            first = next((i for i, (a, b) in enumerate(zip(theirs, class_names)) if a != b), min(len(theirs), len(class_names)))
            raise SystemExit(f"--teacher {self.folder}: its {len(theirs)} classes differ from the {len(class_names)} "
                             f"training classes (first at index {first}); train it on the same data "
                             "(scripts/train_cnn_teacher.py)")

    def report(self) -> dict | None:
        """What the run's training.json records about the teacher (its own metrics when its run folder has them)."""
        if self.teacher is None:
            return None
        out = {"folder": str(self.folder), "class": type(self.teacher).__name__,
               "parameters": sum(p.numel() for p in self.teacher.parameters())}
        run = self.folder.parent / "training.json"  # train_cnn_teacher.py writes final/ beside it
        if run.is_file():
            out["metrics"] = json.loads(run.read_text()).get("metrics_fp32")
        return out

    @torch.no_grad()
    def targets(self, x: torch.Tensor) -> torch.Tensor | None:
        """The teacher's logits for the student's (normalised, augmented) batch; None without a teacher."""
        if self.teacher is None or self.weight == 0:
            return None
        return self.teacher(pixel_values=x).logits.float()

    def loss(self, logits: torch.Tensor, y: torch.Tensor, teacher_logits: torch.Tensor | None) -> torch.Tensor:
        true = F.cross_entropy(logits, y, label_smoothing=self.smoothing)
        if teacher_logits is None or self.weight == 0:
            return true
        if self.kind == "hard":
            taught = F.cross_entropy(logits, teacher_logits.argmax(dim=1))
        else:
            soft = F.softmax(teacher_logits / self.tau, dim=1)
            taught = F.cross_entropy(logits / self.tau, soft) * self.tau**2
        return (1 - self.weight) * true + self.weight * taught


# -- optimisation --------------------------------------------------------------------------------
def param_groups(named: list[tuple[str, torch.nn.Parameter]], lr: float, wd: float) -> list[dict]:
    """No weight decay on biases, norms, embeddings' position/cls tokens and the logit scale."""
    decay, no_decay = [], []
    for name, p in named:
        if not p.requires_grad:
            continue
        skip = p.ndim < 2 or "position" in name or "cls_token" in name or "logit_scale" in name
        (no_decay if skip else decay).append(p)
    return [
        {"params": decay, "lr": lr, "weight_decay": wd},
        {"params": no_decay, "lr": lr, "weight_decay": 0.0},
    ]


def warmup_stable_decay(optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int, cooldown: float):
    """Linear warm-up, constant, then a cosine cooldown to zero over the last ``cooldown`` fraction.

    Until the cooldown starts the LR does not depend on the total length, so a run resumed with a
    different ``--epochs`` (chosen once the real speed of a shared CPU is known) is identical to a
    fresh run with that ``--epochs``.
    """
    warm = max(1, warmup_steps)
    decay_start = min(total_steps - 1, max(warm, int(total_steps * (1 - cooldown))))

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        if step < decay_start:
            return 1.0
        t = (step - decay_start) / max(1, total_steps - decay_start)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, t)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


# -- the loop ------------------------------------------------------------------------------------
def train_loop(
    args,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    images: torch.Tensor,
    labels: torch.Tensor,
    loss_fn: Callable[[torch.Tensor, torch.Tensor, torch.Generator], torch.Tensor],
    evaluate: Callable[[], dict],
    aug: AugConfig,
    frozen: tuple[torch.nn.Module, ...] = (),
    num_classes: int | None = None,
) -> dict:
    """Train for ``args.epochs`` epochs on vitq's training loop (vitq.train: seeded epoch order,
    safetensors checkpoints in RUN_DIR/last after every epoch, epochNNN.safetensors weights,
    ``--resume``, ``--stop-after``); returns the run history.

    ``loss_fn(x, y, g)`` gets normalised augmented images (``--low-res`` px during the first
    ``--low-res-epochs``, then 64 px), labels and the epoch generator; it runs under bf16 autocast.
    ``evaluate()`` returns a dict of quick metrics logged after each epoch.
    ``frozen`` modules stay in eval mode (no dropout) while the rest trains.
    With ``--mixup``/``--cutmix`` the labels become probability targets over ``num_classes``.
    """
    from vitq.errors import ConfigError
    from vitq.train import TrainConfig, train

    if (args.mixup > 0 or args.cutmix > 0) and num_classes is None:
        raise ValueError("train_loop needs num_classes when --mixup or --cutmix is on")
    steps_per_epoch = len(images) // args.batch_size  # drop the ragged last batch
    scheduler = warmup_stable_decay(optimizer, steps_per_epoch * args.epochs, int(steps_per_epoch * args.warmup), args.cooldown)
    size = [IMAGE_SIZE]

    def on_epoch_start(epoch: int, g: torch.Generator) -> None:
        drop_path.use_generator(model, g)
        for module in frozen:
            module.eval()
        size[0] = args.low_res if epoch < args.low_res_epochs else IMAGE_SIZE

    def step(idx: torch.Tensor, ctx) -> torch.Tensor:
        x = augment(images[idx], ctx.generator, aug, size[0])
        x, y = mix_batch(x, labels[idx], ctx.generator, num_classes, args.mixup, args.cutmix, args.mix_p)
        with torch.autocast("cpu", dtype=torch.bfloat16):  # the loss only: augmentation stays fp32
            return loss_fn(x, y, ctx.generator)

    def on_epoch_end(epoch: int, loss: float) -> dict:
        metrics = {"size": size[0], **evaluate()}
        print(json.dumps({"epoch": epoch + 1, "loss": loss, **metrics}), flush=True)
        return metrics

    config = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, seed=args.seed, grad_clip=1.0, checkpoint_dir=args.run_dir,
                         resume=args.resume, stop_after=args.stop_after, keep_epochs=True)
    try:
        state = train(model, optimizer, len(images), step, config, scheduler=scheduler,
                      order=lambda n, g: epoch_order(n, g, getattr(args, "repeat_aug", 1)),
                      on_epoch_start=on_epoch_start, on_epoch_end=on_epoch_end)
    except ConfigError as err:
        raise SystemExit(f"{err.message}" + (f" ({err.hint})" if err.hint else "")) from None
    if state.stopped_early:
        print(f"stopped after epoch {state.epoch} as asked (--stop-after); continue with --resume", flush=True)
        raise SystemExit(0)
    model.eval()
    return state.to_dict()


def has_checkpoint(run_dir: Path) -> bool:
    return (run_dir / "last" / "state.json").is_file()


# -- evaluation helpers --------------------------------------------------------------------------
@torch.no_grad()
def batched(fn: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor, batch: int = 500) -> torch.Tensor:
    """Apply ``fn`` to normalised uint8 images in batches under bf16 autocast; fp32 outputs."""
    outs = []
    for i in range(0, len(images), batch):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            outs.append(fn(normalize(images[i : i + batch])).float())
    return torch.cat(outs)


def topk(logits: torch.Tensor, labels: torch.Tensor, ks=(1, 5)) -> dict:
    ranked = logits.topk(max(ks), dim=1).indices
    hit = ranked == labels[:, None]
    return {f"top{k}": round(100.0 * hit[:, :k].any(dim=1).float().mean().item(), 2) for k in ks}


def processor_images(ds: ImageFolder, processor, batch: int = 500):
    """Yield (pixel_values, labels) through the shipped image processor, as a user would."""
    for i in range(0, len(ds), batch):
        items = [ds[j] for j in range(i, min(i + batch, len(ds)))]
        pixels = processor(images=[im for im, _ in items], return_tensors="pt")["pixel_values"]
        yield pixels, torch.tensor([lab for _, lab in items])


def image_processor():
    from transformers import ViTImageProcessor

    return ViTImageProcessor(
        do_resize=True,
        size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
        resample=2,  # bilinear
        do_rescale=True,
        rescale_factor=1 / 255,
        do_normalize=True,
        image_mean=list(MEAN),
        image_std=list(STD),
    )


def save_fp16(model: torch.nn.Module, folder: Path) -> None:
    """Write an HF folder with fp16 tensors (half the bytes; checked against fp32 after reloading)."""
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob("*.safetensors"):
        stale.unlink()
    model.to(torch.float16).save_pretrained(folder, safe_serialization=True)
    model.to(torch.float32)
    # Plain ``from_pretrained(folder)`` follows config.dtype: make it float32, as vitq.zoo.load does.
    config = json.loads((folder / "config.json").read_text())
    config["dtype"] = "float32"
    (folder / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def run_report(args, state: dict, aug: AugConfig, wall: float, n_train: int, name: str, model, **extra) -> dict:
    """The training.json written next to the weights: recipe, data, wall time (metrics added later)."""
    hidden = ("run_dir", "out", "deit_out", "resume", "no_export")
    return {
        "model": name,
        "class": type(model).__name__,
        "parameters": sum(p.numel() for p in model.parameters()),
        "recipe": {k: v for k, v in vars(args).items() if k not in hidden},
        "augmentation": aug,
        "data": {"train": f"tiny-imagenet-200/{tiny_imagenet_train().name}", "train_images": n_train},
        **extra,
        "history": state["history"],
        "train_seconds": round(state["train_seconds"], 1),
        "wall_seconds_this_process": round(wall, 1),
        "environment": environment(),
    }


def write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, default=_jsonable) + "\n")


def _jsonable(obj):
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "__dataclass_fields__"):
        return asdict(obj)
    return str(obj)


def folder_megabytes(folder: Path) -> float:
    return round(sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) / 1e6, 2)


def vit_args(p: argparse.ArgumentParser) -> None:
    """The ViT size flags both reference-model scripts take."""
    p.add_argument("--width", type=int, default=192)
    p.add_argument("--depth", type=int, default=6)
    p.add_argument("--heads", type=int, default=3)
    p.add_argument("--patch", type=int, default=8)
    p.add_argument("--drop-path", type=float, default=0.0,
                   help="stochastic depth: the last block's branch-drop rate, linear from 0 at the first (DeiT-Ti: 0.1)")


def label_maps(classes) -> dict:
    """The HF classifier config fields for the Tiny ImageNet classes (names from classes.tsv)."""
    return {"num_labels": len(classes), "id2label": {i: c.name for i, c in enumerate(classes)},
            "label2id": {c.name: i for i, c in enumerate(classes)}}


def vit_config(args, **extra):
    """The ViT of both reference models (``--patch/--width/--depth/--heads``), eager attention."""
    from transformers import ViTConfig

    config = ViTConfig(
        image_size=IMAGE_SIZE,
        patch_size=args.patch,
        hidden_size=args.width,
        num_hidden_layers=args.depth,
        num_attention_heads=args.heads,
        intermediate_size=4 * args.width,
        hidden_act="gelu",
        **extra,
    )
    config._attn_implementation = "eager"  # faster than SDPA on this CPU for training
    return config
