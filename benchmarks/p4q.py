"""P4Q on zoo:clip-tiny: CIFAR-10 train (the 10,000-image zip) as downstream training data, the
CIFAR-10 test set (10,000 images) for evaluation.

- Table 1's shape. Full precision: zero-shot, + Prompt (CoOp on the float model: ``p4q`` with
  ``base=none``, no adapter), + Linear Probe. Per bit spec (``--specs``, default 8-8-8, 4-4-8, 3-3-8,
  2-2-8): MinMax, EMA, Percentile, Baseline (OMSE), + Quantized Linear Probe (the probe on the OMSE
  model's features, its classifier quantized with MinMax at the weight bits), + P4Q. Columns: top-1,
  top-5 (each with its standard error), size, GFLOPs, wall time.
- Ablations at ``--ablation-spec`` (4-4-8): prompt only, QAdapter only, both; L_cls only, L_kd only,
  both; prompt length (4, 8, 16) and adapt ratio (0.1, 0.2, 0.5).
- Generalization (``--generalization``): P4Q trained on Tiny ImageNet (200 classes), evaluated
  zero-shot on CIFAR-10 and Imagenette.

    python benchmarks/p4q.py [--specs 4-4-8] [--rows fp,fp-prompt,fp-probe,minmax,ema,percentile,omse,qlp,p4q]
        [--epochs N] [--train-limit N] [--skip-ablations | --ablations 'n_ctx 4,ratio 0.5'] [--generalization] [--limit 0] [--json out.json]

Zero-shot rows use the 7-template ensemble, P4Q rows their learned prompt. Calibration (320 images)
and training images come from the CIFAR-10 train zip, as with ``vitq quantize --calib``.
"""

from __future__ import annotations

import copy

import common

import vitq
from vitq.data import data_root
from vitq.data.calibration import calibration_batches
from vitq.data.preprocess import image_transform

TRAIN = {"cifar10": "cifar10/train-1000-per-class.zip", "tiny-imagenet": common.TRAIN_ZIP}
ROWS = ("fp", "fp-prompt", "fp-probe", "minmax", "ema", "percentile", "omse", "qlp", "p4q")
ABLATIONS = [("prompt only", {"adapter": False}), ("QAdapter only", {"prompt": False}), ("both", {}),
             ("L_cls only", {"loss": "cls"}), ("L_kd only", {"loss": "kd"}),
             ("n_ctx 4", {"n_ctx": 4}), ("n_ctx 8", {"n_ctx": 8}),
             ("ratio 0.1", {"adapt_ratio": 0.1}), ("ratio 0.5", {"adapt_ratio": 0.5})]


def evaluate_row(model, args, tokenizer, datasets=("cifar10",), **fields) -> dict:
    row = dict(fields)
    for ds in datasets:
        m = common.score(model, "zero-shot", ds, args, tokenizer)
        row[f"{ds}_top1"], row[f"{ds}_top5"], row[f"{ds}_n"] = m["top1"], m["top5"], m["n"]
    row["size_mb"], row["gflops"] = round(common.size_mb(model), 2), round(common.gflops(model), 3)
    return row


def probe_row(model, args, probe_bits: int | None, **fields) -> dict:
    options = dict(limit=args.limit or None, batch_size=args.batch_size, seed=args.seed, progress=True,
                   train_data=data_root() / TRAIN["cifar10"], train_limit=args.train_limit or None, probe_bits=probe_bits)
    result, seconds = common.timed(lambda: vitq.evaluate(model, "linear-probe", data_root() / common.DATASETS["cifar10"], **options))
    return dict(fields, cifar10_top1=result["metrics"]["top1"], cifar10_n=result["num_examples"],
                size_mb=round(common.size_mb(model), 2), gflops=round(common.gflops(model), 3), seconds=round(seconds, 1))


def p4q_row(model, calib, spec: str, args, tokenizer, train: str = "cifar10", datasets=("cifar10",), **options) -> dict:
    opts = dict(train_data=str(data_root() / TRAIN[train]), train_limit=args.train_limit, epochs=args.epochs, **options)
    cfg = vitq.QuantConfig(method="p4q", bits=spec, seed=args.seed, options=opts)
    q, seconds = common.timed(lambda: vitq.quantize(copy.deepcopy(model), cfg, calib=calib, progress=True))
    info = q.vitq_info["p4q"]
    row = evaluate_row(q, args, tokenizer, datasets, seconds=round(seconds, 1), train_s=info["train_seconds"],
                       feature_s=info["feature_seconds"])
    return row


