"""P4Q's Table 1 on zoo:clip-tiny: PTQ baselines (MinMax, EMA, Percentile, OMSE) at 8-8-8, 4-4-8,
3-3-8 and 2-2-8 (weights-activations-attention), zero-shot top-1/top-5 on CIFAR-10 test and Tiny
ImageNet val, model size and FLOPs, plus full precision; then image-only, text-only and both at 4-4-8;
then FQ-ViT's fuller scope (``--option scope=fqvit``: also pre-Softmax scores, linear outputs,
residual sums and embeddings) at 8-8-8 and 4-4-8.

    python benchmarks/p4q_baselines.py [--limit N] [--json out/p4q.json]

Accuracies are on the whole test sets by default, each with its standard error.
"""

from __future__ import annotations

import common
from tqdm.auto import tqdm

import vitq

METHODS = ("minmax", "ema", "percentile", "omse")
SPECS = ("8-8-8", "4-4-8", "3-3-8", "2-2-8")
DATASETS = ("cifar10", "tiny-imagenet")


def evaluate_row(model, args, tokenizer, **fields) -> dict:
    row = dict(fields)
    for ds in DATASETS:
        m = common.score(model, "zero-shot", ds, args, tokenizer)
        row[f"{ds}_top1"], row[f"{ds}_top5"], row[f"{ds}_n"], row["n"] = m["top1"], m["top5"], m["n"], m["n"]
    row["size_mb"] = round(common.size_mb(model), 2)
    row["gflops"] = round(common.gflops(model), 3)
    return row


def main() -> None:
    p = common.base_parser(__doc__)
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--specs", default=",".join(SPECS))
    p.add_argument("--skip-components", action="store_true", help="skip the image/text/both comparison")
    p.add_argument("--skip-fqvit-scope", action="store_true", help="skip the rows with FQ-ViT's fuller scope")
    args = p.parse_args()
    model = common.setup(args)
    tokenizer = common.resolve_tokenizer(model)
    calib = common.calibration(model, args)
    rows = [evaluate_row(model, args, tokenizer, method="full precision", bits="32-32-32", components="-", scope="-", calib_s=0.0)]
    methods = args.methods.split(",")
    jobs = [(m, s, "image,text", "vitq") for s in args.specs.split(",") for m in methods]
    if not args.skip_components:
        jobs += [(m, "4-4-8", c, "vitq") for c in ("image", "text") for m in methods]
    if not args.skip_fqvit_scope:
        jobs += [(m, s, "image,text", "fqvit") for s in ("8-8-8", "4-4-8") for m in methods]
    for method, spec, comps, scope in tqdm(jobs, desc="p4q baselines"):
        cfg = vitq.QuantConfig(method=method, bits=spec, components=comps, seed=args.seed, options={"scope": scope})
        q, seconds = common.timed(lambda: vitq.quantize(model, cfg, calib=calib, progress=False))
        row = evaluate_row(q, args, tokenizer, method=method, bits=spec, components=comps, scope=scope, calib_s=round(seconds, 2))
        row["quantized"] = q.vitq_info["quantized"]
        rows.append(row)
        del q
    shown = []
    for r in rows:
        shown.append(dict(r, **{k: common.pct_se(r[k], r[k.rsplit("_", 1)[0] + "_n"]) for k in r if k.endswith(("_top1", "_top5"))}))
    columns = [("method", "Method"), ("bits", "W-A-Attn"), ("components", "Quantized"), ("scope", "Scope"),
               ("cifar10_top1", "CIFAR-10 top-1"), ("cifar10_top5", "CIFAR-10 top-5"),
               ("tiny-imagenet_top1", "TinyIN top-1"), ("tiny-imagenet_top5", "TinyIN top-5"),
               ("size_mb", "Size (MB)"), ("gflops", "GFLOPs"), ("calib_s", "Calib (s)")]
    print(f"\nP4Q Table 1 shape on {args.model} ({rows[0]['n']} images per set, zero-shot, 7-template ensemble)\n")
    print(common.markdown(shown, columns))
    for scope in ("vitq", "fqvit"):
        example = next((r for r in rows if r.get("scope") == scope and r["components"] == "image,text"), None)
        if example is not None:
            print(f"\nQuantized tensors, scope {scope}: " + "; ".join(
                f"{role} x{e['count']} ({', '.join(e['quantizers'])})" for role, e in example["quantized"].items()))
    common.finish(args, {"benchmark": "p4q_baselines", "model": args.model, "args": vars(args), "rows": rows})


if __name__ == "__main__":
    main()
