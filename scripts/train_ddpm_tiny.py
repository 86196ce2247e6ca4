"""Train zoo:ddpm-tiny: a small diffusers UNet2DModel (DDPM epsilon objective) on CIFAR-10 at 16x16.

No pretrained diffusion weights are reachable offline, so vitq trains its own reference model for
Q-Diffusion. 16x16 was chosen over 32x32 because one training step at 32x32 costs 4.7x more on this
2-core CPU (2.1 s against 0.45 s per batch of 64 on one thread), and an hour at 32x32 (about 1,700
steps) does not reach recognisable samples. The architecture keeps what Q-Diffusion quantizes:
ResNet blocks, self-attention at 8x8 (both attention matmuls) and up-blocks that concatenate skip
connections.

    python scripts/train_ddpm_tiny.py                      # ~1 h on one thread; writes the package folder
    python scripts/train_ddpm_tiny.py --resume             # continue from RUN_DIR/last after an interruption

The loop is vitq.train's: a seeded generator per epoch draws the order, flips, timesteps and noise,
so ``--resume`` ends with the same weights as an uninterrupted run. An exponential moving average of
the weights (the model that is shipped and sampled) is updated after every optimiser step.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from tqdm import tqdm

from vitq.data import ImageFolder, data_path
from vitq.train import TrainConfig, train

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "src" / "vitq" / "zoo" / "weights" / "ddpm-tiny"
SIZE = 16


def unet_config() -> dict:
    return dict(sample_size=SIZE, in_channels=3, out_channels=3, layers_per_block=1,
                block_out_channels=(32, 64, 128), norm_num_groups=16,
                down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
                up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D"))


def scheduler_config() -> dict:
    # the cosine schedule of improved DDPM: the linear one destroys 16-px images too early
    return dict(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", prediction_type="epsilon", clip_sample=True)


class Trainee(nn.Module):
    """The trained UNet and its EMA copy (saved together in every checkpoint)."""

    def __init__(self, unet: nn.Module):
        super().__init__()
        self.unet = unet
        self.ema = copy.deepcopy(unet).requires_grad_(False)
        self.register_buffer("ema_updates", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def update_ema(self, decay: float) -> None:
        n = int(self.ema_updates)
        d = min(decay, (1 + n) / (10 + n))  # warm-up: the early average follows the weights closely
        for e, p in zip(self.ema.parameters(), self.unet.parameters()):
            e.lerp_(p, 1 - d)
        self.ema_updates += 1


class ScheduleWithEMA:
    """The loop calls ``scheduler.step()`` after each optimiser step: advance the LR and the EMA."""

    def __init__(self, lr_schedule, trainee: Trainee, decay: float):
        self.lr_schedule, self.trainee, self.decay = lr_schedule, trainee, decay

    def step(self) -> None:
        self.lr_schedule.step()
        self.trainee.update_ema(self.decay)

    def state_dict(self) -> dict:
        return self.lr_schedule.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.lr_schedule.load_state_dict(state)


def decode_cifar_train(limit: int | None) -> torch.Tensor:
    ds = ImageFolder(data_path("cifar10", "train-1000-per-class.zip"), limit=limit)
    images = torch.empty(len(ds), 3, SIZE, SIZE, dtype=torch.uint8)
    for i in tqdm(range(len(ds)), desc="decode", mininterval=5, leave=False):
        img, _ = ds[i]
        img = img.convert("RGB").resize((SIZE, SIZE), resample=Image.BOX)  # area average: no aliasing
        images[i] = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1)
    return images


@torch.no_grad()
def sample_grid(unet: nn.Module, path: Path, n: int = 64, steps: int = 50, seed: int = 0) -> None:
    from diffusers import DDIMScheduler

    sched = DDIMScheduler(**scheduler_config())
    sched.set_timesteps(steps)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, SIZE, SIZE, generator=g)
    for t in sched.timesteps:
        x = sched.step(unet(x, t).sample, t, x).prev_sample
    x = ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    side = int(math.ceil(math.sqrt(n)))
    grid = torch.zeros(3, side * SIZE, side * SIZE, dtype=torch.uint8)
    for i in range(n):
        r, c = divmod(i, side)
        grid[:, r * SIZE:(r + 1) * SIZE, c * SIZE:(c + 1) * SIZE] = x[i]
    Image.fromarray(grid.permute(1, 2, 0).numpy()).resize((side * SIZE * 2,) * 2, Image.NEAREST).save(path)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=int, default=50)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup-steps", type=int, default=500)
    p.add_argument("--ema", type=float, default=0.999, help="EMA decay of the shipped weights")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--limit", type=int, default=None, help="train on a balanced subset (smoke tests)")
    p.add_argument("--sample-every", type=int, default=10, help="write a DDIM sample grid every N epochs")
    p.add_argument("--run-dir", type=Path, default=REPO / "runs" / "ddpm-tiny")
    p.add_argument("--out", type=Path, default=OUT)
    p.add_argument("--resume", action="store_true")
    p.add_argument("--stop-after", type=int, default=None)
    p.add_argument("--no-export", action="store_true")
    args = p.parse_args()

    from diffusers import DDPMScheduler, UNet2DModel

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    args.run_dir.mkdir(parents=True, exist_ok=True)
    images = decode_cifar_train(args.limit)
    trainee = Trainee(UNet2DModel(**unet_config()))
    noise_schedule = DDPMScheduler(**scheduler_config())
    alphas = noise_schedule.alphas_cumprod
    opt = torch.optim.AdamW(trainee.unet.parameters(), lr=args.lr, weight_decay=0.0)
    per_epoch = len(images) // args.batch_size
    total = per_epoch * args.epochs

    def lr_at(step: int) -> float:  # linear warm-up, then cosine to 5% of the peak
        if step < args.warmup_steps:
            return (step + 1) / args.warmup_steps
        frac = (step - args.warmup_steps) / max(1, total - args.warmup_steps)
        return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, frac)))

    schedule = ScheduleWithEMA(torch.optim.lr_scheduler.LambdaLR(opt, lr_at), trainee, args.ema)

    def step(idx: torch.Tensor, ctx) -> torch.Tensor:
        x0 = images[idx].float() / 127.5 - 1.0
        flip = torch.rand(len(idx), generator=ctx.generator) < 0.5
        x0 = torch.where(flip.view(-1, 1, 1, 1), x0.flip(-1), x0)
        t = torch.randint(0, len(alphas), (len(idx),), generator=ctx.generator)
        noise = torch.randn(x0.shape, generator=ctx.generator)
        a = alphas[t].view(-1, 1, 1, 1)
        xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
        return F.mse_loss(trainee.unet(xt, t).sample, noise)

    def on_epoch_end(epoch: int, loss: float) -> dict:
        if (epoch + 1) % args.sample_every == 0 or epoch + 1 == args.epochs:
            sample_grid(trainee.ema, args.run_dir / f"samples_epoch{epoch + 1:03d}.png", seed=args.seed)
        return {}

    cfg = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, seed=args.seed, grad_clip=1.0,
                      checkpoint_dir=args.run_dir, resume=args.resume, stop_after=args.stop_after)
    start = time.time()
    state = train(trainee, opt, len(images), step, cfg, scheduler=schedule, on_epoch_end=on_epoch_end)
    print(f"trained {state.epoch} epochs in {state.train_seconds / 60:.1f} min (this run {time.time() - start:.0f} s); "
          f"last loss {state.history[-1]['loss']:.4f}")
    if state.stopped_early or args.no_export:
        return
    ema = trainee.ema.to(torch.float16)
    args.out.mkdir(parents=True, exist_ok=True)
    ema.save_pretrained(args.out, safe_serialization=True)
    DDPMScheduler(**scheduler_config()).save_pretrained(args.out)
    info = {"script": "scripts/train_ddpm_tiny.py", "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
            "images": len(images), "size": SIZE, "steps": total, "train_minutes": round(state.train_seconds / 60, 1),
            "history": state.history, "torch": torch.__version__, "threads": args.threads}
    (args.out / "training.json").write_text(json.dumps(info, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
