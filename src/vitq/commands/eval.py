"""``vitq eval``: score a model (full precision or quantized) and write the result as JSON.

Under ``torchrun --nproc-per-node N vitq eval …`` each process evaluates its share of the data and
rank 0 prints and writes the (identical) result.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

TASK_CHOICES = ("zero-shot", "linear-probe", "retrieval", "top1", "fidelity", "cost", "generation")


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "eval", help="evaluate a model: zero-shot, linear probe, retrieval, top-1, fidelity, cost",
        description="Evaluate a model and print (and optionally write) the result as JSON. "
                    "Run under torchrun to split the data across processes.",
    )
    p.add_argument("--model", required=True, help="hub id, local model folder, vitq quantized folder, or zoo:NAME")
    p.add_argument("--task", required=True, choices=TASK_CHOICES)
    p.add_argument("--data", help="test data: a folder or .zip of class folders; for retrieval a captions CSV (or its folder)")
    p.add_argument("--train-data", help="linear probe: training images (folder or .zip of class folders)")
    p.add_argument("--reference", help="fidelity: the full-precision model to compare with (generation: PSNR/SSIM against its samples)")
    p.add_argument("--limit", type=int, help="evaluate a class-balanced subset of N images (the same for the same --seed); "
                                              "generation: the number of samples (default 500)")
    p.add_argument("--steps", type=int, default=50, help="generation: DDIM sampler steps (default 50)")
    p.add_argument("--train-limit", type=int, help="linear probe: N training images (default: --limit)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--templates", default="ensemble7",
                   help="zero-shot prompts: ensemble7, imagenet80, simple, a template like 'a photo of a {}.', or a file of templates")
    p.add_argument("--tokenizer", help="tokenizer folder or hub id, when the model folder has none")
    p.add_argument("--preprocess", choices=("processor", "clip", "imagenet", "inception"),
                   help="image normalisation when the model has no saved image processor: clip, imagenet or inception "
                        "mean/std (resize and crop to the config's image size); processor insists on the saved one")
    p.add_argument("--label-map", default="auto", choices=("auto", "names", "index"),
                   help="top1: match data classes to model labels by name or by index (default: names when they all match)")
    p.add_argument("--skip-bad", action="store_true", help="skip unreadable images and count them instead of stopping")
    p.add_argument("--device", help="evaluate on this device, e.g. cuda (default: cpu)")
    p.add_argument("--dtype", help="load a float model in this dtype (float32 default, or bfloat16); quantized folders keep theirs")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=0, help="DataLoader worker processes for decoding images")
    p.add_argument("--cache-dir", help="keep class text embeddings here between runs")
    p.add_argument("--plot", help="fidelity: save the image-text similarity matrices as this PNG (default: beside --json)")
    p.add_argument("--cost", action="store_true", help="also report size per component and FLOPs/BOPs per image")
    p.add_argument("--checkpoint", metavar="DIR", help="save finished batches here as the run goes (for --resume)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run from --checkpoint DIR")
    p.add_argument("--json", metavar="OUT", help="write the result JSON here (atomically)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def load(spec: str, device: str | None = None, dtype: str | None = None):
    from ..saving import load_any

    model = load_any(spec, dtype=dtype)
    return model if device is None else model.to(device)


def _generation(args) -> int:
    """A diffusion UNet: sample and score (vitq.eval.generation); --data is the real-image folder."""
    from ..errors import ConfigError
    from ..eval.generation import evaluate_generation
    from ..io_utils import check_output_file, to_json, write_json
    from ..models.families import family_of

    check_output_file(args.json, "--json")
    model = load(args.model, args.device, args.dtype)
    if family_of(model).kind != "unet":
        raise ConfigError("--task generation evaluates diffusion UNets, not this model", hint="for this model use top1, zero-shot, retrieval or fidelity")
    reference = load(args.reference, args.device, args.dtype) if args.reference else None
    result = evaluate_generation(model, reference, real=args.data, samples=args.limit or 500, steps=args.steps,
                                 seed=args.seed, progress=not args.quiet)
    result["model"] = args.model
    if args.reference:
        result["reference"] = args.reference
    if args.json:
        write_json(args.json, result)
    sys.stdout.write(to_json(result))
    return 0


def run(args) -> int:
    from ..errors import ConfigError
    from ..eval import distributed, evaluate
    from ..io_utils import check_output_file, to_json, write_json

    if args.task == "generation":
        return _generation(args)
    if args.task != "cost" and not args.data:
        raise ConfigError(f"--task {args.task} needs --data PATH")
    if args.task == "fidelity" and not args.reference:
        raise ConfigError("--task fidelity needs --reference MODEL (the full-precision model)")
    check_output_file(args.json, "--json")
    check_output_file(args.plot, "--plot")
    plot = args.plot
    if args.task == "fidelity" and plot is None and args.json:
        plot = str(Path(args.json).with_suffix("")) + "_similarity.png"
    model = load(args.model, args.device, args.dtype)
    from ..errors import ModelError
    from ..models.families import family_of

    try:
        unet = family_of(model).kind == "unet"
    except ModelError:  # evaluate() says what it cannot do with an unknown model
        unet = False
    if unet:
        raise ConfigError(f"--task {args.task} does not apply to a diffusion UNet", hint="evaluate it with --task generation")
    result = evaluate(
        model, args.task, args.data,
        reference=load(args.reference, args.device, args.dtype) if args.reference else None,
        batch_size=args.batch_size, limit=args.limit, train_limit=args.train_limit, seed=args.seed,
        skip_bad=args.skip_bad, templates=args.templates, tokenizer=args.tokenizer, train_data=args.train_data,
        num_workers=args.workers, cache_dir=args.cache_dir, plot=plot, progress=not args.quiet,
        label_map=args.label_map, cost=args.cost, checkpoint=args.checkpoint, resume=args.resume,
        preprocess=args.preprocess,
    )
    result["model"] = args.model  # the spec as the user wrote it
    if args.reference:
        result["reference"] = args.reference
    if distributed.is_main():
        if args.json:
            write_json(args.json, result)
        sys.stdout.write(to_json(result))
    return 0
