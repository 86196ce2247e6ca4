"""``vitq demo``: quantize a reference model to W8A8 and W4A4 and show what was lost, offline.

Uses the real images (``$VITQ_DATA``, default ``../shared/data``): the Tiny ImageNet training zip
for calibration and the CIFAR-10 / Tiny ImageNet test images for zero-shot accuracy. Without them it
falls back to data-free work and says so: calibration on synthetic images (CLAMP-ViT's synthesis,
:mod:`vitq.data.synthetic`), and, without test images, the fidelity to full precision (cosine of
the image embeddings) on other synthetic images instead of accuracy.
"""

from __future__ import annotations

import argparse

TEST_SETS = {"cifar10": "cifar10/test", "tiny-imagenet": "tiny-imagenet-200/val"}
CALIB = "tiny-imagenet-200/train-200-per-class.zip"


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("demo", help="quantize zoo:clip-tiny to W8A8 and W4A4 and compare with full precision",
                       description="Quantize a model at several bit widths and print zero-shot accuracy and size next to full precision.")
    p.add_argument("--model", default="zoo:clip-tiny")
    p.add_argument("--bits", default="W8A8,W4A4", help="comma-separated bit specs")
    p.add_argument("--method", default="repq-vit")
    p.add_argument("--data", default="cifar10", choices=sorted(TEST_SETS), help="zero-shot test set")
    p.add_argument("--limit", type=int, default=1000, help="test images, class-balanced (default 1000)")
    p.add_argument("--num-calib", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--synth-steps", type=int, default=200, help="synthesis steps when falling back to data-free images (default 200)")
    p.add_argument("--json", help="write the rows as JSON")
    return p


def _fidelity(q, reference, images) -> float:
    """Mean cosine similarity of the image embeddings (or logits) of ``q`` and ``reference``."""
    import torch

    from ..models.families import family_of

    with torch.no_grad():
        got = [family_of(q).encode_image(q, b["pixel_values"]) for b in images]
        ref = [family_of(reference).encode_image(reference, b["pixel_values"]) for b in images]
    return float(torch.nn.functional.cosine_similarity(torch.cat(got).float(), torch.cat(ref).float()).mean())


def run(args) -> int:
    from ..data.paths import data_root
    from ..io_utils import check_output_file

    check_output_file(args.json, "--json")
    root = data_root()
    have_calib, have_test = (root / CALIB).exists(), (root / TEST_SETS[args.data]).exists()
    from ..api import quantize
    from ..config import QuantConfig
    from ..data.calibration import calibration_batches
    from ..data.preprocess import image_transform
    from ..eval import evaluate
    from ..eval.cost import model_size
    from ..models.tokenizers import resolve_tokenizer
    from ..io_utils import write_json
    from ..models.loading import load_model

    model = load_model(args.model)
    tokenizer = resolve_tokenizer(model)
    specs = [QuantConfig(method=args.method, bits=b.strip(), seed=args.seed, num_calib=args.num_calib) for b in args.bits.split(",")]
    from ..data.synthetic import SynthesisConfig, synthesize

    if have_calib:
        calib = calibration_batches(root / CALIB, args.num_calib, 16, image_transform(model), tokenizer=tokenizer, seed=args.seed)
        source = "real"
    else:
        print(f"no real calibration images under {root} ({CALIB} is missing; set VITQ_DATA to use them): "
              f"falling back to data-free calibration on {args.num_calib} synthetic images (CLAMP-ViT's synthesis)")
        calib = synthesize(model, args.num_calib, SynthesisConfig(steps=args.synth_steps, batch_size=16, seed=args.seed), tokenizer=tokenizer)
        source = "synthetic"
    held_out = None
    if not have_test:
        print(f"no test images under {root} ({TEST_SETS[args.data]} is missing): reporting the fidelity to full precision "
              f"(cosine of the image embeddings) on {args.num_calib} other synthetic images instead of accuracy")
        held_out = synthesize(model, args.num_calib, SynthesisConfig(steps=args.synth_steps, batch_size=16, seed=args.seed + 1),
                              tokenizer=tokenizer)
    rows = []
    for cfg in [None, *specs]:
        q = model if cfg is None else quantize(model, cfg, calib=calib)
        row = {"bits": "FP32" if cfg is None else cfg.bits, "method": "-" if cfg is None else cfg.method, "calibration": source,
               "size_mb": model_size(q)["bytes"] / 1e6, "calib_s": 0.0 if cfg is None else q.vitq_info["calibration_seconds"]}
        if have_test:
            result = evaluate(q, "zero-shot", root / TEST_SETS[args.data], limit=args.limit, tokenizer=tokenizer, seed=args.seed)
            row.update(top1=result["metrics"]["top1"], top5=result["metrics"]["top5"], n=result["num_examples"])
        else:
            row.update(cosine=_fidelity(q, model, held_out), n=args.num_calib)
        rows.append(row)
    where = f"zero-shot on {args.data}" if have_test else "fidelity on held-out synthetic images"
    print(f"\n{args.model}: {where} ({rows[0]['n']} images), {args.num_calib} {source} calibration images\n")
    if have_test:
        print(f"{'bits':<8} {'method':<10} {'top-1':>7} {'top-5':>7} {'size MB':>8} {'calib s':>8}")
        for r in rows:
            print(f"{r['bits']:<8} {r['method']:<10} {100 * r['top1']:>6.2f}% {100 * r['top5']:>6.2f}% {r['size_mb']:>8.2f} {r['calib_s']:>8.1f}")
    else:
        print(f"{'bits':<8} {'method':<10} {'cosine':>7} {'size MB':>8} {'calib s':>8}")
        for r in rows:
            print(f"{r['bits']:<8} {r['method']:<10} {r['cosine']:>7.4f} {r['size_mb']:>8.2f} {r['calib_s']:>8.1f}")
    if args.json:
        write_json(args.json, {"model": args.model, "data": args.data if have_test else None, "calibration": source, "rows": rows})
    return 0
