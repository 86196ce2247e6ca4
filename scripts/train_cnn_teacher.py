"""Train the convnet teacher for DeiT-style distillation of the reference ViTs (not shipped).

    python scripts/train_cnn_teacher.py --seed 0 --epochs 16 [--resume]

DeiT (Touvron et al. 2021) trains a ViT on ImageNet alone by distilling a convnet: the teacher's
inductive bias (locality, translation equivariance) reaches the transformer through its labels on
the same augmented crops. Our ViTs see only 200 images per class, the regime where that matters
most. The teacher is a Hugging Face ``ResNetForImageClassification`` (ResNet-18 layout: basic
blocks 2-2-2-2, widths 64-512) trained on the same 40,000 Tiny ImageNet images with the same
batch augmentation and loop as the ViTs; it is cheaper per image than the ViT (its stem reduces a
64-px image to 16x16 before the first block). Writes runs/cnn-teacher/final/ (an HF folder) with
training.json; train_clip_tiny.py reads it with ``--teacher``.
"""

from __future__ import annotations

import zoo_training as zt
from train_deit_tiny import train_classifier


def build(args, classes):
    from transformers import ResNetConfig, ResNetForImageClassification

    config = ResNetConfig(
        embedding_size=64,
        hidden_sizes=[64, 128, 256, 512],
        depths=[2, 2, 2, 2],
        layer_type="basic",
        **zt.label_maps(classes),
    )
    return ResNetForImageClassification(config)


def parse():
    p = zt.common_args(__doc__.splitlines()[0], "cnn-teacher")
    args = p.parse_args()
    args.no_export = True  # a training aid: it stays in the run folder
    return args


if __name__ == "__main__":
    train_classifier(parse(), build, "cnn-teacher")
