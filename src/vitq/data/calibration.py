"""Calibration batches from a folder (or zip) of images, for any supported model.

Images come from class subfolders or a flat folder; for a text tower, prompts are made from the
class names ("a photo of a {class}."), so a folder of class subfolders calibrates both towers.
"""

from __future__ import annotations

import random
import zipfile
from pathlib import Path

import torch

from ..errors import DataError
from .imagefolder import IMAGE_SUFFIXES, ImageFolder
from .imageio import BadImage, load_rgb

CALIB_TEMPLATE = "a photo of a {}."


def _list_images(root: Path) -> list[str]:
    if root.is_file() and zipfile.is_zipfile(root):
        with zipfile.ZipFile(root) as zf:
            return sorted(n for n in zf.namelist() if n.lower().endswith(IMAGE_SUFFIXES))
    return sorted(str(p) for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def calibration_batches(
    root: str | Path,
    num_images: int,
    batch_size: int,
    transform,
    tokenizer=None,
    seed: int = 0,
    skip_bad: bool = False,
    template: str = CALIB_TEMPLATE,
) -> list[dict]:
    """``num_images`` images (class-balanced when there are classes), as model-input dicts.

    ``transform`` maps a PIL image to a (3, H, W) tensor. With a ``tokenizer``, each batch also
    carries ``input_ids``/``attention_mask`` of prompts built from the images' class names.
    """
    root = Path(root)
    if not root.exists():
        raise DataError(f"calibration data not found: {root}", hint="pass a folder (or .zip) of images with --calib")
    try:
        ds = ImageFolder(root, limit=num_images, seed=seed, class_map="auto")
        items = [(ds.read_bytes(m), ds.where(m), ds.classes[label].name) for m, label in ds.samples]
    except DataError:
        if root.is_file() and not zipfile.is_zipfile(root):
            raise
        files = _list_images(root)
        if not files:
            raise DataError(f"no images found in {root}", hint=f"put calibration images ({', '.join(IMAGE_SUFFIXES)}) in the folder") from None
        random.Random(seed).shuffle(files)
        files = sorted(files[:num_images])
        zf = zipfile.ZipFile(root) if root.is_file() else None
        items = [((zf.read(f) if zf else Path(f).read_bytes()), f, None) for f in files]
    if tokenizer is not None and any(name is None for _, _, name in items):
        raise DataError(
            f"{root} has no class subfolders, so there are no class names to make text prompts from",
            hint="arrange the images as ROOT/<class name>/<file>, or calibrate only the image tower (--components image)",
        )
    pixels, names, skipped = [], [], 0
    for data, where, name in items:
        try:
            pixels.append(transform(load_rgb(data, where=where)))
            names.append(name)
        except BadImage:
            if not skip_bad:
                raise
            skipped += 1
    if not pixels:
        raise DataError(f"no readable images in {root} ({skipped} skipped)", hint="check the image files")
    batches = []
    for i in range(0, len(pixels), batch_size):
        batch = {"pixel_values": torch.stack(pixels[i : i + batch_size])}
        if tokenizer is not None:
            prompts = [template.format(n) for n in names[i : i + batch_size]]
            tok = tokenizer(prompts, padding=True, truncation=True, return_tensors="pt")
            batch["input_ids"], batch["attention_mask"] = tok["input_ids"], tok["attention_mask"]
        batches.append(batch)
    return batches
