"""CLAMP-ViT (data-free PTQ: contrastive synthesis + evolutionary search) against other calibration
data, on the reference models.

- Models: ``zoo:deit-tiny`` (top-1, Tiny ImageNet val) and ``zoo:clip-tiny`` (zero-shot on
  CIFAR-10; both towers, the text tower calibrated on the built-in sentences the images were guided
  to, or on class-name prompts of the real images).
- Rows at each spec (W4A8, W6A6): the same quantizers (P4Q's baseline scheme, OMSE ranges)
  calibrated on real training images, on real images + the evolutionary search, on Gaussian noise,
  on PSAQ-style patch-similarity synthesis, on CLAMP synthesis without the search, and full
  CLAMP-ViT (CLAMP synthesis, search, a second cycle with the quantized model's feedback). Then
  ``clamp-vit-mp`` at the paper's W4.7/A5.9 budget, on CLAMP data and on real images.
- The wall time of each stage (synthesis per recipe, then calibration + search per row), a grid of
  synthetic images next to real ones (``--grid``), and the paper's Fig. 5 ablations at
  ``--ablation-spec``: batch size, neighbourhood size and top-n positives.

    python benchmarks/clamp_vit.py [--models deit,clip] [--specs W4A8,W6A6] [--steps 500] [--grid docs/clamp-vit-synthetic.png]

The synthetic images of each recipe are made once per model (the first cycle does not depend on the
bits) and shared by the rows; full CLAMP-ViT re-synthesises in its second cycle per spec.
"""

from __future__ import annotations

import common

from vitq.data.synthetic import SynthesisConfig, synthesize

MODELS = {  # label -> (spec, components, task, datasets)
    "deit": ("zoo:deit-tiny", ("image",), "top1", ("tiny-imagenet",)),
    "clip": ("zoo:clip-tiny", ("image", "text"), "zero-shot", ("cifar10",)),
}

# row name -> (data, method, options)
ROWS = [("real images", "real", "clamp-vit", {"search": False}),
        ("real images + search", "real", "clamp-vit", {"cycles": 1}),
        ("Gaussian noise", "noise", "clamp-vit", {"search": False}),
        ("PSAQ synthesis", "psaq", "clamp-vit", {"search": False}),
        ("CLAMP synthesis, no search", "clamp", "clamp-vit", {"search": False}),
        ("CLAMP-ViT", "clamp", "clamp-vit", {})]
MP_ROWS = [("CLAMP-ViT MP (W4.7/A5.9)", "clamp", "clamp-vit-mp", {}),
           ("real images + search, MP (W4.7/A5.9)", "real", "clamp-vit-mp", {"cycles": 1})]
ABLATIONS = {"batch_size": (8, 16, 64), "neighbourhood": (5, 7), "top_n": (1, 4)}  # the defaults (32, 3, 2) are the main row


def synthesized(model, label: str, num: int, cfg: SynthesisConfig, cache: str | None, quiet: bool):
    """Synthetic images, from ``cache`` when an earlier run made the same ones (safetensors)."""
    import json
    from pathlib import Path

    from safetensors.torch import load_file, save_file

    from vitq.data.synthetic import SyntheticImages

    if cache is None:
        return synthesize(model, num, cfg, progress=not quiet)
    key = f"{label}-{num}-" + "-".join(f"{k}={v}" for k, v in sorted(vars(cfg).items()))
    path = Path(cache) / f"{key}.safetensors"
    if path.exists():
        t = load_file(str(path))
        meta = json.loads(path.with_suffix(".json").read_text())
        images = synthesize(model, num, SynthesisConfig(recipe="noise", batch_size=cfg.batch_size), progress=False)  # sentences, tokenizer
        return SyntheticImages(t["pixel_values"], t["targets"], t["low"], t["high"], cfg.recipe, meta["seconds"],
                               sentences=images.sentences, tokenizer=images.tokenizer, batch_size=cfg.batch_size)
    images = synthesize(model, num, cfg, progress=not quiet)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: getattr(images, k).contiguous() for k in ("pixel_values", "targets", "low", "high")}, str(path))
    path.with_suffix(".json").write_text(json.dumps({"seconds": images.seconds}))
    return images


def score_row(model, label, name, method, bits, data, options, args, tokenizer) -> dict:
    _, comps, task, datasets = MODELS[label]
    row = {"model": label, "row": name, "bits": bits}
    if method is None:
        q, row["calib_s"] = model, 0.0
    else:
        options = {"steps": args.steps, "feedback_steps": args.feedback_steps, **options}
        args.calib_data = data
        q, seconds = common.quantize_timed(model, method, bits, comps, args, **options)
        row["calib_s"] = round(seconds, 1)
        info = q.vitq_info["clamp_vit"]
        mp = info.get("mixed_precision")
        if mp:
            row["avg_bits"] = f"W{mp['average_w_bits']:.2f}/A{mp['average_a_bits']:.2f}"
        if info["cycles"] and info["search"]:  # the first cycle's: later cycles search on other images
            row["fitness"] = f"{info['cycles'][0]['fitness_before']:.1f} → {info['cycles'][0]['fitness_after']:.1f}"
    return common.score_into(row, q, task, datasets, args, tokenizer)


def table(rows) -> str:
    return common.accuracy_table(rows, [("model", "Model"), ("row", "Calibration"), ("bits", "Bits")],
                                 [("avg_bits", "avg bits"), ("fitness", "fitness (sum)"), ("calib_s", "calib + search (s)")])


