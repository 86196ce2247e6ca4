"""Activation statistics of the zoo models, for the model cards (docs/zoo/).

    python scripts/zoo_stats.py [--models clip-tiny deit-tiny] [--images 500]

Measures, with forward hooks on real Tiny ImageNet val images:
- per-channel ranges of the post-LayerNorm activations, i.e. the inputs of the qkv linears
  (``layernorm_before``) and of fc1 (``layernorm_after``), in every ViT block;
- the distribution of the post-Softmax attention probabilities.
For clip-tiny the same channel ranges are also measured in the text tower (pretrained
all-MiniLM-L6-v2, post-LN BERT: inputs of the query/key/value and intermediate linears) on
500 real Flickr8k captions.
Large pretrained ViTs show a few channels with ranges tens of times the median after LayerNorm
and a power-law-like, mostly near-zero softmax output; the numbers here say whether these
small models do too. Writes runs/zoo-stats/<model>.json and prints markdown tables.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import torch

import vitq.zoo
from vitq.data import ImageFolder, data_path

QUANTILES = (0.5, 0.9, 0.99, 0.999)


def vision_tower(model):
    """The ViTModel inside a classifier or a dual encoder."""
    return model.vision_model if hasattr(model, "vision_model") else model.vit


class ChannelRange:
    """Running per-channel min and max of a hooked module's output (or, as a pre-hook, its input)."""

    def __init__(self):
        self.lo = self.hi = None

    def __call__(self, module, inputs, output=None):
        seen = inputs[0] if output is None else output
        flat = seen.detach().float().reshape(-1, seen.shape[-1])
        lo, hi = flat.min(0).values, flat.max(0).values
        self.lo = lo if self.lo is None else torch.minimum(self.lo, lo)
        self.hi = hi if self.hi is None else torch.maximum(self.hi, hi)

    def summary(self) -> dict:
        rng = (self.hi - self.lo).numpy()
        top = np.argsort(rng)[::-1][:3]
        return {
            "min": round(float(self.lo.min()), 3),
            "max": round(float(self.hi.max()), 3),
            "median_range": round(float(np.median(rng)), 3),
            "max_range": round(float(rng.max()), 3),
            "max_over_median": round(float(rng.max() / np.median(rng)), 2),
            "channels_over_5x_median": int((rng > 5 * np.median(rng)).sum()),
            "top_channels": [int(c) for c in top],
        }


def softmax_summary(probs: list[torch.Tensor], rng: np.random.Generator) -> dict:
    flat = torch.cat([p.flatten() for p in probs]).numpy()
    sample = flat if flat.size <= 4_000_000 else rng.choice(flat, 4_000_000, replace=False)
    return {
        "below_1e-3": round(float((flat < 1e-3).mean()), 4),
        "below_1e-2": round(float((flat < 1e-2).mean()), 4),
        "quantiles": {str(q): float(f"{np.quantile(sample, q):.4g}") for q in QUANTILES},
        "max": round(float(flat.max()), 4),
    }


@torch.no_grad()
def measure(name: str, n_images: int, batch: int = 100) -> dict:
    model = vitq.zoo.load(name, attn_implementation="eager")  # eager returns the softmax output
    processor = vitq.zoo.processor(name)
    vit = vision_tower(model)
    hooks = {}
    for i, layer in enumerate(vit.layers):
        for where, module in (("qkv_input", layer.layernorm_before), ("fc1_input", layer.layernorm_after)):
            hooks[(i, where)] = ChannelRange()
            module.register_forward_hook(hooks[(i, where)])
    ds = ImageFolder(data_path("tiny-imagenet-200", "val"), limit=n_images, seed=0)
    probs = [[] for _ in vit.layers]
    for start in range(0, len(ds), batch):
        images = [ds[j][0] for j in range(start, min(start + batch, len(ds)))]
        pixels = processor(images=images, return_tensors="pt")["pixel_values"]
        out = vit(pixel_values=pixels, output_attentions=True)
        for i, att in enumerate(out.attentions):
            probs[i].append(att.float())
    rng = np.random.default_rng(0)
    layers = []
    for i in range(len(vit.layers)):
        layers.append({
            "layer": i,
            "qkv_input": hooks[(i, "qkv_input")].summary(),
            "fc1_input": hooks[(i, "fc1_input")].summary(),
            "softmax": softmax_summary(probs[i], rng),
        })
    every = [p for layer in probs for p in layer]
    stats = {"model": name, "images": len(ds), "layers": layers, "softmax_all_layers": softmax_summary(every, rng)}
    if hasattr(model, "text_model"):
        stats["text_layers"] = text_ranges(model, vitq.zoo.tokenizer(name))
    return stats


