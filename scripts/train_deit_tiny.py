"""Train ``deit-tiny``: a small ViTForImageClassification on Tiny ImageNet (40k train images, 64 px).

    python scripts/train_deit_tiny.py --epochs 10 [--resume]

Writes epoch checkpoints to runs/deit-tiny/ and, unless --no-export, the fp16 HF folder
src/vitq/zoo/weights/deit-tiny/ with training.json (recipe, data, wall time, metrics).
The shipped deit-tiny was trained jointly with clip-tiny by train_clip_tiny.py (one shared ViT
body, half the CPU cost); this script is the stand-alone recipe with the same helpers.
"""

from __future__ import annotations

import inspect
import time

import torch
import torch.nn.functional as F

import drop_path
import zoo_training as zt
from vitq.data import ImageFolder


def build(args, classes) -> torch.nn.Module:
    from transformers import ViTForImageClassification

    config = zt.vit_config(
        args,
        **zt.label_maps(classes),
    )
    model = ViTForImageClassification(config)
    drop_path.add_drop_path(model.vit.layers, args.drop_path)
    return model


def parse():
    p = zt.common_args(__doc__.splitlines()[0], "deit-tiny")
    zt.vit_args(p)
    return p.parse_args()


@torch.no_grad()
def full_eval(model, processor, limit: int | None = None) -> dict:
    """Top-1/top-5 on the 10,000 Tiny ImageNet val images through the shipped processor."""
    ds = ImageFolder(zt.tiny_imagenet_val(), limit=limit, seed=0)
    logits, labels = [], []
    for pixels, y in zt.processor_images(ds, processor):
        logits.append(model(pixel_values=pixels).logits.float())
        labels.append(y)
    return {"tiny_imagenet_val": {**zt.topk(torch.cat(logits), torch.cat(labels)), "images": len(ds)}}


def main():
    train_classifier(parse(), build, "deit-tiny")


def train_classifier(args, build_model, name: str) -> None:
    """Train ``build_model(args, classes)`` (any HF image classifier) with the shared loop, then finish."""
    zt.setup(args)
    t0 = time.time()
    train = ImageFolder(zt.tiny_imagenet_train(), limit=args.limit, seed=args.seed)
    images, labels = zt.decode_uint8(train, desc="decode train")
    val = ImageFolder(zt.tiny_imagenet_val(), limit=1000, seed=0)
    val_images, val_labels = zt.decode_uint8(val, desc="decode val")
    model = build_model(args, train.classes)
    zt.init_weights(args, model)
    distiller = zt.Distiller(args, args.label_smoothing, [c.name for c in train.classes])
    optimizer = torch.optim.AdamW(
        zt.param_groups(list(model.named_parameters()), args.lr, args.weight_decay), lr=args.lr, fused=True
    )

    vit = "interpolate_pos_encoding" in inspect.signature(model.forward).parameters

    def loss_fn(x, y, g):
        # Low-res epochs: a ViT's position table is resized to the patch grid; a convnet needs nothing.
        extra = {"interpolate_pos_encoding": x.shape[-1] != zt.IMAGE_SIZE} if vit else {}
        return distiller.loss(model(pixel_values=x, **extra).logits.float(), y, distiller.targets(x))

    def quick_eval():
        logits = zt.batched(lambda x: model(pixel_values=x).logits, val_images)
        return {"val1000_" + k: v for k, v in zt.topk(logits, val_labels).items()}

    aug = zt.aug_config(args)
    state = zt.train_loop(args, model, optimizer, images, labels, loss_fn, quick_eval, aug, num_classes=len(train.classes))
    finish(args, model, state, aug, time.time() - t0, len(train), name)


def finish(args, model, state, aug, wall, n_train, name: str) -> None:
    processor = zt.image_processor()
    report = zt.run_report(args, state, aug, wall, n_train, name, model, eval="tiny-imagenet-200/val")
    report["metrics_fp32"] = full_eval(model, processor, args.eval_limit)
    model.save_pretrained(args.run_dir / "final")
    print("fp32", report["metrics_fp32"], flush=True)
    if not args.no_export:
        from transformers import ViTForImageClassification

        zt.save_fp16(model, args.out)
        processor.save_pretrained(args.out)
        reloaded = ViTForImageClassification.from_pretrained(args.out, dtype=torch.float32).eval()
        report["metrics_fp16_package"] = full_eval(reloaded, processor, args.eval_limit)
        report["package_megabytes"] = zt.folder_megabytes(args.out)
        print("fp16", report["metrics_fp16_package"], flush=True)
        zt.write_json(args.out / "training.json", report)
    zt.write_json(args.run_dir / "training.json", report)


if __name__ == "__main__":
    main()
