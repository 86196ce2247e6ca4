"""Calibration batches from a folder (or zip) of images, for any supported model.

Images come from class subfolders or a flat folder; for a text tower, prompts are made from the
class names ("a photo of a {class}."), so a folder of class subfolders calibrates both towers. A
flat folder calibrates the text tower on given sentences (``texts``, e.g. ``--calib-text FILE``) or
on vitq's built-in ones (:mod:`vitq.data.texts`); ``text_source`` says which.
Batches are decoded as they are iterated, so memory does not grow with the number of images.
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


class CalibrationBatches:
    """A re-iterable sequence of model-input dicts (``pixel_values``, and ``input_ids`` /
    ``attention_mask`` of class-name prompts when a tokenizer is given), decoded lazily."""

    def __init__(self, root: Path, items: list[tuple[str, str | None]], batch_size: int, transform,
                 tokenizer=None, skip_bad: bool = False, template: str = CALIB_TEMPLATE, texts: list[str] | None = None):
        self.root, self.items, self.batch_size = root, items, batch_size
        self.transform, self.tokenizer, self.skip_bad, self.template = transform, tokenizer, skip_bad, template
        self.texts = texts  # sentences for the text tower instead of class-name prompts (cycled)
        self.skipped = 0

    @property
    def text_source(self) -> str | None:
        if self.tokenizer is None:
            return None
        return "class names" if self.texts is None else f"{len(self.texts)} sentence{'' if len(self.texts) == 1 else 's'}"

    def __len__(self) -> int:
        return (len(self.items) + self.batch_size - 1) // self.batch_size

    def _read(self, zf, member: str) -> bytes:
        return zf.read(member) if zf is not None else Path(member).read_bytes()

    def __iter__(self):
        zf = zipfile.ZipFile(self.root) if self.root.is_file() else None
        self.skipped = 0
        try:
            for start in range(0, len(self.items), self.batch_size):
                pixels, names = [], []
                for k, (member, name) in enumerate(self.items[start : start + self.batch_size]):
                    if self.texts is not None:
                        name = self.texts[(start + k) % len(self.texts)]
                    where = f"{self.root}:{member}" if zf is not None else member
                    try:
                        pixels.append(self.transform(load_rgb(self._read(zf, member), where=where)))
                        names.append(name)
                    except BadImage:
                        if not self.skip_bad:
                            raise
                        self.skipped += 1
                if not pixels:
                    continue
                batch = {"pixel_values": torch.stack(pixels)}
                if self.tokenizer is not None:
                    prompts = names if self.texts is not None else [self.template.format(n) for n in names]
                    tok = self.tokenizer(prompts, padding=True, truncation=True, return_tensors="pt")
                    batch["input_ids"], batch["attention_mask"] = tok["input_ids"], tok["attention_mask"]
                yield batch
        finally:
            if zf is not None:
                zf.close()


def calibration_batches(
    root: str | Path,
    num_images: int,
    batch_size: int,
    transform,
    tokenizer=None,
    seed: int = 0,
    skip_bad: bool = False,
    template: str = CALIB_TEMPLATE,
    texts: list[str] | None = None,
) -> CalibrationBatches:
    """``num_images`` images (class-balanced when there are classes, the same for the same seed).

    ``transform`` maps a PIL image to a (3, H, W) tensor. With a ``tokenizer``, each batch also
    carries text: ``texts`` when given (one per image, cycled), else prompts built from the images'
    class names, else (a flat folder) vitq's built-in sentences.
    """
    root = Path(root)
    if not root.exists():
        raise DataError(f"calibration data not found: {root}", hint="pass a folder (or .zip) of images with --calib")
    if root.is_file() and not zipfile.is_zipfile(root):
        raise DataError(f"{root} is a file but not a zip archive", hint="pass a folder of images or a .zip of one")
    try:
        ds = ImageFolder(root, limit=num_images, seed=seed, class_map="auto")
        items = [(m, ds.classes[label].name) for m, label in ds.samples]
        # ImageFolder lists members relative to a zip; folders give full paths already.
    except DataError:
        files = _list_images(root)
        if not files:
            raise DataError(f"no images found in {root}", hint=f"put calibration images ({', '.join(IMAGE_SUFFIXES)}) in the folder") from None
        random.Random(seed).shuffle(files)
        items = [(f, None) for f in sorted(files[:num_images])]
    if tokenizer is not None and texts is None and any(name is None for _, name in items):
        from .texts import sentences

        texts = sentences()  # a flat folder has no class names: the built-in sentences calibrate the text tower
    batches = CalibrationBatches(root, items, batch_size, transform, tokenizer, skip_bad, template, texts)
    # Decode the first batch now, so a bad file or folder is reported before any slow work.
    if skip_bad:
        if not any(True for _ in batches):
            raise DataError(f"no readable images in {root} ({batches.skipped} skipped)", hint="check the image files")
    else:
        next(iter(batches))
    return batches


class IterableBatches:
    """Calibration batches from any iterable of examples (a Hugging Face ``datasets`` split, a list of
    PIL images, ``(image, label)`` pairs, dicts), as ``nncf.Dataset`` takes them: ``transform_fn``
    maps one example to an image (PIL or a (3, H, W) tensor), or to a dict with ``image`` (and
    optionally ``text``). Dicts with an ``image``/``img`` key and ``(image, ...)`` tuples are read
    without one. Examples are read lazily, ``num`` of them, on every pass."""

    def __init__(self, source, num: int, batch_size: int, transform, transform_fn=None, tokenizer=None,
                 texts: list[str] | None = None):
        if isinstance(source, (str, bytes)) or not hasattr(source, "__iter__"):
            raise DataError(f"cannot calibrate on a {type(source).__name__}",
                            hint="pass a folder or zip path, 'synthetic', or an iterable of images (with transform_fn=...)")
        self.source, self.num, self.batch_size = source, num, batch_size
        self.transform, self.transform_fn, self.tokenizer = transform, transform_fn, tokenizer
        self.texts = texts

    def __len__(self) -> int:
        return (self.num + self.batch_size - 1) // self.batch_size

    def _example(self, item) -> tuple[torch.Tensor, str | None]:
        from PIL import Image

        if self.transform_fn is not None:
            item = self.transform_fn(item)
        text = None
        if isinstance(item, dict):
            text = item.get("text") or item.get("caption")
            item = next((item[k] for k in ("image", "img", "pixel_values") if k in item), None)
        elif isinstance(item, (tuple, list)) and item:
            item = item[0]
        if isinstance(item, Image.Image):
            return self.transform(item.convert("RGB")), text
        if isinstance(item, torch.Tensor) and item.dim() == 3:
            return item.float(), text
        raise DataError(f"a calibration example became a {type(item).__name__}, not an image",
                        hint="give transform_fn=... that returns a PIL image, a (3, H, W) tensor or {'image': ..., 'text': ...}")

    def __iter__(self):
        pixels, texts, seen = [], [], 0
        for item in self.source:
            if seen >= self.num:
                break
            image, text = self._example(item)
            pixels.append(image)
            texts.append(text)
            seen += 1
            if len(pixels) == self.batch_size:
                yield self._batch(pixels, texts, seen - len(pixels))
                pixels, texts = [], []
        if pixels:
            yield self._batch(pixels, texts, seen - len(pixels))

    def _batch(self, pixels, texts, start) -> dict:
        batch = {"pixel_values": torch.stack(pixels)}
        if self.tokenizer is not None:
            from .texts import sentences

            pool = self.texts or sentences()
            prompts = [t if t else pool[(start + k) % len(pool)] for k, t in enumerate(texts)]
            tok = self.tokenizer(prompts, padding=True, truncation=True, return_tensors="pt")
            batch["input_ids"], batch["attention_mask"] = tok["input_ids"], tok["attention_mask"]
        return batch