@torch.no_grad()
def text_ranges(model, tokenizer, n_captions: int = 500) -> list[dict]:
    """Channel ranges at the inputs of the text tower's qkv and fc1 linears, on real captions."""
    import csv

    with data_path("flickr8k-1k", "captions.csv").open(encoding="utf-8") as f:
        captions = [row["caption"] for row in csv.DictReader(f)][:n_captions]
    hooks = []
    for layer in model.text_model.encoder.layer:
        pair = {"qkv_input": ChannelRange(), "fc1_input": ChannelRange()}
        layer.attention.self.query.register_forward_pre_hook(pair["qkv_input"])
        layer.intermediate.dense.register_forward_pre_hook(pair["fc1_input"])
        hooks.append(pair)
    # Batches of captions with the same token count: no padding, every token seen is a real one.
    by_length: dict[int, list[str]] = {}
    for caption in captions:
        by_length.setdefault(len(tokenizer(caption)["input_ids"]), []).append(caption)
    for group in by_length.values():
        model.text_model(**tokenizer(group, return_tensors="pt"))
    return [{"layer": i, **{k: v.summary() for k, v in pair.items()}} for i, pair in enumerate(hooks)]


def markdown(stats: dict) -> str:
    rows = [
        "| block | qkv in: min / max | qkv in: max/median channel range | fc1 in: min / max | fc1 in: max/median channel range | softmax < 1e-3 | softmax q0.5 / q0.99 / max |",
        "|---|---|---|---|---|---|---|",
    ]
    for layer in stats["layers"]:
        q, f, s = layer["qkv_input"], layer["fc1_input"], layer["softmax"]
        rows.append(
            f"| {layer['layer']} | {q['min']} / {q['max']} | {q['max_over_median']} (ch {q['top_channels'][0]}) "
            f"| {f['min']} / {f['max']} | {f['max_over_median']} (ch {f['top_channels'][0]}) "
            f"| {s['below_1e-3']:.1%} | {s['quantiles']['0.5']} / {s['quantiles']['0.99']} / {s['max']} |"
        )
    return "\n".join(rows)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=vitq.zoo.available())
    p.add_argument("--images", type=int, default=500)
    p.add_argument("--out", type=Path, default=Path("runs/zoo-stats"))
    args = p.parse_args()
    torch.manual_seed(0)
    args.out.mkdir(parents=True, exist_ok=True)
    for name in args.models:
        stats = measure(name, args.images)
        (args.out / f"{name}.json").write_text(json.dumps(stats, indent=2) + "\n")
        print(f"\n## {name} ({stats['images']} Tiny ImageNet val images)\n")
        print(markdown(stats))
        print("\nall layers softmax:", json.dumps(stats["softmax_all_layers"]))
        for layer in stats.get("text_layers", []):
            q, f = layer["qkv_input"], layer["fc1_input"]
            print(f"text {layer['layer']}: qkv in {q['min']} / {q['max']}, max/median {q['max_over_median']} (ch {q['top_channels']}); "
                  f"fc1 in {f['min']} / {f['max']}, max/median {f['max_over_median']} (ch {f['top_channels']})")


if __name__ == "__main__":
    main()
