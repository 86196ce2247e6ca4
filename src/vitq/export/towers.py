"""The towers of a model as plain modules with tensor inputs and one tensor output, for export."""

from __future__ import annotations

import torch
from torch import nn

from ..models.families import family_of

# tower -> (input names, output name); a classifier's image output is named by output_name
SIGNATURES = {"image": (("pixel_values",), "image_embeds"), "text": (("input_ids", "attention_mask"), "text_embeds")}


def output_name(model: nn.Module, tower: str) -> str:
    """The graph output's name as Optimum and transformers users know it: ``logits`` for a
    classifier's image tower (a model with a task head and no projection to a shared space), else
    ``image_embeds`` / ``text_embeds``. Read from the structure: running the model here would
    disturb an export-mode model's state."""
    from ..models.adapter import unwrap

    if tower == "image" and not hasattr(unwrap(model), "get_image_features") and family_of(model).heads:
        return "logits"
    return SIGNATURES[tower][1]


class ImageTower(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.family = family_of(model)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.family.encode_image(self.model, pixel_values)


class TextTower(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.family = family_of(model)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.family.encode_text(self.model, input_ids, attention_mask)


def towers_of(model: nn.Module) -> tuple[str, ...]:
    """The towers a model has (image, text), in that order."""
    return tuple(t for t in ("image", "text") if t in family_of(model).components)


def tower_module(model: nn.Module, tower: str) -> nn.Module:
    return ImageTower(model) if tower == "image" else TextTower(model)


def _sub_config(model: nn.Module, tower: str):
    cfg = model.config
    name = "vision_config" if tower == "image" else "text_config"
    return getattr(cfg, name, None) or cfg


def image_shape(model: nn.Module) -> tuple[int, int, int]:
    cfg = _sub_config(model, "image")
    size = getattr(cfg, "image_size", 224)
    size = size if isinstance(size, int) else size[0]
    return int(getattr(cfg, "num_channels", 3)), int(size), int(size)


def example_inputs(model: nn.Module, tower: str, batch: int = 2, seq: int = 16, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Random inputs of the right shapes (values do not matter for speed or tracing)."""
    g = torch.Generator().manual_seed(seed)
    if tower == "image":
        return (torch.randn(batch, *image_shape(model), generator=g),)
    cfg = _sub_config(model, "text")
    vocab = int(getattr(cfg, "vocab_size", 1000))
    ids = torch.randint(3, max(vocab, 4), (batch, seq), generator=g)
    eos = getattr(cfg, "eos_token_id", None)
    if isinstance(eos, int):
        ids[:, -1] = eos  # CLIP pools at the end-of-text token
    return ids, torch.ones_like(ids)
