"""The one entry point: ``vitq.quantize(model, config, calib)``."""

from __future__ import annotations

import copy
import time

import torch
from torch import nn

from .config import QuantConfig
from .methods import get_method
from .nn import summarize_points
from .tensors import dtype_of


def calibration_data(source, model: nn.Module, num: int = 32, batch_size: int = 16, seed: int = 0, transform_fn=None,
                     texts: list[str] | None = None, tokenizer=None, text: bool | None = None):
    """Calibration batches for ``model`` from ``source``:

    - a folder or ``.zip`` of images (class subfolders, or flat: a text tower then calibrates on
      ``texts`` or vitq's built-in sentences);
    - ``"synthetic"``: data-free images made from the model (CLAMP-ViT's synthesis);
    - any iterable of examples (a Hugging Face ``datasets`` split, PIL images, dicts), each mapped
      to an image (or ``{"image": ..., "text": ...}``) by ``transform_fn`` where needed.

    ``num`` images in batches of ``batch_size``; prompts for a text tower come along when the model
    has one (``text=False`` leaves them out)."""
    from pathlib import Path

    from .data.calibration import IterableBatches, calibration_batches
    from .data.preprocess import image_transform
    from .models.families import family_of

    wants_text = ("text" in family_of(model).components) if text is None else text
    if wants_text and tokenizer is None:
        from .models.tokenizers import resolve_tokenizer

        tokenizer = resolve_tokenizer(model)
    tokenizer = tokenizer if wants_text else None
    if isinstance(source, str) and source == "synthetic":
        from .data.synthetic import SynthesisConfig, synthesize

        return synthesize(model, num, SynthesisConfig(batch_size=batch_size, seed=seed), tokenizer=tokenizer)
    if isinstance(source, (str, Path)):
        return calibration_batches(source, num, batch_size, image_transform(model), tokenizer=tokenizer, seed=seed, texts=texts)
    return IterableBatches(source, num, batch_size, image_transform(model), transform_fn, tokenizer, texts)


def load(folder, runtime: str | None = None) -> nn.Module:
    """Load a folder written by :func:`vitq.save`: the simulated (fake-quant) model, identical to the
    one saved; or with ``runtime="onnxruntime"`` (or ``"openvino"``) the exported integer model, with
    the same encode interface (exported into ``folder/onnx`` on first use, see
    :func:`vitq.export.load_exported`)."""
    if runtime is not None:
        from .export import load_exported

        return load_exported(folder, runtime=runtime)
    from .saving import load as load_saved

    return load_saved(folder)


def quantize(model: nn.Module, config: QuantConfig | None = None, calib=None, *, progress: bool = True,
             device: str | torch.device | None = None, inplace: bool = False, **kwargs) -> nn.Module:
    """Return a quantized copy of ``model`` (the original is left untouched, unless ``inplace``).

    ``config`` is a :class:`QuantConfig` (or give its fields as keyword arguments);
    ``calib`` is calibration data: tensors of pixel values, dicts of model inputs, or
    ``(images, labels)`` batches from a DataLoader; they are moved to the model's device and
    dtype batch by batch. ``device`` moves the model there first (``"cuda"``: calibrate a large
    model on a GPU). ``inplace=True`` quantizes ``model`` itself instead of a copy, which saves the
    memory of a second model. The result carries its QuantState (see :func:`vitq.nn.quant_state`)
    and a ``vitq_info`` dict describing how it was made.
    """
    if config is None:
        config = QuantConfig(**kwargs)
    elif kwargs:
        raise TypeError("give either a QuantConfig or its fields as keyword arguments, not both")
    from .models.adapter import unwrap

    method = get_method(config.method)
    torch.manual_seed(config.seed)
    base = unwrap(model)  # a torch.compile wrapper: quantize the module behind it
    qmodel = (base if inplace else copy.deepcopy(base)).eval()
    if device is not None:
        qmodel.to(device)
    start = time.perf_counter()
    qmodel, result = method.run(qmodel, calib, config, progress=progress)
    qmodel.vitq_info = {
        "method": config.method,
        "config": config.to_dict(),
        **result.to_dict(),
        "calibration_seconds": round(time.perf_counter() - start, 3),
        # where the float model came from (a hub id or folder), so that tools can put it beside the result
        "source": str(getattr(getattr(base, "config", None), "_name_or_path", "") or "") or None,
        "model_dtype": str(dtype_of(qmodel)).removeprefix("torch."),
        "quantized": summarize_points(qmodel),
    }
    return qmodel
