"""Deployment: QDQ ONNX export of vitq-quantized models, its check, and runtimes behind the encode
interface (see docs/deployment.md). The speed benchmark that compares runtimes is :mod:`vitq.bench`."""

from __future__ import annotations

from pathlib import Path

from ..errors import ModelError

DEFAULT_SUBFOLDER = "onnx"  # where `vitq export` and load(..., runtime=) put the graphs of a saved folder


def export_onnx(model, out, towers=None, **kwargs) -> Path:
    """Export a vitq-quantized model (in memory) to QDQ ONNX graphs in folder ``out``."""
    from .onnx_qdq import export_onnx as _export

    return _export(model, out, towers=towers, **kwargs)


def export_saved(folder, out=None, towers=None, progress: bool = False, **kwargs) -> Path:
    """Export a folder written by :func:`vitq.save`; by default into ``folder/onnx``."""
    from ..saving import is_saved_folder, load

    folder = Path(folder)
    if not is_saved_folder(folder):
        raise ModelError(f"{folder} is not a vitq quantized-model folder (no vitq_config.json)",
                         hint="pass a folder written by `vitq quantize` or vitq.save")
    model = load(folder)
    return export_onnx(model, Path(out) if out else folder / DEFAULT_SUBFOLDER, towers=towers, progress=progress, **kwargs)


def load_exported(path, runtime: str = "onnxruntime", **options):
    """An :class:`ExportedModel` from an export folder, or from a saved folder (exported on first use)."""
    from ..saving import is_saved_folder
    from .onnx_qdq import read_export_meta
    from .runtime import RUNTIMES, ExportedModel

    from ..errors import ConfigError

    if runtime not in RUNTIMES:
        raise ConfigError(f"unknown runtime {runtime!r}", hint=f"use one of: {', '.join(RUNTIMES)}")
    path = Path(path)
    if read_export_meta(path) is None:
        if not is_saved_folder(path):
            raise ModelError(f"{path} is neither an exported model (export.json) nor a vitq quantized-model folder",
                             hint="pass a folder written by `vitq quantize` or by `vitq export`")
        sub = path / DEFAULT_SUBFOLDER
        if read_export_meta(sub) is None:
            export_saved(path, sub)
        path = sub
    return ExportedModel(path, runtime=runtime, **options)


__all__ = ["export_onnx", "export_saved", "load_exported", "DEFAULT_SUBFOLDER"]
