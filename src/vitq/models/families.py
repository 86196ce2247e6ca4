"""Architecture knowledge, through the ModelAdapter protocol (:mod:`vitq.models.adapter`).

This module keeps the short names the rest of vitq uses: ``family_of(model)`` is the model's
adapter, ``component_of``/``size_group_of``/``blocks_of``/``component_runner`` ask it. Which tensors
are quantized is decided in :mod:`vitq.models.prepare` from the adapter's roles: every Linear and
the patch-embedding Conv2d of the selected components; inside each block the post-LayerNorm
activation (input of q/k/v and of fc1), the post-GELU activation (input of fc2), both inputs of
q·kᵀ, the post-Softmax probabilities and v (inputs of softmax·v), and the attention output (input
of the output projection). LayerNorm, Softmax and residual additions stay in floating point.
"""

from __future__ import annotations

from torch import nn

from .adapter import COMPONENT_INPUTS, SUPPORTED_CLASSES, BlockRoles, ModelAdapter, adapter_of, register_block_roles  # noqa: F401

Family = ModelAdapter  # the name the older code used

def family_of(model: nn.Module) -> ModelAdapter:
    """The adapter of a model instance (found by structure), or a ModelError saying why not."""
    return adapter_of(model)


def component_of(family: ModelAdapter, module_name: str) -> str | None:
    return family.component_of(module_name)


def size_group_of(family: ModelAdapter, param_name: str) -> str:
    return family.size_group_of(param_name)


def component_runner(model: nn.Module, component: str):
    """A function running one batch (a dict of model inputs) through ``component``; batches without
    that component's inputs are skipped."""
    return family_of(model).runner(model, component)


def blocks_of(model: nn.Module, component: str) -> list[str]:
    """Names of the transformer blocks of ``component``, in forward order."""
    return family_of(model).blocks(component)
