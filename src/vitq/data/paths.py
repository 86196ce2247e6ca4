"""Where vitq finds the real image data sets: ``$VITQ_DATA``, defaulting to ``../shared/data``."""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import DataError

# A checkout has the shared data folder beside it; look beside the working directory first,
# then beside the source tree (an editable install run from elsewhere).
_CANDIDATES = (
    Path("../shared/data"),
    Path(__file__).resolve().parents[4] / "shared" / "data",
)


def data_root() -> Path:
    """The data root: ``$VITQ_DATA`` if set, else ``../shared/data`` beside the checkout."""
    if "VITQ_DATA" in os.environ:
        return Path(os.environ["VITQ_DATA"]).expanduser()
    for candidate in _CANDIDATES:
        if candidate.is_dir():
            return candidate
    return _CANDIDATES[0]


def has_data(*parts: str) -> bool:
    """Whether a data set is present (tests and demos skip politely when it is not)."""
    return data_root().joinpath(*parts).exists()


def data_path(*parts: str, must_exist: bool = True) -> Path:
    """A path inside the data root; a clear error when it is missing."""
    path = data_root().joinpath(*parts)
    if must_exist and not path.exists():
        raise DataError(
            f"data not found: {path}",
            hint="set VITQ_DATA to the folder that holds tiny-imagenet-200/, cifar10/, imagenette-val-500/ and flickr8k-1k/",
        )
    return path