def save_grid(path: str, real, synthetic: dict, columns: int = 8) -> None:
    """Rows of images: real training images first, then each recipe's synthetic ones."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [("real", real)] + list(synthetic.items())
    fig, axes = plt.subplots(len(rows), columns, figsize=(columns * 1.2, len(rows) * 1.3))
    for r, (label, images) in enumerate(rows):
        for c in range(columns):
            ax = axes[r][c]
            ax.axis("off")
            if c < len(images):
                ax.imshow(images[c])
        axes[r][0].set_title(label, fontsize=8, loc="left")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    print(f"wrote {path}")


def main() -> None:
    p = common.base_parser(__doc__, model="zoo:deit-tiny")
    p.add_argument("--models", default="deit,clip")
    p.add_argument("--specs", default="W4A8,W6A6", help="comma-separated specs, or none (only the stages, MP and ablations)")
    p.add_argument("--num-calib", type=int, default=32, help="calibration images, real or synthetic (the paper's batch: 32)")
    p.add_argument("--steps", type=int, default=500, help="synthesis steps of the first cycle")
    p.add_argument("--feedback-steps", type=int, default=100, help="synthesis steps of the second cycle")
    p.add_argument("--skip-mp", action="store_true")
    p.add_argument("--ablation-spec", default="W4A8")
    p.add_argument("--skip-ablations", action="store_true")
    p.add_argument("--grid", help="write a PNG grid of real and synthetic images here")
    p.add_argument("--cache", help="keep the synthetic images here and reuse them in later runs with the same settings")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args()
    common.setup(args)
    rows, ablations, stages = [], [], []
    for label in args.models.split(","):
        spec, comps, task, _ = MODELS[label]
        model = common.load_model(spec)
        tokenizer = common.resolve_tokenizer(model) if task == "zero-shot" else None
        data = {"real": common.calibration(model, args, num=args.num_calib, text="text" in comps)}
        for recipe in ("noise", "psaq", "clamp"):
            cfg = SynthesisConfig(recipe=recipe, steps=args.steps, batch_size=args.num_calib, seed=args.seed)
            data[recipe] = synthesized(model, label, args.num_calib, cfg, args.cache, args.quiet)
            stages.append({"model": label, "stage": f"synthesis ({recipe}, {args.num_calib} images, {cfg.steps if recipe != 'noise' else 0} steps)",
                           "seconds": round(data[recipe].seconds, 1)})
            print(common.markdown(stages[-1:], [("model", "Model"), ("stage", "Stage"), ("seconds", "Wall (s)")]), flush=True)
        if args.grid:
            import torch

            real = torch.cat([b["pixel_values"] for b in data["real"]])[:8]
            ref = data["clamp"]
            unit = (real - ref.low.view(1, 3, 1, 1)) / (ref.high - ref.low).view(1, 3, 1, 1)
            real_u8 = (unit.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
            save_grid(args.grid.replace(".png", f"-{label}.png"), real_u8,
                      {r: data[r].as_uint8().numpy() for r in ("noise", "psaq", "clamp")})
        rows.append(score_row(model, label, "full precision", None, "-", None, {}, args, tokenizer))
        for bits in [] if args.specs == "none" else args.specs.split(","):
            for name, source, method, options in ROWS:
                rows.append(score_row(model, label, name, method, bits, data[source], options, args, tokenizer))
                print(table(rows[-1:]), flush=True)
        if not args.skip_mp:
            for name, source, method, options in MP_ROWS:
                rows.append(score_row(model, label, name, method, "W4A8", data[source], options, args, tokenizer))
                print(table(rows[-1:]), flush=True)
        if not args.skip_ablations:
            if args.ablation_spec not in ([] if args.specs == "none" else args.specs.split(",")):
                row = score_row(model, label, "defaults (32, 3, 2)", "clamp-vit", args.ablation_spec, data["clamp"], {}, args, tokenizer)
                ablations.append(row)  # the reference the changed settings are read against
                print(table(ablations[-1:]), flush=True)
            for key, values in ABLATIONS.items():
                for v in values:
                    cfg = SynthesisConfig(recipe="clamp", steps=args.steps, seed=args.seed, **{key: v},
                                          **({} if key == "batch_size" else {"batch_size": args.num_calib}))
                    num = v if key == "batch_size" else args.num_calib
                    images = synthesized(model, label, num, cfg, args.cache, args.quiet)
                    saved, args.num_calib = args.num_calib, num
                    row = score_row(model, label, f"{key} = {v}", "clamp-vit", args.ablation_spec, images, {key: v}, args, tokenizer)
                    args.num_calib = saved
                    row["synthesis_s"] = round(images.seconds, 1)
                    ablations.append(row)
                    print(table(ablations[-1:]), flush=True)
    print(f"\nCLAMP-ViT ({args.num_calib} calibration images, {args.steps} synthesis steps, "
          f"{args.limit or 'all'} test images per set)\n")
    print(common.markdown(stages, [("model", "Model"), ("stage", "Stage"), ("seconds", "Wall (s)")]))
    print()
    print(table(rows))
    if ablations:
        print(f"\nAblations (paper's Fig. 5) at {args.ablation_spec}: full CLAMP-ViT, one setting changed\n")
        print(table(ablations))
    common.finish(args, {"benchmark": "clamp_vit", "args": {k: v for k, v in vars(args).items() if k != "calib_data"},
                         "stages": stages, "rows": rows, "ablations": ablations})


if __name__ == "__main__":
    main()
