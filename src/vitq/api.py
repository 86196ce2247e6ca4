"""The one entry point: ``vitq.quantize(model, config, calib)``."""

from __future__ import annotations

import copy
import time

import torch
from torch import nn

from .config import QuantConfig
from .methods import get_method
from .nn import summarize_points


def quantize(model: nn.Module, config: QuantConfig | None = None, calib=None, *, progress: bool = True, **kwargs) -> nn.Module:
    """Return a quantized copy of ``model`` (the original is left untouched).

    ``config`` is a :class:`QuantConfig` (or give its fields as keyword arguments);
    ``calib`` is calibration data: tensors of pixel values, dicts of model inputs, or
    ``(images, labels)`` batches from a DataLoader. The result carries its QuantState
    (see :func:`vitq.nn.quant_state`) and a ``vitq_info`` dict describing how it was made.
    """
    if config is None:
        config = QuantConfig(**kwargs)
    elif kwargs:
        raise TypeError("give either a QuantConfig or its fields as keyword arguments, not both")
    method = get_method(config.method)
    torch.manual_seed(config.seed)
    qmodel = copy.deepcopy(model).eval()
    start = time.perf_counter()
    qmodel, summary = method.run(qmodel, calib, config, progress=progress)
    qmodel.vitq_info = {
        "method": config.method,
        "config": config.to_dict(),
        **summary,
        "calibration_seconds": round(time.perf_counter() - start, 3),
        "quantized": summarize_points(qmodel),
    }
    return qmodel
