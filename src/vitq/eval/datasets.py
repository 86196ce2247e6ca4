"""Turning a ``data`` argument (a path or a ready data set) into the data set a task needs."""

from __future__ import annotations

import copy
from pathlib import Path

from ..data.captions import CaptionPairs
from ..data.imagefolder import ImageFolder
from ..errors import DataError
from .classnames import with_known_names


def is_caption_source(data) -> bool:
    if isinstance(data, CaptionPairs):
        return True
    if isinstance(data, (str, Path)):
        path = Path(data)
        return path.suffix.lower() == ".csv" or (path.is_dir() and (path / "captions.csv").is_file())
    return False


def describe(data) -> str:
    """The path a data set came from (for the result JSON)."""
    if isinstance(data, (str, Path)):
        return str(data)
    for attr in ("csv_path", "root"):
        if getattr(data, attr, None) is not None:
            return str(getattr(data, attr))
    return type(data).__name__


def open_images(data, transform, limit=None, seed=0, skip_bad=False) -> ImageFolder:
    """A labelled image data set (folder or zip of class folders), with readable class names."""
    if isinstance(data, (str, Path)):
        if is_caption_source(data):
            raise DataError(f"{data} holds image-caption pairs, not class folders",
                            hint="use --task retrieval (or fidelity) for captions, or point --data at a folder of class subfolders")
        dataset = ImageFolder(data, transform=transform, limit=limit, seed=seed, skip_bad=skip_bad)
    else:
        if not hasattr(data, "classes"):
            raise DataError(f"this task needs labelled images with class names, got a {type(data).__name__}",
                            hint="pass a folder or .zip of class folders, or a vitq.data.ImageFolder")
        dataset = copy.copy(_with_transform(data, transform))  # renaming classes below must not touch the caller's
    dataset.classes = with_known_names(dataset.classes)
    return dataset


def open_captions(data, transform, limit=None, seed=0, skip_bad=False) -> CaptionPairs:
    if isinstance(data, (str, Path)):
        return CaptionPairs(data, transform=transform, limit=limit, seed=seed, skip_bad=skip_bad)
    if not hasattr(data, "captions") or not hasattr(data, "caption_image"):
        raise DataError(f"retrieval needs image-caption pairs, got a {type(data).__name__}",
                        hint="pass a captions CSV (image,caption) or a vitq.data.CaptionPairs")
    return _with_transform(data, transform)


def _with_transform(dataset, transform):
    # A data set handed in without a transform gets the model's; the caller's object is left as it was.
    if getattr(dataset, "transform", "absent") is None and transform is not None:
        dataset = copy.copy(dataset)
        dataset.transform = transform
    return dataset
