"""Q-Diffusion on zoo:ddpm-tiny (CIFAR-10 at 16x16, DDIM sampler): the shape of the paper's DDIM
CIFAR-10 table.

Rows at each bit spec (W8A32, W4A32, W8A8, W4A8): full precision, linear (min-max) quantization
calibrated on the timestep-aware set and, where activations are quantized, on as many inputs from
the sampler's last step only (no timestep awareness), and q-diffusion (timestep-aware calibration,
split shortcuts, block reconstruction). Every quantized row keeps the first and last layers
(conv_in, conv_out) at 8 bits, as the paper's code does. ``--ablation`` adds at W4A8: linear and
q-diffusion with every layer at the spec, and q-diffusion without the split.

Columns: size (MB, parameters x bits), GBOPs of one denoising step, and the metrics of
:mod:`vitq.eval.generation` over ``--samples`` images drawn from the same noise by every model:
FID in zoo:deit-tiny's feature space against ``--reals`` CIFAR-10 test images (not comparable to
published FID), the Inception-Score analogue from the same classifier, and PSNR / SSIM against the
full-precision samples (mean and standard error over images). A PNG grid shows full precision,
linear W4A8 and q-diffusion W4A8 from the same seeds.

    python benchmarks/q_diffusion.py [--json OUT] [--grid PNG] [--threads 1]
    python benchmarks/q_diffusion.py --quick          # fewer samples, steps and reconstruction steps
"""

from __future__ import annotations

import time
from pathlib import Path

import common
import torch

from vitq.config import parse_bits
from vitq.data.diffusion import initial_noise, sample, timestep_calibration
from vitq.eval.cost import compute_cost, model_size
from vitq.eval.generation import DeiTScorer, generation_metrics, real_images
from vitq.methods.qdiffusion import eight_bit_ends as eight_bit_ends_of
from vitq.models.loading import load_scheduler
from vitq.models.unet import sample_shape

SPECS = ("W8A32", "W4A32", "W8A8", "W4A8")
FULL = dict(samples=500, steps=50, interval=5, per_step=128, iters=500, act_iters=200, reals=1000)
QUICK = dict(samples=64, steps=20, interval=5, per_step=32, iters=100, act_iters=50, reals=256)


def rows_for(spec: str, ablation: bool) -> list[tuple[str, str, str, dict | None, bool]]:
    """(method key, row label, calibration set, options, first and last layers at 8 bits) of each
    quantized row at ``spec``. The linear rows keep conv_in and conv_out at 8 bits as q-diffusion
    does, so that the rows differ only in what the paper adds."""
    weights_only = spec.endswith("A32")
    rows = [("linear", "linear", "uniform", {}, True)]
    if not weights_only:
        rows = [("linear", "linear (last-step calib.)", "last", {}, True)] + rows
    rows.append(("q-diffusion", "q-diffusion", "uniform", None, True))
    if ablation and spec == "W4A8":
        rows += [("linear", "linear (every layer at the spec)", "uniform", {}, False),
                 ("q-diffusion", "q-diffusion (no split)", "uniform", {"split_shortcuts": False}, True),
                 ("q-diffusion", "q-diffusion (every layer at the spec)", "uniform", {"first_last_8bit": False}, False)]
    return rows


