"""Top-1/top-5 of image classifiers (ViT, DeiT, Swin ``*ForImageClassification``) on class folders.

The data set's class folders are matched to the model's output labels either by name (folder,
readable name or a synonym equals one of the comma-separated names of ``config.id2label``; how an
ImageNet-1k classifier is scored on Tiny ImageNet or Imagenette) or by index (a model trained on
the same folders in sorted order, whose labels carry no usable names).
"""

from __future__ import annotations

import re

import torch

from ..data.imagefolder import ClassInfo
from ..data.preprocess import image_transform
from ..errors import ConfigError, DataError
from .datasets import open_images
from .features import as_tensor, run_images
from .metrics import topk_accuracy
from .options import EvalOptions

LABEL_MAPS = ("auto", "names", "index")


def _norm(text: str) -> str:
    return re.sub(r"[\s_]+", " ", text).strip().lower()


def _keys(text: str) -> set[str]:
    return {_norm(part) for part in text.split(",") if part.strip()}


def _class_keys(c: ClassInfo) -> set[str]:
    keys = _keys(c.folder) | _keys(c.name)
    for synonym in c.synonyms:
        keys |= _keys(synonym)
    return keys


def _labels(config) -> list[str]:
    id2label = getattr(config, "id2label", None) or {}
    return [str(id2label.get(i, id2label.get(str(i), f"LABEL_{i}"))) for i in range(len(id2label))]


def match_by_name(classes: list[ClassInfo], labels: list[str]) -> tuple[list[int | None], list[str]]:
    """For each class the index of the label it names (None when none), and the unmatched class names."""
    label_keys = [_keys(label) for label in labels]
    first_names = [_norm(label.split(",")[0]) for label in labels]
    mapping, missing = [], []
    for c in classes:
        keys = _class_keys(c)
        hits = [i for i, lk in enumerate(label_keys) if keys & lk]
        # Prefer the label whose first (main) name is the class name: "crane" the bird vs the machine.
        exact = [i for i in hits if first_names[i] in _keys(c.name)]
        mapping.append((exact or hits or [None])[0])
        if not hits:
            missing.append(c.name)
    return mapping, missing


def label_mapping(classes: list[ClassInfo], config, mode: str = "auto") -> tuple[list[int], str]:
    """Model label index for each data set class, and which rule gave it ("names" or "index")."""
    if mode not in LABEL_MAPS:
        raise ConfigError(f"unknown label map {mode!r}", hint=f"use one of {', '.join(LABEL_MAPS)}")
    labels = _labels(config)
    num_labels = len(labels) or int(getattr(config, "num_labels", 0))
    if mode in ("auto", "names") and labels:
        mapping, missing = match_by_name(classes, labels)
        if not missing:
            return mapping, "names"
        if mode == "names":
            raise DataError(
                f"{len(missing)} of {len(classes)} classes match no model label by name: {', '.join(missing[:5])}",
                hint="use label_map='index' (--label-map index) if the model was trained on these folders in sorted order",
            )
    if num_labels < len(classes):
        raise DataError(
            f"the data has {len(classes)} classes but the model only {num_labels} labels, and their names do not match",
            hint="evaluate on the data set the classifier was trained for, or name its labels in config.id2label",
        )
    return list(range(len(classes))), "index"


def top1(model, data, opts: EvalOptions, reference=None) -> dict:
    dataset = open_images(data, opts.transform or image_transform(model, preprocess=opts.preprocess), opts.limit, opts.seed, opts.skip_bad)
    mapping, rule = label_mapping(dataset.classes, model.config, opts.label_map)
    images = run_images(dataset, lambda x: as_tensor(model(pixel_values=x)), model, opts.batch_size,
                        opts.num_workers, desc="top-1", progress=opts.progress, checkpoint=opts.checkpointer())
    targets = torch.tensor(mapping)[images.targets]
    return {
        "num_examples": images.count,
        "skipped_images": images.skipped,
        "metrics": topk_accuracy(images.outputs[0], targets),
        "num_classes": len(dataset.classes),
        "label_map": rule,
    }
