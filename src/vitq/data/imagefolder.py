"""Image-classification data: a folder of class subfolders, on disk or inside a zip archive.

``ImageFolder("…/tiny-imagenet-200/val")`` and
``ImageFolder("…/tiny-imagenet-200/train-200-per-class.zip")`` give the same kind of dataset; zip
members are read directly, never unpacked.
"""

from __future__ import annotations

import csv
import random
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..errors import DataError
from .imageio import BadImage, load_rgb

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")


@dataclass(frozen=True)
class ClassInfo:
    """A class: its folder name (e.g. a WordNet id), a readable name, and optional synonyms."""

    folder: str
    name: str
    synonyms: tuple[str, ...] = ()


def read_class_map(path: str | Path) -> dict[str, ClassInfo]:
    """Read a class map: TSV with columns ``wnid``/``folder``, ``name`` and optional ``synonyms`` (comma-separated)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"class map not found: {path}", hint="pass a TSV with columns wnid, name[, synonyms]")
    with path.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    if not rows or not ({"wnid", "folder"} & set(rows[0])) or "name" not in rows[0]:
        raise DataError(f"class map {path} needs a header with 'wnid' (or 'folder') and 'name' columns")
    out = {}
    for row in rows:
        key = row.get("wnid") or row.get("folder")
        syn = tuple(s.strip() for s in (row.get("synonyms") or "").split(",") if s.strip())
        out[key] = ClassInfo(key, row["name"].strip(), syn)
    return out


def _default_class_map(root: Path) -> Path | None:
    """Tiny ImageNet ships ``classes.tsv`` beside its folders: use it when present."""
    for parent in (root.parent, root):
        candidate = parent / "classes.tsv"
        if candidate.is_file():
            return candidate
    return None


class ImageFolder:
    """Images labelled by their class folder, from a directory or a zip archive.

    Items are ``(image, label)`` with ``image`` an RGB PIL image passed through ``transform``.
    ``limit`` takes a deterministic, class-balanced subset (the same files for the same ``seed``).
    With ``skip_bad`` an unreadable image yields ``None`` (see :func:`collate_skip_bad`) instead of raising.
    """

    def __init__(
        self,
        root: str | Path,
        transform: Callable | None = None,
        class_map: str | Path | dict[str, ClassInfo] | None = "auto",
        limit: int | None = None,
        seed: int = 0,
        skip_bad: bool = False,
    ):
        self.root = Path(root)
        self.transform = transform
        self.skip_bad = skip_bad
        self._zip: zipfile.ZipFile | None = None
        if not self.root.exists():
            raise DataError(f"data path not found: {self.root}", hint="pass a folder of class subfolders or a .zip of one")
        by_class = self._scan()
        if not by_class:
            raise DataError(
                f"no images in class subfolders under {self.root}",
                hint="arrange images as ROOT/<class name>/<image file> (a flat folder has no labels)",
            )
        self.folders = sorted(by_class)
        if limit is not None:
            by_class = _balanced_subset(by_class, self.folders, limit, seed)
        self.samples: list[tuple[str, int]] = [
            (member, idx) for idx, folder in enumerate(self.folders) for member in by_class[folder]
        ]
        if class_map == "auto":
            class_map = _default_class_map(self.root)
        if isinstance(class_map, (str, Path)):
            class_map = read_class_map(class_map)
        self.classes: list[ClassInfo] = [
            (class_map or {}).get(f, ClassInfo(f, f.replace("_", " "))) for f in self.folders
        ]

    # -- scanning -----------------------------------------------------------------------------
    def _scan(self) -> dict[str, list[str]]:
        if self.root.is_file():
            if not zipfile.is_zipfile(self.root):
                raise DataError(f"{self.root} is a file but not a zip archive", hint="pass a folder or a .zip")
            with zipfile.ZipFile(self.root) as zf:
                names = [n for n in zf.namelist() if n.lower().endswith(IMAGE_SUFFIXES)]
            # Class = the parent folder of each member (``train/<class>/<file>`` or ``<class>/<file>``).
            by_class: dict[str, list[str]] = {}
            for n in sorted(names):
                parts = n.split("/")
                if len(parts) >= 2:
                    by_class.setdefault(parts[-2], []).append(n)
            return by_class
        by_class = {}
        for d in sorted(p for p in self.root.iterdir() if p.is_dir()):
            files = sorted(str(f) for f in d.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file())
            if files:
                by_class[d.name] = files
        return by_class

    # -- access -------------------------------------------------------------------------------
    @property
    def class_names(self) -> list[str]:
        return [c.name for c in self.classes]

    def __len__(self) -> int:
        return len(self.samples)

    def read_bytes(self, member: str) -> bytes:
        if self.root.is_file():
            if self._zip is None:  # opened lazily, so each DataLoader worker has its own handle
                self._zip = zipfile.ZipFile(self.root)
            return self._zip.read(member)
        return Path(member).read_bytes()

    def where(self, member: str) -> str:
        return f"{self.root}:{member}" if self.root.is_file() else member

    def __getitem__(self, i: int):
        member, label = self.samples[i]
        try:
            image = load_rgb(self.read_bytes(member), where=self.where(member))
        except BadImage:
            if self.skip_bad:
                return None
            raise
        except OSError as err:
            bad = BadImage(self.where(member), str(err))
            if self.skip_bad:
                return None
            raise bad from None
        if self.transform is not None:
            image = self.transform(image)
        return image, label

    def __getstate__(self):  # zip handles do not pickle; workers reopen them
        state = dict(self.__dict__)
        state["_zip"] = None
        return state


def _balanced_subset(by_class: dict[str, list[str]], folders: list[str], limit: int, seed: int) -> dict[str, list[str]]:
    """``limit`` items drawn at random (seeded) across all classes: every class gets limit // C, and
    the remaining limit % C go to classes chosen at random (with fewer items than classes, a random
    set of classes gets one each)."""
    if limit <= 0:
        raise DataError(f"--limit must be positive, got {limit}")
    rng = random.Random(seed)
    per = {f: limit // len(folders) for f in folders}
    for f in rng.sample(folders, limit % len(folders)):
        per[f] += 1
    out = {}
    for f in folders:
        items = list(by_class[f])
        rng.shuffle(items)
        out[f] = sorted(items[: per[f]])
    return out


class SkippedCounter:
    """Counts the images skipped by :func:`collate_skip_bad` across a run."""

    def __init__(self):
        self.count = 0


def collate_skip_bad(batch, counter: SkippedCounter | None = None):
    """A DataLoader ``collate_fn`` that drops unreadable images (``None`` items) and counts them."""
    import torch
    from torch.utils.data import default_collate

    kept = [b for b in batch if b is not None]
    if counter is not None:
        counter.count += len(batch) - len(kept)
    if not kept:
        return None
    if isinstance(kept[0][0], dict):  # image-processor output: stack each field
        images = {k: torch.stack([b[0][k] for b in kept]) for k in kept[0][0]}
        return images, torch.tensor([b[1] for b in kept])
    return default_collate(kept)
