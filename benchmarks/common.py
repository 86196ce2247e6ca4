"""Shared by the benchmark scripts: the reference model, calibration batches from the training
images, zero-shot / top-1 scoring on the real test sets, and Markdown tables.

Run the scripts from the repository root: ``python benchmarks/p4q_baselines.py --help``.
"""

from __future__ import annotations

import argparse
import math
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch  # noqa: E402

import vitq  # noqa: E402
from vitq.data import data_root  # noqa: E402
from vitq.data.calibration import calibration_batches  # noqa: E402
from vitq.data.preprocess import image_transform  # noqa: E402
from vitq.eval.cost import compute_cost, model_size  # noqa: E402
from vitq.models.tokenizers import resolve_tokenizer  # noqa: E402
from vitq.io_utils import write_json  # noqa: E402
from vitq.models.loading import load_model  # noqa: E402

# Test sets, relative to the data root; the calibration set is the training zip (never the test set).
DATASETS = {
    "cifar10": "cifar10/test",
    "cifar10-train": "cifar10/train-1000-per-class.zip",
    "tiny-imagenet": "tiny-imagenet-200/val",
    "imagenette": "imagenette-val-500",
}
TRAIN_ZIP = "tiny-imagenet-200/train-200-per-class.zip"


def base_parser(description: str, model: str = "zoo:clip-tiny") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--model", default=model)
    p.add_argument("--limit", type=int, default=0,
                   help="images per test set, class-balanced (default 0: the whole set, as tables that rank methods need)")
    p.add_argument("--calib-batches", type=int, default=10, help="calibration iterations (P4Q: 10)")
    p.add_argument("--calib-batch-size", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=128, help="evaluation batch size")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="also write all rows as JSON here")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = leave as is)")
    return p


def add_reference_models(p: argparse.ArgumentParser) -> None:
    """The reference models' options: the classifier, the dual encoder and the calibration size."""
    p.add_argument("--deit", default="zoo:deit-tiny", help="classifier to score ('' to skip)")
    p.add_argument("--clip", default="zoo:clip-tiny", help="dual encoder to score ('' to skip)")
    p.add_argument("--num-calib", type=int, default=32)


def reference_targets(args, zero_shot=("cifar10", "tiny-imagenet")) -> list[tuple]:
    """(label, model spec, components, task, test sets) of each column group: the classifier (top-1 on
    Tiny ImageNet), the dual encoder's image tower alone and both towers (zero-shot on ``zero_shot``)."""
    out = []
    if args.deit:
        out.append(("deit-tiny", args.deit, ("image",), "top1", ("tiny-imagenet",)))
    if args.clip:
        out.append(("clip-tiny image", args.clip, ("image",), "zero-shot", tuple(zero_shot)))
        out.append(("clip-tiny both", args.clip, ("image", "text"), "zero-shot", tuple(zero_shot)))
    return out


def setup(args):
    if args.threads:
        torch.set_num_threads(args.threads)
    root = data_root()
    if not (root / TRAIN_ZIP).exists():
        raise SystemExit(f"the benchmark needs the real data under {root} (set VITQ_DATA): {TRAIN_ZIP} is missing")
    torch.manual_seed(args.seed)
    return load_model(args.model)


def calibration(model, args, num: int | None = None, text: bool = True) -> list[dict]:
    """P4Q's recipe: a few batches of training images (and class-name prompts for a text tower)."""
    tokenizer = resolve_tokenizer(model) if text else None
    n = num or args.calib_batches * args.calib_batch_size
    return calibration_batches(data_root() / TRAIN_ZIP, n, args.calib_batch_size, image_transform(model),
                               tokenizer=tokenizer, seed=args.seed)


def score(model, task: str, dataset: str, args, tokenizer=None, train: str | None = None) -> dict:
    """Metrics of one model on one test set (zero-shot with the 7-template ensemble, top-1, or a
    linear probe trained on ``train``)."""
    options = dict(limit=args.limit or None, batch_size=args.batch_size, seed=args.seed, progress=True)
    if task == "zero-shot":
        options.update(templates="ensemble7", tokenizer=tokenizer)
    if task == "linear-probe":
        options.update(train_data=data_root() / DATASETS[train])
    result = vitq.evaluate(model, task, data_root() / DATASETS[dataset], **options)
    return dict(result["metrics"], n=result["num_examples"])


def score_into(row: dict, model, task: str, datasets, args, tokenizer=None) -> dict:
    """``row`` with ``<dataset>_top1`` and ``<dataset>_n`` for each test set."""
    for ds in datasets:
        m = score(model, task, ds, args, tokenizer)
        row[f"{ds}_top1"], row[f"{ds}_n"] = m["top1"], m["n"]
    return row


def size_mb(model) -> float:
    """Model size as the papers report it: parameters x bits / 8, in MB (10^6 bytes)."""
    return model_size(model)["bytes"] / 1e6


def gflops(model) -> float:
    return compute_cost(model)["flops"] / 1e9


def median_ms_per_image(fn, batch: int, repeats: int = 5, warmup: int = 2) -> float:
    """Median wall time of ``fn()`` over ``repeats`` runs after ``warmup``, per image, in ms."""
    import statistics

    from vitq.bench import time_runner

    with torch.no_grad():
        times = time_runner(fn, warmup, repeats)
    return 1000 * statistics.median(times) / batch


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def pct(x) -> str:
    return "-" if x is None else f"{100 * x:.2f}"


def standard_error(p: float, n: int) -> float:
    """Standard error of an accuracy p measured on n images (binomial)."""
    return math.sqrt(max(p * (1 - p), 0.0) / n) if n else float("nan")


def pct_se(p, n) -> str:
    """``22.92 ± 0.42``: an accuracy in percent with its standard error."""
    return "-" if p is None else f"{100 * p:.2f} ± {100 * standard_error(p, n):.2f}"


def markdown(rows: list[dict], columns: list[tuple[str, str]]) -> str:
    """A Markdown table of ``rows`` with (key, header) columns."""
    head = "| " + " | ".join(h for _, h in columns) + " |"
    rule = "|" + "|".join("---" for _ in columns) + "|"
    body = ["| " + " | ".join(str(r.get(k, "")) for k, _ in columns) + " |" for r in rows]
    return "\n".join([head, rule, *body])


def finish(args, payload: dict) -> None:
    if args.json:
        write_json(Path(args.json), payload)
        print(f"\nwrote {args.json}")


def quantize_timed(model, method: str, bits: str, components, args, bit_plan=None, **options):
    """``vitq.quantize`` with the benchmark's seed and calibration size; returns (model, seconds)."""
    cfg = vitq.QuantConfig(method=method, bits=bits, components=components, seed=args.seed,
                           num_calib=getattr(args, "num_calib", 32), options=options, bit_plan=bit_plan or {})
    return timed(lambda: vitq.quantize(model, cfg, calib=args.calib_data, progress=not getattr(args, "quiet", False)))


def accuracy_table(rows: list[dict], leading: list[tuple[str, str]], trailing: list[tuple[str, str]]) -> str:
    """Rows with ``<dataset>_top1`` and ``<dataset>_n`` keys as a table, each top-1 with its standard error."""
    datasets = [k[:-5] for k in dict.fromkeys(k for r in rows for k in r if k.endswith("_top1"))]
    shown = [dict(r, **{f"{d}_top1": pct_se(r[f"{d}_top1"], r[f"{d}_n"]) for d in datasets if f"{d}_top1" in r}) for r in rows]
    return markdown(shown, leading + [(f"{d}_top1", f"{d} top-1") for d in datasets] + trailing)
