"""Prompt templates for zero-shot classification: CLIP's 80 ImageNet prompts and the 7-prompt ensemble.

Both lists are the ones published with CLIP (its ImageNet zero-shot notebook). A spec is a name from
:data:`TEMPLATE_SETS`, a single template containing ``{}``, or a text file with one template a line.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import ConfigError

# The subset of the 80 that CLIP's authors found best when used as a small ensemble.
ENSEMBLE7 = (
    "itap of a {}.",
    "a bad photo of the {}.",
    "a origami {}.",
    "a photo of the large {}.",
    "a {} in a video game.",
    "art of the {}.",
    "a photo of the small {}.",
)

IMAGENET80 = (
    "a bad photo of a {}.",
    "a photo of many {}.",
    "a sculpture of a {}.",
    "a photo of the hard to see {}.",
    "a low resolution photo of the {}.",
    "a rendering of a {}.",
    "graffiti of a {}.",
    "a bad photo of the {}.",
    "a cropped photo of the {}.",
    "a tattoo of a {}.",
    "the embroidered {}.",
    "a photo of a hard to see {}.",
    "a bright photo of a {}.",
    "a photo of a clean {}.",
    "a photo of a dirty {}.",
    "a dark photo of the {}.",
    "a drawing of a {}.",
    "a photo of my {}.",
    "the plastic {}.",
    "a photo of the cool {}.",
    "a close-up photo of a {}.",
    "a black and white photo of the {}.",
    "a painting of the {}.",
    "a painting of a {}.",
    "a pixelated photo of the {}.",
    "a sculpture of the {}.",
    "a bright photo of the {}.",
    "a cropped photo of a {}.",
    "a plastic {}.",
    "a photo of the dirty {}.",
    "a jpeg corrupted photo of a {}.",
    "a blurry photo of the {}.",
    "a photo of the {}.",
    "a good photo of the {}.",
    "a rendering of the {}.",
    "a {} in a video game.",
    "a photo of one {}.",
    "a doodle of a {}.",
    "a close-up photo of the {}.",
    "a photo of a {}.",
    "the origami {}.",
    "the {} in a video game.",
    "a sketch of a {}.",
    "a doodle of the {}.",
    "a origami {}.",
    "a low resolution photo of a {}.",
    "the toy {}.",
    "a rendition of the {}.",
    "a photo of the clean {}.",
    "a photo of a large {}.",
    "a rendition of a {}.",
    "a photo of a nice {}.",
    "a photo of a weird {}.",
    "a blurry photo of a {}.",
    "a cartoon {}.",
    "art of a {}.",
    "a sketch of the {}.",
    "a embroidered {}.",
    "a pixelated photo of a {}.",
    "itap of the {}.",
    "a jpeg corrupted photo of the {}.",
    "a good photo of a {}.",
    "a plushie {}.",
    "a photo of the nice {}.",
    "a photo of the small {}.",
    "a photo of the weird {}.",
    "the cartoon {}.",
    "art of the {}.",
    "a drawing of the {}.",
    "a photo of the large {}.",
    "a black and white photo of a {}.",
    "the plushie {}.",
    "a dark photo of a {}.",
    "itap of a {}.",
    "graffiti of the {}.",
    "a toy {}.",
    "itap of my {}.",
    "a photo of a cool {}.",
    "a photo of a small {}.",
    "a tattoo of the {}.",
)

TEMPLATE_SETS = {
    "ensemble7": ENSEMBLE7,
    "imagenet80": IMAGENET80,
    "simple": ("a photo of a {}.",),
}


def resolve_templates(spec: str | list[str] | tuple[str, ...] = "ensemble7") -> tuple[str, ...]:
    """Templates from a set name, one template with ``{}``, a list of templates, or a file of them."""
    if isinstance(spec, (list, tuple)):
        templates = tuple(spec)
    elif spec in TEMPLATE_SETS:
        return TEMPLATE_SETS[spec]
    elif "{}" in spec:
        templates = (spec,)
    elif Path(spec).is_file():
        templates = tuple(line.strip() for line in Path(spec).read_text(encoding="utf-8").splitlines() if line.strip())
    else:
        raise ConfigError(
            f"unknown templates {spec!r}",
            hint=f"use one of {', '.join(TEMPLATE_SETS)}, a template such as 'a photo of a {{}}.', or a file with one template a line",
        )
    bad = [t for t in templates if "{}" not in t]
    if not templates or bad:
        raise ConfigError(f"every template needs a {{}} where the class name goes; not: {bad[:3] or 'an empty list'}")
    return templates


def fill(template: str, name: str) -> str:
    # str.replace, not str.format: class names or templates may contain other braces.
    return template.replace("{}", name)
