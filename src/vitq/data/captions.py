"""Image-caption pairs from a CSV with columns ``image,caption`` (several captions per image).

``CaptionPairs("…/flickr8k-1k")`` reads ``captions.csv`` and the images beside it (in ``images/``
when that folder exists). Items are ``(image, image_index)``; the captions are plain lists, so a
retrieval evaluator can encode images and texts separately and still know which belong together.
"""

from __future__ import annotations

import csv
import random
from pathlib import Path
from typing import Callable

from ..errors import DataError
from .imageio import BadImage, load_rgb

REQUIRED_COLUMNS = ("image", "caption")


def _resolve(source: str | Path, images: str | Path | None) -> tuple[Path, Path]:
    source = Path(source)
    if source.is_dir():
        csv_path = source / "captions.csv"
        if not csv_path.is_file():
            found = sorted(p.name for p in source.glob("*.csv"))
            hint = f"pass the CSV itself (found: {', '.join(found)})" if found else "pass a CSV with columns image,caption"
            raise DataError(f"no captions.csv in {source}", hint=hint)
    elif source.is_file():
        csv_path = source
    else:
        raise DataError(f"captions not found: {source}", hint="pass a CSV with columns image,caption or the folder holding captions.csv")
    if images is None:
        images = csv_path.parent / "images" if (csv_path.parent / "images").is_dir() else csv_path.parent
    images = Path(images)
    if not images.is_dir():
        raise DataError(f"image folder not found: {images}", hint="pass images=FOLDER holding the files named in the CSV")
    return csv_path, images


def read_caption_csv(csv_path: str | Path) -> list[tuple[str, str]]:
    """Rows ``(image, caption)`` of a captions CSV; a clear error for missing columns or empty cells."""
    csv_path = Path(csv_path)
    with csv_path.open(newline="", encoding="utf-8-sig") as f:  # -sig: tolerate a byte-order mark
        reader = csv.DictReader(f)
        header = [h.strip() for h in (reader.fieldnames or [])]
        missing = [c for c in REQUIRED_COLUMNS if c not in header]
        if missing:
            raise DataError(
                f"{csv_path} lacks column(s) {', '.join(missing)} (header: {', '.join(header) or 'empty'})",
                hint="the first line must be a header naming the columns image,caption",
            )
        reader.fieldnames = header
        rows = []
        for line, row in enumerate(reader, start=2):
            image, caption = (row.get("image") or "").strip(), (row.get("caption") or "").strip()
            if not image or not caption:
                raise DataError(f"{csv_path} line {line}: empty image name or caption")
            rows.append((image, caption))
    if not rows:
        raise DataError(f"{csv_path} has a header but no captions")
    return rows


class CaptionPairs:
    """Images with their captions, for image-text retrieval.

    Attributes: ``images`` (file names, sorted), ``captions`` (all captions of the kept images),
    ``caption_image`` (for each caption the index of its image) and ``image_captions`` (for each
    image the indices of its captions). ``limit`` keeps that many images (a deterministic subset for
    ``seed``) with all their captions. With ``skip_bad`` an unreadable image yields ``None``.
    """

    def __init__(
        self,
        source: str | Path,
        images: str | Path | None = None,
        transform: Callable | None = None,
        limit: int | None = None,
        seed: int = 0,
        skip_bad: bool = False,
    ):
        self.csv_path, self.image_dir = _resolve(source, images)
        self.root = self.csv_path.parent
        self.transform = transform
        self.skip_bad = skip_bad
        rows = read_caption_csv(self.csv_path)
        by_image: dict[str, list[str]] = {}
        for image, caption in rows:
            by_image.setdefault(image, []).append(caption)
        unknown = sorted(name for name in by_image if not (self.image_dir / name).is_file())
        if unknown:
            shown = ", ".join(unknown[:5]) + (f" and {len(unknown) - 5} more" if len(unknown) > 5 else "")
            raise DataError(
                f"{self.csv_path} names {len(unknown)} image(s) not found in {self.image_dir}: {shown}",
                hint="check the image column against the file names (with extension), or pass the right image folder",
            )
        names = sorted(by_image)
        if limit is not None:
            if limit <= 0:
                raise DataError(f"--limit must be positive, got {limit}")
            rng = random.Random(seed)
            rng.shuffle(names)
            names = sorted(names[:limit])
        self.images: list[str] = names
        self.captions: list[str] = []
        self.caption_image: list[int] = []
        self.image_captions: list[list[int]] = []
        for idx, name in enumerate(names):
            start = len(self.captions)
            self.captions.extend(by_image[name])
            self.caption_image.extend([idx] * len(by_image[name]))
            self.image_captions.append(list(range(start, len(self.captions))))

    def __len__(self) -> int:
        return len(self.images)

    def where(self, i: int) -> str:
        return str(self.image_dir / self.images[i])

    def __getitem__(self, i: int):
        try:
            image = load_rgb(str(self.image_dir / self.images[i]), where=self.where(i))
        except BadImage:
            if self.skip_bad:
                return None
            raise
        if self.transform is not None:
            image = self.transform(image)
        return image, i
