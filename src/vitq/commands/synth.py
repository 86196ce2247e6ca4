"""``vitq synth``: make data-free calibration images from a model and save them as PNGs."""

from __future__ import annotations

import argparse


def add_parser(sub) -> argparse.ArgumentParser:
    from ..data.synthetic import RECIPES, SynthesisConfig

    d = SynthesisConfig()
    p = sub.add_parser("synth", help="synthesise calibration images from the model itself (data-free) and save them as PNGs",
                       description="Optimise Gaussian noise on the model's own patch features (CLAMP-ViT's patch-contrastive "
                                   "loss, PSAQ-ViT's patch-similarity entropy, or plain noise) and save the images, with "
                                   "targets.json naming the class (or sentence) each was guided to. The folder calibrates "
                                   "any method: vitq quantize --calib DIR.")
    p.add_argument("--model", required=True, help="hub id, local model folder, or zoo:NAME")
    p.add_argument("--num", type=int, default=32, help="images to make (default 32)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p.add_argument("--recipe", default=d.recipe, choices=RECIPES)
    p.add_argument("--steps", type=int, default=d.steps, help=f"gradient steps (default {d.steps})")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help=f"images optimised together (default {d.batch_size})")
    p.add_argument("--neighbourhood", type=int, default=d.neighbourhood, help="window side for a patch's positives (clamp)")
    p.add_argument("--top-n", type=int, default=d.top_n, help="positives per patch (clamp)")
    p.add_argument("--tokenizer", help="tokenizer folder or hub id, for a CLIP model whose folder has none")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def run(args) -> int:
    import os
    import shutil

    from ..data.synthetic import SynthesisConfig, synthesize
    from ..errors import ConfigError
    from ..io_utils import write_json
    from ..models.loading import load_model
    from ..saving import check_output_dir

    if args.num < 1:
        raise ConfigError(f"--num must be at least 1, got {args.num}")
    cfg = SynthesisConfig(recipe=args.recipe, steps=args.steps, batch_size=args.batch_size, neighbourhood=args.neighbourhood,
                          top_n=args.top_n, seed=args.seed)  # bad settings fail before the model loads
    out = check_output_dir(args.out, args.overwrite)
    tokenizer = None
    if args.tokenizer:
        from ..models.tokenizers import resolve_tokenizer

        tokenizer = resolve_tokenizer(None, args.tokenizer)
    model = load_model(args.model)
    images = synthesize(model, args.num, cfg, tokenizer=tokenizer, progress=not args.quiet)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        paths = images.save_pngs(tmp)
        labels = getattr(getattr(model, "config", None), "id2label", None) or {}
        names = images.sentences or [labels.get(i, str(i)) for i in range(max(int(images.targets.max()) + 1, 1))]
        write_json(tmp / "targets.json", {"model": args.model, "recipe": args.recipe, "steps": cfg.steps, "seed": args.seed,
                                          "images": {p.name: names[int(t)] for p, t in zip(paths, images.targets)}})
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    print(f"synthesised {args.num} images for {args.model} ({args.recipe}, {cfg.steps} steps) in {images.seconds:.1f}s; saved to {out}")
    return 0