def main() -> None:
    p = common.base_parser(__doc__)
    p.add_argument("--specs", default="8-8-8,4-4-8,3-3-8,2-2-8")
    p.add_argument("--rows", default=",".join(ROWS))
    p.add_argument("--ablation-spec", default="4-4-8")
    p.add_argument("--skip-ablations", action="store_true")
    p.add_argument("--ablations", default="", help="comma-separated ablation names to run (default: all), e.g. 'n_ctx 4,ratio 0.5'")
    p.add_argument("--generalization", action="store_true")
    p.add_argument("--epochs", type=int, default=None, help="P4Q epochs (default: the method's)")
    p.add_argument("--train-limit", type=int, default=0, help="training images (0: the method's default)")
    args = p.parse_args()
    chosen = [a.strip() for a in args.ablations.split(",") if a.strip()]
    unknown = set(chosen) - {name for name, _ in ABLATIONS}
    if unknown:  # before any slow work
        raise SystemExit(f"unknown ablations {sorted(unknown)}; known: {', '.join(name for name, _ in ABLATIONS)}")
    model = common.setup(args)
    tokenizer = common.resolve_tokenizer(model)
    calib = calibration_batches(data_root() / TRAIN["cifar10"], args.calib_batches * args.calib_batch_size, args.calib_batch_size,
                                image_transform(model), tokenizer=tokenizer, seed=args.seed)
    from vitq.methods.p4q import DEFAULT_TRAIN_LIMIT, P4QOptions

    args.epochs = args.epochs or P4QOptions().epochs
    args.train_limit = args.train_limit or DEFAULT_TRAIN_LIMIT
    rows, wanted = [], args.rows.split(",")

    def emit(row):
        rows.append(row)
        print(table(rows[-1:]), flush=True)

    if "fp" in wanted:
        emit(evaluate_row(model, args, tokenizer, method="full precision: zero-shot", bits="32-32-32"))
    if "fp-prompt" in wanted:
        emit(dict(p4q_row(model, calib, "8-8-8", args, tokenizer, base="none", adapter=False), method="full precision: + Prompt", bits="32-32-32"))
    if "fp-probe" in wanted:
        emit(probe_row(model, args, None, method="full precision: + Linear Probe", bits="32-32-32"))
    for spec in args.specs.split(","):
        for name in ("minmax", "ema", "percentile", "omse"):
            if name in wanted or (name == "omse" and "qlp" in wanted):
                cfg = vitq.QuantConfig(method=name, bits=spec, seed=args.seed)
                q, seconds = common.timed(lambda: vitq.quantize(model, cfg, calib=calib, progress=False))
                if name in wanted:
                    emit(evaluate_row(q, args, tokenizer, method="Baseline (OMSE)" if name == "omse" else name, bits=spec, seconds=round(seconds, 1)))
                if name == "omse" and "qlp" in wanted:
                    emit(probe_row(q, args, int(spec.split("-")[0]), method="+ Quantized Linear Probe", bits=spec))
                del q
        if "p4q" in wanted:
            emit(dict(p4q_row(model, calib, spec, args, tokenizer), method="+ P4Q", bits=spec))
    ablations = []
    if not args.skip_ablations:
        for name, options in ABLATIONS:
            if chosen and name not in chosen:
                continue
            ablations.append(dict(p4q_row(model, calib, args.ablation_spec, args, tokenizer, **options), method=name, bits=args.ablation_spec))
            print(table(ablations[-1:]), flush=True)
    general = []
    if args.generalization:
        general.append(dict(p4q_row(model, calib, args.ablation_spec, args, tokenizer, train="tiny-imagenet",
                                    datasets=("cifar10", "imagenette")), method="P4Q trained on Tiny ImageNet", bits=args.ablation_spec))
        print(table(general), flush=True)
    print(f"\nP4Q on {args.model}: CIFAR-10 test ({args.limit or 'all'} images), trained on {args.train_limit} CIFAR-10 train images, {args.epochs} epochs\n")
    print(table(rows))
    if ablations:
        print(f"\nAblations at {args.ablation_spec}\n\n" + table(ablations))
    if general:
        print("\nGeneralization\n\n" + table(general))
    common.finish(args, {"benchmark": "p4q", "args": vars(args), "rows": rows, "ablations": ablations, "generalization": general})


def table(rows) -> str:
    shown = [dict(r, **{k: common.pct_se(r[k], r[k.rsplit("_", 1)[0] + "_n"]) for k in r if k.endswith(("_top1", "_top5"))}) for r in rows]
    sets = [k[:-5] for k in dict.fromkeys(k for r in rows for k in r if k.endswith("_top1"))]
    columns = [("method", "Method"), ("bits", "W-A-Attn")]
    for d in sets:
        columns += [(f"{d}_top1", f"{d} top-1"), (f"{d}_top5", f"{d} top-5")]
    return common.markdown(shown, columns + [("size_mb", "Size (MB)"), ("gflops", "GFLOPs"), ("seconds", "Wall (s)")])


if __name__ == "__main__":
    main()
