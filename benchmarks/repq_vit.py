"""RepQ-ViT's tables on vitq's reference models.

- Main table: zoo:deit-tiny (top-1, Tiny ImageNet val) and zoo:clip-tiny (zero-shot; image tower
  only, and both towers) at W4A4 and W6A6; rows full precision, minmax, omse, repq-vit, with the
  calibration wall time. All methods calibrate on the same 32 training images.
- Ablations (W4A4): post-LayerNorm layer-wise / channel-wise / scale reparam, post-Softmax
  log2 / log-sqrt2 / scale reparam, and calibration order: sequential (the official code's, the
  default: each quantizer on inputs quantized by the ones before it) or parallel (float inputs).
- Calibration cost: repq-vit W4A4 with 32 images on a full-size ViT-B/16 config (random weights).

    python benchmarks/repq_vit.py [--limit N] [--json out/repq.json]

Accuracies are on the whole test sets by default, each with its standard error.
"""

from __future__ import annotations

import common
import torch
from tqdm.auto import tqdm

import vitq

METHODS = ("minmax", "omse", "repq-vit")
SPECS = ("W4A4", "W6A6")
POST_LN = ("layer", "channel", "reparam")
SOFTMAX = ("log2", "logsqrt2", "reparam")


def targets(args):
    """(label, model spec, components, task, datasets) of every column group."""
    return common.reference_targets(args)


def run_row(model, calib, target, args, tokenizer, method, bits, **options) -> dict:
    label, _, comps, task, datasets = target
    row = {"model": label, "method": method, "bits": bits, **options}
    if method == "full precision":
        q, row["calib_s"] = model, 0.0
    else:
        cfg = vitq.QuantConfig(method=method, bits=bits, components=comps, seed=args.seed, num_calib=args.num_calib, options=options)
        q, seconds = common.timed(lambda: vitq.quantize(model, cfg, calib=calib, progress=False))
        row["calib_s"] = round(seconds, 2)
    for ds in datasets:
        m = common.score(q, task, ds, args, tokenizer)
        row[f"{ds}_top1"], row[f"{ds}_n"], row["n"] = m["top1"], m["n"], m["n"]
    if method != "full precision":
        row["calibration"] = q.vitq_info.get("calibration", "parallel")
    if method == "repq-vit":
        row.update({k: v for k, v in q.vitq_info["repq"].items() if k in ("post_ln", "softmax")})
    return row


def table(rows, datasets_by_model) -> str:
    shown = [dict(r, **{k: common.pct_se(v, r.get(k[: -len("_top1")] + "_n", r["n"])) for k, v in r.items() if k.endswith("_top1")})
             for r in rows]
    cols = [("model", "Model"), ("method", "Method"), ("bits", "Bits")]
    for key in ("post_ln", "softmax", "calibration"):
        if any(key in r for r in rows):
            cols.append((key, key))
    for ds in datasets_by_model:
        cols.append((f"{ds}_top1", f"{ds} top-1"))
    cols.append(("calib_s", "Calib (s)"))
    return common.markdown(shown, cols)


def vit_b16_calibration_seconds(args) -> float:
    import transformers as T

    torch.manual_seed(0)
    model = T.ViTForImageClassification(T.ViTConfig(image_size=224, patch_size=16, num_labels=1000)).eval()
    calib = [torch.randn(args.num_calib, 3, 224, 224)]
    cfg = vitq.QuantConfig(method="repq-vit", bits="W4A4", components="image", num_calib=args.num_calib)
    _, seconds = common.timed(lambda: vitq.quantize(model, cfg, calib=calib, progress=True))
    return seconds


def main() -> None:
    p = common.base_parser(__doc__)
    common.add_reference_models(p)
    p.add_argument("--specs", default=",".join(SPECS))
    p.add_argument("--skip-ablations", action="store_true")
    p.add_argument("--skip-vit-b16", action="store_true")
    args = p.parse_args()
    args.model = args.clip or args.deit
    common.setup(args)
    main_rows, ablation_rows, datasets = [], [], []
    for target in targets(args):
        label, spec, comps, task, dss = target
        model = common.load_model(spec)
        tokenizer = common.resolve_tokenizer(model) if task == "zero-shot" else None
        calib = common.calibration(model, args, num=args.num_calib, text="text" in comps)
        datasets += [d for d in dss if d not in datasets]
        jobs = [("full precision", "-", {})] + [(m, b, {}) for b in args.specs.split(",") for m in METHODS]
        for method, bits, opts in tqdm(jobs, desc=f"main table: {label}"):
            main_rows.append(run_row(model, calib, target, args, tokenizer, method, bits, **opts))
        if not args.skip_ablations and label != "clip-tiny both":  # ablations on the image towers
            abl = [("repq-vit", "W4A4", {"post_ln": v, "softmax": "reparam"}) for v in POST_LN]
            abl += [("repq-vit", "W4A4", {"post_ln": "reparam", "softmax": v}) for v in SOFTMAX if v != "reparam"]
            abl += [("repq-vit", "W4A4", {"sequential": False})]  # calibration on float inputs
            for method, bits, opts in tqdm(abl, desc=f"ablations: {label}"):
                ablation_rows.append(run_row(model, calib, target, args, tokenizer, method, bits, **opts))
    print(f"\nRepQ-ViT main table ({args.limit or 'all'} images per test set, {args.num_calib} calibration images)\n")
    print(table(main_rows, datasets))
    if ablation_rows:
        print("\nAblations at W4A4 (post_ln: layer = layer-wise, channel = channel-wise, reparam = scale reparam; "
              "softmax: log2, logsqrt2, reparam = log-sqrt2 as shift-only log2; calibration: sequential = on "
              "quantized inputs, parallel = on float inputs)\n")
        print(table(ablation_rows, datasets))
    b16 = None
    if not args.skip_vit_b16:
        b16 = vit_b16_calibration_seconds(args)
        print(f"\nrepq-vit W4A4 calibration on a full-size ViT-B/16 (random weights), {args.num_calib} images: {b16:.1f} s")
    common.finish(args, {"benchmark": "repq_vit", "args": vars(args), "main": main_rows, "ablations": ablation_rows, "vit_b16_calib_s": b16})


if __name__ == "__main__":
    main()
