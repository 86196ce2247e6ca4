"""Signed (symmetric) q/k/v against vitq's default asymmetric points: what the accuracy costs.

OpenVINO runs both attention matmuls in int8 only when q, k and v have zero-point 0 (option
``symmetric_attention``). This table measures the accuracy of the two on the reference models:
zoo:deit-tiny (top-1, Tiny ImageNet val) and zoo:clip-tiny (zero-shot CIFAR-10 and Tiny ImageNet;
image tower alone and both towers), W8A8 and W4A4, omse and repq-vit. Every pair calibrates on the
same images; each top-1 has its standard error, and "Δ" is signed minus asymmetric (the two share
the test images, so a Δ well inside √2 standard errors is noise).

    python benchmarks/symmetric_attention.py [--limit N] [--json out/symattn.json]
"""

from __future__ import annotations

import common
from tqdm.auto import tqdm

METHODS = ("omse", "repq-vit")
SPECS = ("W8A8", "W4A4")
TARGETS = ("deit-tiny", "clip-tiny image", "clip-tiny both")


def targets(args):
    """The reference column groups named by ``--targets``."""
    unknown = set(args.targets.split(",")) - set(TARGETS)
    if unknown:
        raise SystemExit(f"unknown --targets {', '.join(sorted(unknown))}: use some of {', '.join(TARGETS)}")
    return [t for t in common.reference_targets(args, args.zero_shot_sets.split(",")) if t[0] in args.targets.split(",")]


def main() -> None:
    p = common.base_parser(__doc__)
    common.add_reference_models(p)
    p.add_argument("--specs", default=",".join(SPECS))
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--targets", default=",".join(TARGETS), help="column groups to run")
    p.add_argument("--zero-shot-sets", default="cifar10,tiny-imagenet", help="test sets of the zero-shot rows")
    args = p.parse_args()
    args.model = args.clip or args.deit
    args.quiet = True
    common.setup(args)
    rows = []
    for label, spec, comps, task, datasets in targets(args):
        model = common.load_model(spec)
        tokenizer = common.resolve_tokenizer(model) if task == "zero-shot" else None
        args.calib_data = common.calibration(model, args, num=args.num_calib, text="text" in comps)
        jobs = [(m, b, s) for b in args.specs.split(",") for m in args.methods.split(",") for s in (False, True)]
        for method, bits, symmetric in tqdm(jobs, desc=label):
            q, seconds = common.quantize_timed(model, method, bits, comps, args, symmetric_attention=symmetric)
            row = {"model": label, "method": method, "bits": bits, "qkv": "signed" if symmetric else "asymmetric",
                   "calib_s": round(seconds, 1)}
            rows.append(common.score_into(row, q, task, datasets, args, tokenizer))
            if symmetric:  # the pair's difference, in points
                base = rows[-2]
                for ds in datasets:
                    row[f"{ds}_delta"] = round(100 * (row[f"{ds}_top1"] - base[f"{ds}_top1"]), 2)
    deltas = [(k, f"Δ {k[:-6]}") for k in dict.fromkeys(k for r in rows for k in r if k.endswith("_delta"))]
    print(f"\nSigned against asymmetric q/k/v ({args.limit or 'all'} images per test set, {args.num_calib} calibration images)\n")
    print(common.accuracy_table(rows, [("model", "Model"), ("method", "Method"), ("bits", "Bits"), ("qkv", "q/k/v")],
                                deltas + [("calib_s", "Calib (s)")]))
    del args.calib_data  # tensors: not part of the JSON
    common.finish(args, {"benchmark": "symmetric_attention", "args": vars(args), "rows": rows})


if __name__ == "__main__":
    main()
