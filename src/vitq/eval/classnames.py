"""Readable names for ImageNet WordNet ids that data sets name their folders by.

Tiny ImageNet ships its own ``classes.tsv`` (read by ImageFolder); Imagenette does not, so its ten
classes are listed here (the names used by CLIP's ImageNet class list).
"""

from __future__ import annotations

from ..data.imagefolder import ClassInfo

IMAGENETTE = {
    "n01440764": "tench",
    "n02102040": "English springer",
    "n02979186": "cassette player",
    "n03000684": "chain saw",
    "n03028079": "church",
    "n03394916": "French horn",
    "n03417042": "garbage truck",
    "n03425413": "gas pump",
    "n03445777": "golf ball",
    "n03888257": "parachute",
}


def with_known_names(classes: list[ClassInfo]) -> list[ClassInfo]:
    """Replace bare wnids (a class whose name is its folder) by a readable name where one is known."""
    return [
        ClassInfo(c.folder, IMAGENETTE[c.folder], c.synonyms) if c.name == c.folder and c.folder in IMAGENETTE else c
        for c in classes
    ]
