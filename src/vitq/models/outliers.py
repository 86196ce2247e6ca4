"""A function-preserving outlier variant of a pre-LN transformer, for benchmarks.

Large pretrained ViTs have a few post-LayerNorm channels whose range is tens of times the others'
(the problem RepQ-ViT's reparameterization solves); vitq's small reference models lack them.
:func:`inject_outlier_channels` creates them without changing the float function: in each block,
for a random third of each LayerNorm's channels, gamma and beta are multiplied by
k ~ logUniform(k_min, k_max) and the matching input columns of the linears fed by that LayerNorm
(q, k, v after the first, fc1 after the second) are divided by k. Then W·(k·y) / k = W·y exactly in
real arithmetic, and to float rounding in practice.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..errors import ModelError
from .adapter import adapter_of


@torch.no_grad()
def inject_outlier_channels(model: nn.Module, fraction: float = 1 / 3, k_min: float = 4.0, k_max: float = 64.0,
                            seed: int = 0) -> dict[str, int]:
    """Scale LayerNorm channels up and the next linears' input columns down (see the module
    docstring), in place. Returns the number of scaled channels per LayerNorm."""
    if not 0 < fraction <= 1 or not 1 < k_min <= k_max:
        raise ValueError("fraction must lie in (0, 1] and 1 < k_min <= k_max")
    adapter = adapter_of(model)
    g = torch.Generator().manual_seed(seed)
    done: dict[str, int] = {}
    for component in adapter.components:
        for block in adapter.blocks(component):
            roles = adapter.block_roles(block)
            pairs = [(roles.ln_attn, roles.qkv_linears), (roles.ln_mlp, [roles.fc1])]
            for ln_path, consumers in pairs:
                if ln_path is None or not all(consumers):
                    raise ModelError(f"block {block} is not a pre-LN block with known LayerNorm consumers",
                                     hint="the outlier variant is defined for pre-LN transformers (ViT, DeiT, CLIP)")
                ln = model.get_submodule(f"{block}.{ln_path}")
                width = ln.weight.numel()
                chosen = torch.randperm(width, generator=g)[: max(1, round(fraction * width))]
                logk = torch.empty(len(chosen)).uniform_(math.log(k_min), math.log(k_max), generator=g)
                k = torch.ones(width)
                k[chosen] = logk.exp()
                ln.weight.mul_(k.to(ln.weight))
                if ln.bias is not None:
                    ln.bias.mul_(k.to(ln.bias))
                for name in consumers:
                    linear = model.get_submodule(f"{block}.{name}")
                    linear.weight.div_(k.to(linear.weight))
                done[f"{block}.{ln_path}"] = len(chosen)
    return done