def grid_png(panels: list[tuple[str, torch.Tensor]], path: Path, per_side: int = 8) -> None:
    """Side-by-side grids (per_side x per_side samples each, 2x nearest upscaling), titled."""
    from PIL import Image, ImageDraw

    size = panels[0][1].shape[-1]
    cell, gap, title = size * 2, 8, 14
    side = per_side * cell
    canvas = Image.new("RGB", (len(panels) * (side + gap) - gap, side + title), "white")
    draw = ImageDraw.Draw(canvas)
    for p, (label, images) in enumerate(panels):
        x0 = p * (side + gap)
        draw.text((x0 + 2, 1), label, fill="black")
        pixels = ((images[: per_side * per_side].clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
        for i, img in enumerate(pixels):
            r, c = divmod(i, per_side)
            tile = Image.fromarray(img.permute(1, 2, 0).numpy()).resize((cell, cell), Image.NEAREST)
            canvas.paste(tile, (x0 + c * cell, title + r * cell))
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)


def measure(model, label: str, method: str, spec: str, calib: str, seconds: float, noise, scheduler, fp, reals, scorer, args) -> tuple[dict, torch.Tensor]:
    start = time.perf_counter()
    images = sample(model, scheduler, noise, args.steps, batch_size=64, progress=not args.quiet, desc=f"sampling {label} {spec}")
    row = {"method": method, "row": label, "bits": spec, "calib": calib, "size_mb": round(model_size(model)["bytes"] / 1e6, 3),
           "gbops": round(compute_cost(model)["bops"] / 1e9, 3), "calib_s": round(seconds, 1),
           "sample_s": round(time.perf_counter() - start, 1)}
    row.update(generation_metrics(images, fp, reals, scorer))
    return row, images


def table(rows: list[dict]) -> str:
    def fmt(r, key, digits):
        if r.get(key) is None:
            return "-"
        se = r.get(f"{key}_se")
        return f"{r[key]:.{digits}f}" + (f" ± {se:.{digits}f}" if se is not None else "")

    lines = ["| Method | Bits | Calib. set | Size (MB) | GBOPs | FID (deit-tiny) | IS (deit-tiny) | PSNR vs FP (dB) | SSIM vs FP | Calib (s) |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['row']} | {r['bits']} | {r['calib']} | {r['size_mb']:.2f} | {r['gbops']:.2f} | {r['fid_deit']:.2f} | "
                     f"{r['is_deit']:.2f} | {fmt(r, 'psnr', 2)} | {fmt(r, 'ssim', 3)} | {r['calib_s']} |")
    return "\n".join(lines)


def main() -> None:
    p = common.base_parser(__doc__, model="zoo:ddpm-tiny")
    p.add_argument("--specs", default=",".join(SPECS))
    p.add_argument("--quick", action="store_true", help="a reduced run: " + ", ".join(f"{k}={v}" for k, v in QUICK.items()))
    for key, value in FULL.items():
        p.add_argument(f"--{key.replace('_', '-')}", type=int, default=None, help=f"default {value} ({QUICK[key]} with --quick)")
    p.add_argument("--ablation", action="store_true", help="also q-diffusion without split shortcuts at W4A8")
    p.add_argument("--grid", default="q_diffusion_samples.png", help="PNG of FP / linear W4A8 / q-diffusion W4A8 samples")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args()
    for key, value in (QUICK if args.quick else FULL).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    model = common.setup(args)
    scheduler = load_scheduler(model)
    shape = sample_shape(model)
    noise = initial_noise(args.samples, shape, args.seed + 1)
    scorer = DeiTScorer()
    reals = scorer(real_images(args.reals, size=shape[-1], seed=args.seed))[0]
    calib = {where: timestep_calibration(model, scheduler, steps=args.steps, interval=args.interval, per_step=args.per_step,
                                         where=where, batch_size=32, seed=args.seed, progress=not args.quiet)
             for where in ("uniform", "last")}
    labels = {"uniform": "timestep-aware", "last": "last step"}
    print(f"calibration: {calib['uniform'].describe()}", flush=True)
    fp_row, fp = measure(model, "full precision", "full-precision", "W32A32", "-", 0.0, noise, scheduler, None, reals, scorer, args)
    fp_row["psnr"], fp_row["ssim"] = None, 1.0  # against itself: PSNR is infinite
    rows, grids = [fp_row], [("full precision", fp)]
    print(table(rows), flush=True)
    q_options = dict(iters=args.iters, act_iters=args.act_iters)
    for spec in args.specs.split(","):
        for method, label, where, options, ends in rows_for(spec, args.ablation):
            name = "minmax" if method == "linear" else "q-diffusion"
            opts = q_options if options is None else (dict(q_options, **options) if method == "q-diffusion" else options)
            args.calib_data = calib[where].batches
            # the linear rows get q-diffusion's 8-bit ends as a bit plan (q-diffusion: its own option)
            plan = eight_bit_ends_of(model, parse_bits(spec).a) if (method == "linear" and ends) else None
            q, seconds = common.quantize_timed(model, name, spec, ("image",), args, bit_plan=plan, **opts)
            row, images = measure(q, label, method, spec, labels[where], seconds, noise, scheduler, fp, reals, scorer, args)
            rows.append(row)
            print(table(rows[-1:]), flush=True)
            if spec == "W4A8" and label in ("linear", "q-diffusion"):
                grids.append((f"{label} W4A8", images))
            del q
    print(f"\nQ-Diffusion on {args.model}: {args.samples} samples, DDIM {args.steps} steps, "
          f"calibration {calib['uniform'].size} inputs from {len(calib['uniform'].timesteps)} timesteps, "
          f"reconstruction {args.iters} + {args.act_iters} steps per unit; FID/IS in deit-tiny features vs {args.reals} CIFAR-10 test images\n")
    print(table(rows))
    if len(grids) > 1 and args.grid:
        grid_png(grids, Path(args.grid))
        print(f"wrote {args.grid}")
    common.finish(args, {"benchmark": "q_diffusion", "args": {k: v for k, v in vars(args).items() if k != "calib_data"}, "rows": rows})


if __name__ == "__main__":
    main()
