"""Liu et al. 2021 (PTQ for ViT: similarity- and ranking-aware search, bias correction, mixed
precision) against the baselines, on the reference models.

- Models: ``zoo:deit-tiny`` (top-1, Tiny ImageNet val) and ``zoo:clip-tiny`` (zero-shot on CIFAR-10
  and Tiny ImageNet; both towers).
- Main rows at W8A8, W6A6 and W4A4: full precision, minmax, omse, liu2021 without bias correction,
  liu2021, and liu2021-mp at the same average bits (``target_bits`` = the spec's width, choices
  spec - 2 ... spec + 2), with the calibration wall time.
- Ablations (the paper's Table 3) at ``--ablation-spec`` (W6A6): the max initialisation alone (no
  search), similarity only, + ranking, + bias correction (``--skip-main`` runs only these).

    python benchmarks/liu2021.py [--models deit,clip] [--specs W8A8,W6A6,W4A4] [--rows minmax,omse,liu2021-nobias,liu2021,liu2021-mp]
        [--zero-shot-sets cifar10] [--limit 0]

Every accuracy is on the whole test set by default (``--limit 0``), with its standard error.
"""

from __future__ import annotations

import common

MODELS = {  # label -> (spec, components, task, datasets)
    "deit": ("zoo:deit-tiny", ("image",), "top1", ("tiny-imagenet",)),
    "clip": ("zoo:clip-tiny", ("image", "text"), "zero-shot", ("cifar10", "tiny-imagenet")),
}


ROWS = "minmax,omse,liu2021-nobias,liu2021,liu2021-mp"


def rows_for(spec: str, keep: str = ROWS) -> list[tuple[str, str, dict]]:
    bits = int(spec[1:].split("A")[0])
    choices = tuple(b for b in range(bits - 2, bits + 3) if 2 <= b <= 8)
    rows = {"minmax": ("minmax", "minmax", {}), "omse": ("omse", "omse", {}),
            "liu2021-nobias": ("liu2021 (no bias corr.)", "liu2021", {"bias_correction": False}),
            "liu2021": ("liu2021", "liu2021", {}),
            "liu2021-mp": (f"liu2021-mp ({bits} bits avg)", "liu2021-mp", {"target_bits": float(bits), "bit_choices": choices})}
    unknown = set(keep.split(",")) - set(rows)
    if unknown:
        raise SystemExit(f"unknown row(s) {', '.join(sorted(unknown))}: use {ROWS}")
    return [rows[k] for k in keep.split(",")]


ABLATIONS = [("max initialisation", {"similarity": False, "ranking": False, "bias_correction": False}),
             ("similarity", {"ranking": False, "bias_correction": False}),
             ("+ ranking", {"bias_correction": False}),
             ("+ bias correction", {})]


def score_row(model, label: str, name: str, method: str | None, bits: str, options: dict, args, tokenizer) -> dict:
    _, comps, task, datasets = MODELS[label]
    if task == "zero-shot":
        datasets = tuple(args.zero_shot_sets.split(","))
    row = {"model": label, "row": name, "bits": bits}
    if method is None:
        q, row["calib_s"] = model, 0.0
    else:
        q, seconds = common.quantize_timed(model, method, bits, comps, args, **options)
        row["calib_s"] = round(seconds, 1)
        mp = (q.vitq_info.get("liu2021") or {}).get("mixed_precision")
        if mp:
            row["avg_bits"] = mp["average_bits"]
    return common.score_into(row, q, task, datasets, args, tokenizer)


def table(rows) -> str:
    return common.accuracy_table(rows, [("model", "Model"), ("row", "Method"), ("bits", "Bits")],
                                 [("avg_bits", "avg bits"), ("calib_s", "Calib (s)")])


def main() -> None:
    p = common.base_parser(__doc__, model="zoo:deit-tiny")
    p.add_argument("--models", default="deit,clip")
    p.add_argument("--specs", default="W8A8,W6A6,W4A4")
    p.add_argument("--rows", default=ROWS, help="main rows to run")
    p.add_argument("--ablation-spec", default="W6A6")
    p.add_argument("--zero-shot-sets", default="cifar10,tiny-imagenet", help="test sets of the zero-shot rows")
    p.add_argument("--num-calib", type=int, default=32)
    p.add_argument("--skip-ablations", action="store_true")
    p.add_argument("--skip-main", action="store_true", help="only the full-precision row and the ablations")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args()
    for bits in args.specs.split(","):
        rows_for(bits, args.rows)  # refuse a bad row name before any work
    common.setup(args)
    rows, ablations, done = [], [], {}
    for label in args.models.split(","):
        spec, comps, task, _ = MODELS[label]
        model = common.load_model(spec)
        tokenizer = common.resolve_tokenizer(model) if task == "zero-shot" else None
        args.calib_data = common.calibration(model, args, num=args.num_calib, text="text" in comps)
        rows.append(score_row(model, label, "full precision", None, "-", {}, args, tokenizer))
        for bits in ([] if args.skip_main else args.specs.split(",")):
            for name, method, options in rows_for(bits, args.rows):
                rows.append(score_row(model, label, name, method, bits, options, args, tokenizer))
                done[(label, method, bits, tuple(sorted(options.items())))] = rows[-1]
                print(table(rows[-1:]), flush=True)
        if not args.skip_ablations:
            for name, options in ABLATIONS:  # the full method's rows already ran (same seed: the same model)
                again = done.get((label, "liu2021", args.ablation_spec, tuple(sorted(options.items()))))
                ablations.append(dict(again, row=name) if again else
                                 score_row(model, label, name, "liu2021", args.ablation_spec, options, args, tokenizer))
    print(f"\nLiu et al. 2021 ({args.num_calib} calibration images, {args.limit or 'all'} test images per set)\n")
    print(table(rows))
    if ablations:
        print(f"\nAblations at {args.ablation_spec}\n")
        print(table(ablations))
    common.finish(args, {"benchmark": "liu2021", "args": {k: v for k, v in vars(args).items() if k != "calib_data"}, "rows": rows, "ablations": ablations})


if __name__ == "__main__":
    main()
