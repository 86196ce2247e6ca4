"""Calibrating quantization points: all at once on float activations, or one after another in
forward order, each on inputs that already went through every quantizer before it.

*Parallel* calibration (FQ-ViT, the P4Q baselines) feeds every observer the float model's
activations in one pass per batch. *Sequential* calibration is what RepQ-ViT's code does when it
initialises each quantizer on its first call during one forward pass with every quantizer on: point
k sees data quantized by points 1..k-1 (weights included). With a stream of batches vitq does it
block by block: it records each block's inputs with everything upstream quantized (the forward
stops at the block), then replays the block once per point inside it, stopping right after that
point, so the cost is a few forward passes, not one per point. Points outside the blocks
(patch embedding, Swin's patch merging, heads) get a pass of the model that stops after them.
"""

from __future__ import annotations

from typing import Callable, Iterable

import torch
from torch import nn
from tqdm.auto import tqdm

from ..memory import release_free_memory
from ..nn import TensorQuantizer, calibrate_weights, finish_calibration, quantizers, set_mode
from .recorder import Stream, StopForward, capture_inputs, on_device_of, run_until


def _activation_points(model: nn.Module) -> dict[str, TensorQuantizer]:
    return {n: q for n, q in quantizers(model) if q.enabled and q.role != "weight"}


def _weight_points(model: nn.Module) -> list[TensorQuantizer]:
    return [q for _, q in quantizers(model) if q.role == "weight"]


def points_in_order(model: nn.Module, run: Callable, batch) -> list[str]:
    """Names of the enabled activation points that ``run(batch)`` executes, in the order of their first call."""
    points = _activation_points(model)
    names = {id(q): n for n, q in points.items()}
    order: list[str] = []

    def hook(mod, args, out):
        name = names[id(mod)]
        if name not in order:
            order.append(name)

    run_until(run, batch, [q.register_forward_hook(hook) for q in points.values()])
    return order


def _stop_after(mod, args, out):
    raise StopForward


def _observe(point: TensorQuantizer, items: Iterable, call: Callable) -> None:
    """Feed ``point``'s observer with ``call(item)`` for every item (each call stops right after the
    point), fix its scale, and switch it to quantized mode."""
    point.set_mode("calib")
    handle = point.register_forward_hook(_stop_after)
    try:
        for item in items:
            try:
                call(item)
            except StopForward:
                pass
    finally:
        handle.remove()
    point.finish_calibration()
    point.set_mode("quant")


def _call(block: nn.Module, item):
    args, kwargs = on_device_of(block, item)
    return block(*args, **kwargs)


def _owner(name: str, blocks: list[str]) -> str | None:
    inside = [b for b in blocks if name.startswith(b + ".")]
    return max(inside, key=len) if inside else None


@torch.no_grad()
def calibrate_sequential(model: nn.Module, batches: Iterable, runs: dict[str, Callable], blocks: dict[str, list[str]],
                         progress: bool = True, cap_mb: float = 1024.0) -> None:
    """Calibrate every point in forward order (see the module docstring); ``runs[c](batch)`` runs
    component ``c`` on a batch, ``blocks[c]`` names its blocks in forward order."""
    model.eval()
    set_mode(model, "fp")
    calibrate_weights(model)
    for q in _weight_points(model):
        q.set_mode("quant")
    with Stream.of(batches, cap_mb) as cached:  # decoded once, replayed for every pass
        for component, run in runs.items():
            first = next(iter(cached), None)
            order = points_in_order(model, run, first) if first is not None else []
            bar = tqdm(total=len(order), desc=f"calibrating {component} (sequential)", disable=not progress, leave=False)
            i = 0
            while i < len(order):
                block_name = _owner(order[i], blocks.get(component, []))
                if block_name is None:
                    _observe(model.get_submodule(order[i]), cached, run)
                    i, _ = i + 1, bar.update(1)
                    continue
                group = [order[i]]
                while i + len(group) < len(order) and _owner(order[i + len(group)], blocks[component]) == block_name:
                    group.append(order[i + len(group)])
                block = model.get_submodule(block_name)
                with capture_inputs(model, block, cached, run, cap_mb) as inputs:
                    for name in group:
                        _observe(model.get_submodule(name), inputs, lambda item: _call(block, item))
                        bar.update(1)
                        release_free_memory()
                i += len(group)
            bar.close()
    set_mode(model, "quant")


@torch.no_grad()
def calibrate_parallel(model: nn.Module, batches: Iterable, runs: dict[str, Callable], progress: bool = True) -> None:
    """Observe weights and the float model's activations in one pass per batch, then fix every scale."""
    model.eval()
    set_mode(model, "calib")
    calibrate_weights(model)
    total = len(batches) if hasattr(batches, "__len__") else None
    for batch in tqdm(batches, desc="calibrating", disable=not progress, leave=False, total=total or None):
        for run in runs.values():
            run(batch)
        release_free_memory()  # keeps the peak flat over long calibration streams
    finish_calibration(model)
    set_mode(model, "quant")
