"""``vitq bench``: throughput and latency of the image and text towers on every runtime."""

from __future__ import annotations

import argparse


def _list(text: str, known, what: str) -> list[str]:
    from ..errors import ConfigError

    items = [t.strip() for t in text.split(",") if t.strip()]
    bad = [t for t in items if t not in known]
    if bad or not items:
        raise ConfigError(f"unknown {what}: {', '.join(bad) or '(none given)'}", hint=f"choose from: {', '.join(known)}")
    return items


def add_parser(sub) -> argparse.ArgumentParser:
    from ..bench import MODELS, RUNTIMES, TOWERS

    p = sub.add_parser("bench", help="measure speed of PyTorch, ONNX Runtime, OpenVINO and vitq's integer export",
                       description="Median ms/image (after warm-up) of each tower on each runtime, with speed-up over PyTorch FP32.")
    p.add_argument("--model", default="clip-vit-b32",
                   help=f"{', '.join(MODELS)} (random weights for the full-size configs), any model spec (folder, zoo:NAME), "
                        "or a folder written by vitq quantize (timed as it is, next to the float model it came from)")
    p.add_argument("--batch-size", default="1,32", help="comma-separated batch sizes (default 1,32)")
    p.add_argument("--runtimes", help=f"comma-separated subset of: {', '.join(RUNTIMES)} (default: all but the vitq-saved rows; "
                                       "for a saved vitq folder, that model on each runtime beside its float source and the int8 peers)")
    p.add_argument("--towers", default=",".join(TOWERS), help="image, text or image,text")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per measurement; the median is reported (default 3)")
    p.add_argument("--warmup", type=int, default=1, help="untimed runs first (default 1)")
    p.add_argument("--seq-len", type=int, default=77, help="text length in tokens (default 77, capped by the model)")
    p.add_argument("--threads", type=int, help="PyTorch threads (default: PyTorch's choice)")
    p.add_argument("--json", metavar="OUT", help="write the rows as JSON (atomically)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def run(args) -> int:
    from ..errors import ConfigError
    from ..bench import RUNTIMES, TOWERS, default_runtimes, format_table, run_benchmark

    runtimes = _list(args.runtimes or ",".join(default_runtimes(args.model)), RUNTIMES, "runtime")
    towers = _list(args.towers, TOWERS, "tower")
    try:
        batches = [int(b) for b in args.batch_size.split(",") if b.strip()]
    except ValueError:
        batches = []
    if not batches or min(batches) < 1:
        raise ConfigError(f"cannot read batch sizes {args.batch_size!r}", hint="give positive integers, e.g. --batch-size 1,32")
    if args.repeats < 1 or args.warmup < 0:
        raise ConfigError("--repeats must be at least 1 and --warmup at least 0")
    from ..io_utils import check_output_file

    check_output_file(args.json, "--json")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    rows = run_benchmark(args.model, towers, batches, runtimes, repeats=args.repeats, warmup=args.warmup,
                         seq_len=args.seq_len, progress=not args.quiet)
    print(format_table(rows))
    if args.json:
        from ..io_utils import write_json

        write_json(args.json, rows)
        print(f"wrote {len(rows)} rows to {args.json}")
    return 0
