"""``vitq quantize``: calibrate and quantize a model, then save it as a reloadable folder."""

from __future__ import annotations

import argparse
import json

from ..config import QuantConfig


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("quantize", help="quantize a model with calibration images and save it",
                       description="Quantize a model and save it (safetensors + JSON) to --out.")
    p.add_argument("--model", help="hub id, local model folder, or zoo:NAME (e.g. zoo:clip-tiny); required unless --list-methods")
    p.add_argument("--method", default="minmax", help=f"quantization method (default minmax); see `vitq quantize --list-methods`")
    p.add_argument("--bits", "-b", default="W8A8", help="bit spec: W8A8, W4A4, or weights-activations-attention such as 4-4-8")
    p.add_argument("--calib", help="folder or .zip of calibration images (class subfolders also calibrate a text tower), "
                                   "or 'synthetic': data-free images made from the model itself (CLAMP-ViT's synthesis)")
    p.add_argument("--calib-text", metavar="FILE", help="sentences for a text tower's calibration: one a line, or a CSV with a "
                                                       "caption column (default: class-name prompts, or for a flat image folder "
                                                       "vitq's built-in sentences)")
    p.add_argument("--synth-steps", type=int, default=500, help="with --calib synthetic: gradient steps of the synthesis (default 500)")
    p.add_argument("--num-calib", type=int, default=32, help="number of calibration images (default 32)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--components", default="image,text", help="image, text, or image,text (default: every component the model has)")
    p.add_argument("--exclude", action="append", default=[], metavar="PATTERN", help="keep modules matching this fnmatch pattern in full precision (repeatable)")
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE", help="method option, e.g. percentile=99.9 (repeatable)")
    p.add_argument("--layer-bits", action="append", default=[], metavar="PATTERN=SPEC",
                   help="a per-layer bit plan: layers matching the fnmatch PATTERN get bit spec SPEC, e.g. "
                        "'vision_model.encoder.layers.0.*=W8A8' (repeatable; the last match wins)")
    p.add_argument("--tokenizer", help="tokenizer folder or hub id, when the model folder has none")
    p.add_argument("--preprocess", choices=("processor", "clip", "imagenet", "inception"),
                   help="image normalisation when the model has no saved image processor (see vitq eval --help)")
    p.add_argument("--skip-bad", action="store_true", help="skip unreadable calibration images instead of stopping")
    p.add_argument("--device", help="calibrate on this device, e.g. cuda or cuda:1 (default: cpu); the saved model loads on the CPU")
    p.add_argument("--dtype", default="float32", help="load the float model in this dtype: float32 (default) or bfloat16, where the method allows")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="output folder")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p.add_argument("--json", metavar="OUT", help="also write a JSON summary of the run here (atomically)")
    p.add_argument("--list-methods", action="store_true", help="print the known methods with their options and defaults, and exit")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--checkpoint-dir", help="methods that learn (recon): write a checkpoint after every block here "
                                            "(default: OUT.checkpoints, removed once the model is saved)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run from its checkpoints (same settings)")
    return p


def _parse_options(items: list[str]) -> dict:
    from ..errors import ConfigError

    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"cannot read option {item!r}", hint="write options as KEY=VALUE, e.g. --option percentile=99.9")
        try:
            out[key] = json.loads(value)
        except ValueError:
            out[key] = value
    return out


def _parse_layer_bits(items: list[str]) -> dict:
    from ..errors import ConfigError

    plan = {}
    for item in items:
        pattern, sep, spec = item.rpartition("=")
        if not sep or not pattern or not spec:
            raise ConfigError(f"cannot read --layer-bits {item!r}", hint="write PATTERN=SPEC, e.g. --layer-bits '*.layers.0.*=W8A8'")
        plan[pattern] = spec
    return plan


def list_methods() -> str:
    """Every method, its aliases, what it needs, and its options with their defaults."""
    from ..methods import method_infos

    lines = []
    for info in method_infos():
        aliases = f" (alias {', '.join(info.aliases)})" if info.aliases else ""
        calib = "" if info.needs_calibration else "; needs no calibration data"
        dtypes = f"; model dtype {' or '.join(info.dtypes)}"
        lines.append(f"{info.name}{aliases}: {info.summary.rstrip('.')}{calib}{dtypes}")
        for name, default, text in info.options.describe():
            shown = ",".join(map(str, default)) if isinstance(default, tuple) else str(default).lower() if isinstance(default, bool) else default
            lines.append(f"    --option {name}={shown}" + (f"    {text}" if text else ""))
    return "\n".join(lines)


