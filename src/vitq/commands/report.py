"""``vitq report``: Markdown and self-contained HTML reports of what quantization lost, and where."""

from __future__ import annotations

import argparse


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("report", help="write a Markdown + HTML report (tables and figures) of results and quantized models",
                       description="Tables of every result JSON given (vitq eval / quantize / bench --json, benchmark --json), "
                                   "and for each saved model folder a per-layer error table (worst layers first) and the papers' "
                                   "figures, from a few images run through the model and the float model it came from.")
    p.add_argument("inputs", nargs="+", metavar="RESULT_OR_MODEL_DIR", help="result JSON files and saved model folders")
    p.add_argument("--out", required=True, help="folder for report.md, report.html, report.json and figures/")
    p.add_argument("--data", help="images (folder or .zip) to analyse the model folders on (default: the images each was calibrated on)")
    p.add_argument("--reference", help="the float model to compare with (default: the one each folder was quantized from)")
    p.add_argument("--num-images", type=int, default=32, help="images per model folder (default 32)")
    p.add_argument("--batch-size", type=int, default=8, help="images per forward pass (default 8; lower it for large models)")
    p.add_argument("--top", type=int, default=25, help="layers shown in report.md, worst first (default 25; the HTML and CSV have all)")
    p.add_argument("--title", default="vitq report")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def run(args) -> int:
    from ..report import build_report

    summary = build_report(args.inputs, args.out, data=args.data, reference=args.reference, num_images=args.num_images,
                           batch_size=args.batch_size, seed=args.seed, top=args.top, progress=not args.quiet,
                           overwrite=args.overwrite, title=args.title)
    print(f"wrote {summary['out']}/report.md and report.html: {summary['accuracy_rows']} accuracy rows, {summary['speed_rows']} speed rows, "
          f"{summary['models']} model{'s' if summary['models'] != 1 else ''} analysed, {len(summary['figures'])} figures")
    return 0
