"""DQ-CLIP's two tables: dynamic int8 quantization (``--method dynamic``) of CLIP's image and text
encoders, in both variants: ``paper`` (PyTorch's quantize_dynamic, per-tensor weights and
activations, what the paper ran) and ``torchao`` (per-channel weights, per-token activations).

- Table 1 shape: per quantized component (none, image): model size, linear-probe accuracy
  (CIFAR-10) and image inference time per image.
- Table 2 shape: per component (none, combined, image, text): size, zero-shot top-1 and top-5.

Accuracy on zoo:clip-tiny; size and latency also on full-size CLIP ViT-B/32 and ViT-B/16 configs
with random weights (speed and size do not depend on the values), so the size column can be
checked against the paper's 577 MB -> 343 MB for combined ViT-B/32. Sizes are the saved folder's
bytes on disk in MiB (as the paper's "MB"), next to parameters x bits / 8.

    python benchmarks/dq_clip.py [--limit 2000] [--full-size vit-b32,vit-b16] [--json out/dq.json]
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import common
import torch

import vitq
from vitq.eval.cost import folder_bytes, model_size

COMPONENTS = {"none": None, "combined": "image,text", "image": "image", "text": "text"}


def disk_mib(model) -> float:
    """Bytes on disk of the model saved the way vitq saves it (int8 codes for int8 weights)."""
    with tempfile.TemporaryDirectory() as tmp:
        if getattr(model, "vitq_info", None) is None:
            model.save_pretrained(tmp)
        else:
            vitq.save(model, Path(tmp) / "m")
        return folder_bytes(tmp) / 2**20


VARIANTS = ("paper", "torchao")


def quantized(model, comps, args, variant: str = "torchao"):
    if comps is None:
        return model
    cfg = vitq.QuantConfig(method="dynamic", components=comps, seed=args.seed, options={"variant": variant})
    return vitq.quantize(model, cfg, progress=False)


def jobs():
    """(component name, components, variant) of every row: full precision once, then both variants."""
    for name, comps in COMPONENTS.items():
        for variant in (("-",) if comps is None else VARIANTS):
            yield name, comps, variant


def image_latency(model, size: int, args, batch: int, compile_it: bool = False) -> float:
    x = torch.randn(batch, 3, size, size)
    fam = vitq.models.families.family_of(model)
    if compile_it:
        model.vision_model.compile()
    return common.median_ms_per_image(lambda: fam.encode_image(model, x), batch, repeats=args.repeats)


def reference_tables(model, args) -> tuple[list, list]:
    tokenizer = common.resolve_tokenizer(model)
    size = model.config.vision_config.image_size
    table1, table2 = [], []
    for name, comps, variant in jobs():
        q = quantized(model, comps, args, variant)
        row = {"component": name, "variant": variant, "size_mib": round(disk_mib(q), 2),
               "size_params_mb": round(model_size(q)["bytes"] / 2**20, 2)}
        zs = {ds: common.score(q, "zero-shot", ds, args, tokenizer) for ds in ("cifar10", "tiny-imagenet")}
        table2.append(dict(row, **{f"{ds}_{k}": zs[ds][k] for ds in zs for k in ("top1", "top5")}, n=zs["cifar10"]["n"]))
        if name in ("none", "image"):
            probe = common.score(q, "linear-probe", "cifar10", args, train="cifar10-train")
            eager = image_latency(q, size, args, args.latency_batch)
            # torch.compile targets torchao's kernels; quantize_dynamic's are eager-only
            compiled = image_latency(q, size, args, args.latency_batch, compile_it=True) if args.compile and variant != "paper" else None
            table1.append(dict(row, probe_top1=probe["top1"], ms_eager=round(eager, 3),
                               ms_compiled=None if compiled is None else round(compiled, 3)))
    return table1, table2


def full_size_rows(args) -> list[dict]:
    import transformers as T

    rows = []
    for name in filter(None, args.full_size.split(",")):
        patch = {"vit-b32": 32, "vit-b16": 16}[name]
        torch.manual_seed(0)
        model = T.CLIPModel(T.CLIPConfig(vision_config={"patch_size": patch})).eval()
        for comp, comps, variant in jobs():
            q = quantized(model, comps, args, variant)
            row = {"model": f"CLIP {name}", "component": comp, "variant": variant, "size_mib": round(disk_mib(q), 1),
                   "size_params_mb": round(model_size(q)["bytes"] / 2**20, 1)}
            if comp in ("none", "image"):
                row["ms_eager"] = round(image_latency(q, 224, args, args.full_batch), 1)
                if args.full_compile and variant != "paper":
                    row["ms_compiled"] = round(image_latency(q, 224, args, args.full_batch, compile_it=True), 1)
            rows.append(row)
    return rows


def main() -> None:
    p = common.base_parser(__doc__)
    p.add_argument("--full-size", default="vit-b32,vit-b16", help="random-weight CLIP configs for size/latency ('' to skip)")
    p.add_argument("--latency-batch", type=int, default=32)
    p.add_argument("--full-batch", type=int, default=8)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--no-compile", dest="compile", action="store_false", help="skip the torch.compile timings")
    p.add_argument("--full-compile", action="store_true", help="also time torch.compile on the full-size configs (slow to compile)")
    args = p.parse_args()
    model = common.setup(args)
    table1, table2 = reference_tables(model, args)
    shown1 = [dict(r, probe_top1=common.pct(r["probe_top1"])) for r in table1]
    print(f"\nDQ-CLIP Table 1 shape on {args.model} (linear probe: CIFAR-10, {args.limit or 'all'} images; time: image tower, batch {args.latency_batch})\n")
    print(common.markdown(shown1, [("component", "Quantized"), ("variant", "Variant"), ("size_mib", "Size on disk (MiB)"),
                                   ("size_params_mb", "Params x bits (MiB)"), ("probe_top1", "Linear probe top-1"), ("ms_eager", "ms/image eager"), ("ms_compiled", "ms/image compiled")]))
    shown2 = [dict(r, **{k: common.pct(v) for k, v in r.items() if k.endswith(("top1", "top5"))}) for r in table2]
    print(f"\nDQ-CLIP Table 2 shape on {args.model} (zero-shot, 7-template ensemble, {table2[0]['n']} images per set)\n")
    print(common.markdown(shown2, [("component", "Quantized"), ("variant", "Variant"), ("size_mib", "Size on disk (MiB)"),
                                   ("cifar10_top1", "CIFAR-10 top-1"), ("cifar10_top5", "CIFAR-10 top-5"),
                                   ("tiny-imagenet_top1", "TinyIN top-1"), ("tiny-imagenet_top5", "TinyIN top-5")]))
    big = full_size_rows(args)
    if big:
        print(f"\nFull-size CLIP configs, random weights (image tower latency at batch {args.full_batch})\n")
        print(common.markdown(big, [("model", "Model"), ("component", "Quantized"), ("variant", "Variant"), ("size_mib", "Size on disk (MiB)"),
                                    ("size_params_mb", "Params x bits (MiB)"), ("ms_eager", "ms/image eager"), ("ms_compiled", "ms/image compiled")]))
    common.finish(args, {"benchmark": "dq_clip", "model": args.model, "args": vars(args), "table1": table1, "table2": table2, "full_size": big})


if __name__ == "__main__":
    main()