def _checkpoint_options(method, cfg: QuantConfig, args) -> str | None:
    """``--checkpoint-dir``/``--resume`` as the method's options, for methods that checkpoint."""
    from ..errors import ConfigError

    takes = {name for name, _, _ in method.options.describe()} >= {"checkpoint_dir", "resume"}
    if not takes:
        if args.resume or args.checkpoint_dir:
            raise ConfigError(f"the {method.name} method writes no checkpoints", hint="drop --resume/--checkpoint-dir")
        return None
    folder = args.checkpoint_dir or cfg.options.get("checkpoint_dir") or f"{str(args.out).rstrip('/')}.checkpoints"
    cfg.options = {**cfg.options, "checkpoint_dir": str(folder), "resume": bool(args.resume or cfg.options.get("resume", False))}
    return str(folder)


def _unet_calibration(model, cfg: QuantConfig, progress: bool) -> list[dict]:
    """A UNet's calibration for a baseline method: Q-Diffusion's timestep-aware set (DDIM, 100 steps,
    every 5th), ``num_calib`` inputs in all."""
    from ..data.diffusion import timestep_calibration
    from ..models.loading import load_scheduler

    steps, interval = 100, 5
    per_step = max(1, -(-cfg.num_calib // (steps // interval)))
    return timestep_calibration(model, load_scheduler(model), steps=steps, interval=interval, per_step=per_step,
                                batch_size=cfg.batch_size, seed=cfg.seed, progress=progress).batches


def synthetic_calibration(model, cfg: QuantConfig, tokenizer=None, progress: bool = True, steps: int = 500):
    """``cfg.num_calib`` data-free calibration images (CLAMP-ViT's synthesis, its default settings)."""
    from ..data.synthetic import SynthesisConfig, synthesize

    images = synthesize(model, cfg.num_calib, SynthesisConfig(steps=steps, batch_size=cfg.batch_size, seed=cfg.seed),
                        tokenizer=tokenizer, progress=progress)
    print(f"synthesised {cfg.num_calib} calibration images in {images.seconds:.0f}s (data-free, CLAMP-ViT's recipe)")
    return images


def run(args) -> int:
    from ..errors import ConfigError

    if args.list_methods:
        print(list_methods())
        return 0
    if not args.model:
        raise ConfigError("--model is required", hint="name a hub id, a local model folder or zoo:NAME (e.g. --model zoo:clip-tiny)")
    if not args.out:
        raise ConfigError("--out is required", hint="name the folder to write the quantized model to")
    from ..api import quantize
    from ..data.calibration import calibration_batches
    from ..data.preprocess import image_transform
    from ..models.families import family_of
    from ..models.loading import load_model
    from ..models.prepare import quantizable_blocks, resolve_components
    from ..saving import check_output_dir, save

    cfg = QuantConfig(method=args.method, bits=args.bits, components=args.components, exclude=tuple(args.exclude),
                      bit_plan=_parse_layer_bits(args.layer_bits),
                      num_calib=args.num_calib, batch_size=args.batch_size, seed=args.seed, options=_parse_options(args.option))
    from ..methods import get_method

    method = get_method(cfg.method)  # fail on an unknown method or option before any slow work
    checkpoints = _checkpoint_options(method, cfg, args)
    trains_on_labels = "train_data" in {name for name, _, _ in method.options.describe()}
    if trains_on_labels and args.calib == "synthetic" and not cfg.options.get("train_data"):
        raise ConfigError(f"the {method.name} method trains on labelled images, which synthetic calibration does not give",
                          hint="pass a folder (or .zip) of class subfolders with --calib")
    if trains_on_labels and args.calib and not cfg.options.get("train_data"):
        cfg.options = {**cfg.options, "train_data": args.calib}  # a method that trains (p4q) learns on the --calib images
    method.parse_options(cfg.options)
    needs_calib = method.needs_calibration
    synthetic = args.calib == "synthetic"
    if args.calib and not method.takes_data:
        raise ConfigError(f"the {cfg.method} method takes no calibration data, but --calib was given",
                          hint=f"drop --calib, or choose a calibrated method (see --list-methods)")
    check_output_dir(args.out, args.overwrite)
    from ..io_utils import check_output_file

    check_output_file(args.json, "--json")
    from ..data.texts import read_texts

    texts = read_texts(args.calib_text) if args.calib_text else None  # a bad file fails before the model loads
    from ..models.loading import model_dtype

    dtype = str(model_dtype(args.dtype)).removeprefix("torch.")
    if dtype not in method.dtypes:
        raise ConfigError(f"the {method.name} method needs a model in {' or '.join(method.dtypes)}, not {dtype}",
                          hint="drop --dtype (float32 is the default), or choose another method")
    model = load_model(args.model, dtype=dtype)
    family = family_of(model)
    method.check_model(model)
    unet = family.kind == "unet"
    if unet and args.calib:
        raise ConfigError("a diffusion UNet calibrates on its sampler's inputs, not on images, but --calib was given",
                          hint="drop --calib: vitq draws a timestep-aware calibration set with the model's scheduler (--num-calib inputs)")
    if needs_calib and not args.calib and not unet:
        raise ConfigError(f"--calib is required by the {cfg.method} method", hint="pass a folder (or .zip) of calibration images")
    comps = resolve_components(family, cfg.components)
    if method.needs_calibration:
        quantizable_blocks(model, comps)  # an architecture vitq cannot quantize fails before any data is read
    cfg.components = comps
    tokenizer = None
    if "text" in comps and args.calib:
        from ..models.tokenizers import resolve_tokenizer

        tokenizer = resolve_tokenizer(model, args.tokenizer)
    batches = None
    if needs_calib and unet:
        batches = _unet_calibration(model, cfg, not args.quiet)
    elif synthetic and needs_calib:
        batches = synthetic_calibration(model, cfg, tokenizer, not args.quiet, args.synth_steps)
    elif args.calib and not synthetic:
        if texts is not None and tokenizer is None:
            raise ConfigError("--calib-text was given, but no text tower is being calibrated", hint="drop --calib-text, or add the text component")
        batches = calibration_batches(args.calib, cfg.num_calib, cfg.batch_size, image_transform(model, preprocess=args.preprocess),
                                      tokenizer=tokenizer, seed=cfg.seed, skip_bad=args.skip_bad, texts=texts)
        if batches.text_source is not None and batches.text_source != "class names":
            where = args.calib_text if texts is not None else "vitq's built-in sentences (no class folders in --calib; --calib-text FILE gives your own)"
            print(f"calibrating the text tower on {batches.text_source} from {where}")
    # the CLI's float model is its own: quantize it in place (no second copy in memory)
    qmodel = quantize(model, cfg, calib=batches, progress=not args.quiet, device=args.device, inplace=True)
    if args.calib and not synthetic:
        from pathlib import Path

        qmodel.vitq_info["calibration_data"] = str(Path(args.calib).resolve())  # `vitq report` analyses on the same images
    save(qmodel, args.out, overwrite=args.overwrite)
    if checkpoints is not None and not args.checkpoint_dir:
        import shutil

        shutil.rmtree(checkpoints, ignore_errors=True)  # the model is saved: the default checkpoints are spent
    info = qmodel.vitq_info
    print(f"quantized {args.model} with {cfg.method} at {cfg.bits} ({', '.join(comps)}) "
          f"in {info['calibration_seconds']:.1f}s; saved to {args.out}")
    recon = info.get("recon") or info.get("q_diffusion") or {}
    if args.json:
        from ..io_utils import write_json

        write_json(args.json, {"command": "quantize", "model": args.model, "out": str(args.out), "method": cfg.method,
                               "bits": cfg.bits, "components": list(comps), "seed": cfg.seed,
                               "calibration_seconds": info["calibration_seconds"], "stopped_early": bool(recon.get("stopped_early")),
                               "vitq_info": info})
    if recon.get("stopped_early"):
        print(f"stopped early as asked, after {len(recon['units'])} blocks: the saved model is partly reconstructed; "
              f"run the same command with --resume to finish it (checkpoints in {checkpoints})")
    return 0
