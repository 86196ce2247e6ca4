"""Compare an export with the simulated (fake-quant) model it came from."""

from __future__ import annotations

from pathlib import Path

import torch


def compare_with_simulation(model, folder: str | Path, tower: str, samples: int = 4, runtime: str = "onnxruntime", seed: int = 0) -> float:
    """Lowest cosine similarity, over ``samples`` random inputs, of exported and simulated outputs."""
    from .runtime import ExportedModel
    from .towers import example_inputs, tower_module

    exported = ExportedModel(folder, runtime=runtime)
    args = example_inputs(model, tower, batch=samples, seed=seed)
    with torch.no_grad():
        ref = tower_module(model, tower)(*args)
    got = exported.encode_image(*args) if tower == "image" else exported.encode_text(*args)
    return float(torch.nn.functional.cosine_similarity(ref.flatten(1).float(), got.flatten(1).float(), dim=-1).min())
