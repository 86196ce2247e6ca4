"""``vitq demo``: quantize a reference model to W8A8 and W4A4 and show what was lost, offline.

Needs the real images (``$VITQ_DATA``, default ``../shared/data``): the Tiny ImageNet training zip
for calibration and the CIFAR-10 / Tiny ImageNet test images for zero-shot accuracy.
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
    p.add_argument("--json", help="write the rows as JSON")
    return p


def run(args) -> int:
    from ..data.paths import data_root
    from ..errors import DataError
    from ..io_utils import check_output_file

    check_output_file(args.json, "--json")
    root = data_root()
    missing = [p for p in (CALIB, TEST_SETS[args.data]) if not (root / p).exists()]
    if missing:
        raise DataError(
            f"the demo needs real images that are not under {root}: {', '.join(missing)}",
            hint="set VITQ_DATA to a folder holding tiny-imagenet-200/ (train-200-per-class.zip, val/) and cifar10/test/",
        )
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
    calib = calibration_batches(root / CALIB, args.num_calib, 16, image_transform(model), tokenizer=tokenizer, seed=args.seed)
    rows = []
    for cfg in [None, *specs]:
        q = model if cfg is None else quantize(model, cfg, calib=calib)
        result = evaluate(q, "zero-shot", root / TEST_SETS[args.data], limit=args.limit, tokenizer=tokenizer, seed=args.seed)
        size = model_size(q)
        rows.append({"bits": "FP32" if cfg is None else cfg.bits, "method": "-" if cfg is None else cfg.method,
                     "top1": result["metrics"]["top1"], "top5": result["metrics"]["top5"], "n": result["num_examples"],
                     "size_mb": size["bytes"] / 1e6, "calib_s": 0.0 if cfg is None else q.vitq_info["calibration_seconds"]})
    print(f"\n{args.model}: zero-shot on {args.data} ({rows[0]['n']} images), {args.num_calib} calibration images\n")
    print(f"{'bits':<8} {'method':<10} {'top-1':>7} {'top-5':>7} {'size MB':>8} {'calib s':>8}")
    for r in rows:
        print(f"{r['bits']:<8} {r['method']:<10} {100 * r['top1']:>6.2f}% {100 * r['top5']:>6.2f}% {r['size_mb']:>8.2f} {r['calib_s']:>8.1f}")
    if args.json:
        write_json(args.json, {"model": args.model, "data": args.data, "rows": rows})
    return 0
