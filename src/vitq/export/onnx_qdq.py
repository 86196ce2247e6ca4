"""Write a vitq-quantized model as QDQ ONNX graphs, one per tower (image.onnx, text.onnx).

The graph uses the QuantState unchanged: each active uniform point becomes a
QuantizeLinear/DequantizeLinear pair with vitq's scale and zero-point (per-channel weights with
their axis, stored as int8 initializers), LayerNorm, Softmax and residual additions stay float.
See :mod:`vitq.export.qdq` for how sub-8-bit and log quantizers are written.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import os
import shutil
import tempfile
import warnings
from pathlib import Path

import torch
from torch import nn

from .._version import __version__
from ..errors import ConfigError, ModelError
from ..nn import quantizers
from ..tensors import dtype_of
from .qdq import to_export_mode
from .towers import SIGNATURES, example_inputs, image_shape, output_name, tower_module, towers_of

OPSET = 17  # LayerNormalization is a single op from 17 on; QDQ per-channel from 13
EXPORT_META = "export.json"


def _check_quantized(model: nn.Module) -> None:
    info = getattr(model, "vitq_info", None)
    if info is not None and info.get("dynamic"):
        raise ModelError(
            "a dynamic (DQ-CLIP) model computes its activation scales for every input at run time, on PyTorch's "
            "int8 kernels (torchao or torch.ao quantize_dynamic); vitq export writes static QDQ graphs",
            hint="run the dynamic model in PyTorch (vitq.load(DIR)), or quantize with a calibrated method "
                 "(e.g. --method minmax --bits W8A8) to export it to ONNX",
        )
    if info is None or not any(True for _ in quantizers(model)):
        raise ModelError("this model was not quantized by vitq", hint="quantize it first (vitq.quantize or `vitq quantize`), then export")


def _dynamic_axes(tower: str, output: str) -> dict:
    inputs = SIGNATURES[tower][0]
    axes = {name: {0: "batch"} for name in inputs}
    if tower == "text":
        axes = {name: {0: "batch", 1: "sequence"} for name in inputs}
    axes[output] = {0: "batch"}
    return axes


def graph_metadata(model: nn.Module, tower: str) -> dict[str, str]:
    """ONNX ``metadata_props``: what a runtime user needs to feed the graph and to know what it is
    (the image preprocessing, the bits and method, vitq's version)."""
    import json

    info = getattr(model, "vitq_info", None) or {}
    config = info.get("config") or {}
    meta = {"vitq_version": __version__, "tower": tower, "method": str(config.get("method", info.get("method", ""))),
            "bits": str(config.get("bits", info.get("bits", "")))}
    if config.get("bit_plan"):
        meta["bit_plan"] = json.dumps(config["bit_plan"])
    if tower == "image":
        from ..data.preprocess import image_transform
        from ..errors import VitqError

        channels, size, _ = image_shape(model)
        meta["image_size"] = str(size)
        try:
            t = image_transform(model)
            mean, std = getattr(t, "mean", None), getattr(t, "std", None)
            proc = getattr(t, "processor", None)
            mean = mean if mean is not None else getattr(proc, "image_mean", None)
            std = std if std is not None else getattr(proc, "image_std", None)
            if mean is not None and std is not None:
                meta["image_mean"], meta["image_std"] = json.dumps([float(v) for v in mean]), json.dumps([float(v) for v in std])
        except VitqError:  # no processor known: the graph is still valid, only less described
            pass
    return meta


def export_tower(model: nn.Module, tower: str, path: str | Path, opset: int = OPSET, weight_dtype: str = "auto") -> dict:
    """Trace one tower of an export-mode model to ONNX, fold its weights to int8; returns stats."""
    import onnx

    from .graph_passes import optimize_qdq_graph

    path = Path(path)
    inputs, output = SIGNATURES[tower][0], output_name(model, tower)
    module = tower_module(model, tower).eval()
    args = example_inputs(model, tower)
    with tempfile.TemporaryDirectory() as tmp, torch.no_grad(), warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")  # tracer warnings about Python control flow on shapes
        raw = Path(tmp) / "raw.onnx"
        torch.onnx.export(module, args, str(raw), dynamo=False, opset_version=opset, input_names=list(inputs),
                          output_names=[output], dynamic_axes=_dynamic_axes(tower, output), do_constant_folding=True)
        graph = onnx.load(str(raw))
    stats = optimize_qdq_graph(graph, weight_dtype)
    graph.doc_string = f"vitq {__version__} QDQ export ({tower} tower)"
    onnx.helper.set_model_props(graph, graph_metadata(model, tower))
    data = graph.SerializeToString()
    if len(data) >= 2**31 - 1:
        raise ModelError(f"the {tower} tower is too large for one ONNX file (2 GB)", hint="export fewer towers or a smaller model")
    from ..io_utils import atomic_write_bytes

    atomic_write_bytes(path, data)
    return {**stats, "file": path.name, "bytes": path.stat().st_size, "inputs": list(inputs), "output": output}


def _point_summary(model: nn.Module) -> dict:
    from ..nn.modules import InputAffine

    kinds, bits = set(), set()
    for _, q in quantizers(model):
        if q.active:
            kinds.add(q.kind)
            bits.add(q.bits)
    affines = sum(1 for m in model.modules() if isinstance(m, InputAffine))
    return {"kinds": sorted(kinds), "bits": sorted(bits), "input_affines": affines}


def export_onnx(model: nn.Module, out: str | Path, towers=None, opset: int = OPSET, progress: bool = False,
                check: int = 8, weight_dtype: str = "auto") -> Path:
    """Export every tower of a vitq-quantized model into folder ``out``; returns the folder.

    ``out`` gets ``image.onnx`` and/or ``text.onnx`` and ``export.json`` (towers, inputs, notes).
    Unless ``check=0``, each graph is first run in ONNX Runtime on ``check`` random inputs and compared
    with the simulation (:func:`vitq.export.check.verify_export`); ``export.json``, written last,
    marks a complete and verified export. ``weight_dtype`` (``auto``, ``int8``, ``uint8``): how 8-bit
    weight codes are stored; ``auto`` stores them unsigned on CPUs whose u8×s8 kernels saturate
    (:mod:`vitq.export.cpu`).
    """
    from ..models.loading import library_class_name
    from .check import check_points, verify_export
    from .cpu import describe as describe_cpu
    from .graph_passes import WEIGHT_DTYPES

    _check_quantized(model)
    from ..models.families import family_of

    if family_of(model).kind == "unet":
        raise ModelError("ONNX export of a quantized diffusion UNet is not implemented yet",
                         hint="save it with vitq.save / vitq quantize --out (it reloads exactly) and sample it in PyTorch")
    if weight_dtype not in WEIGHT_DTYPES:
        raise ConfigError(f"unknown weight_dtype {weight_dtype!r}", hint=f"use one of: {', '.join(WEIGHT_DTYPES)}")
    if not isinstance(check, int) or check < 0:
        raise ConfigError(f"check must be a number of inputs (0 to skip), got {check!r}")
    have = towers_of(model)
    chosen = tuple(have if towers is None else [t for t in towers if t in have])
    if not chosen:
        raise ConfigError(f"the model has no {' or '.join(towers)} tower", hint=f"choose from: {', '.join(have)}")
    out = Path(out)
    if out.suffix == ".onnx":
        raise ConfigError(f"{out} names a file", hint="give a folder: vitq writes one graph per tower (image.onnx, text.onnx) and export.json")
    check_points(model)
    out.mkdir(parents=True, exist_ok=True)
    stale = out / EXPORT_META
    if stale.exists():
        stale.unlink()  # a half-finished re-export must not look complete
    emodel = to_export_mode(model)
    summary = _point_summary(model)
    meta = {
        "format": "vitq-onnx-qdq", "vitq_version": __version__, "opset": opset, "model_class": library_class_name(model),
        "method": model.vitq_info.get("method"), "bits": model.vitq_info.get("config", {}).get("bits"),
        "quantizer_kinds": summary["kinds"], "quantizer_bits": summary["bits"], "input_affines": summary["input_affines"],
        "weight_dtype": weight_dtype, "cpu": describe_cpu(), "towers": {},
    }
    if "image" in chosen:
        meta["image_shape"] = list(image_shape(model))
    from tqdm.auto import tqdm

    staging = Path(tempfile.mkdtemp(prefix=".export-", dir=out))
    try:
        for tower in tqdm(chosen, desc="exporting", disable=not progress, leave=False):
            meta["towers"][tower] = export_tower(emodel, tower, staging / f"{tower}.onnx", opset, weight_dtype)
        # the graphs compute in float32: compare with the simulation in float32 (a bf16-calibrated
        # model's own bf16 forward rounds activations as coarsely as 8-bit codes do)
        reference = model if dtype_of(model) == torch.float32 else copy.deepcopy(model).float()
        meta["check"] = verify_export(reference, staging, chosen, samples=check) if check else None
        for tower in chosen:
            os.replace(staging / f"{tower}.onnx", out / f"{tower}.onnx")
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    meta["notes"] = _notes(summary, meta)
    _copy_side_files(model, out)
    from ..io_utils import write_json

    write_json(out / EXPORT_META, meta)  # written last: its presence marks a complete export
    return out


def _copy_side_files(model: nn.Module, out: Path) -> None:
    """config.json, and the model's tokenizer/processor files, so the export stands alone."""
    from ..models.side_files import save_side_files

    config = getattr(model, "config", None)
    if config is None:
        return
    config.to_json_file(str(out / "config.json"))
    save_side_files(model, out)


def _notes(summary: dict, meta: dict) -> list[str]:
    notes = []
    unsigned = sum(t.get("weights_unsigned", 0) for t in meta["towers"].values())
    wide = sum(t.get("wide_int8_weights", 0) for t in meta["towers"].values())
    if unsigned:
        notes.append(f"{unsigned} 8-bit weight tensors are stored as uint8 (codes + 128, zero-point + 128: the same values) "
                     "because this CPU's uint8 x int8 kernels saturate (no VNNI); export with weight_dtype='int8' for a VNNI target")
    if wide:
        notes.append(f"{wide} weight tensors use the full int8 range: run this export on a CPU with VNNI (or re-export "
                     "with weight_dtype='uint8'), as uint8 x int8 kernels without VNNI saturate")
    if meta.get("check") is None:
        notes.append("not verified against the simulation (check=0)")
    if summary.get("input_affines"):
        notes.append(f"{summary['input_affines']} per-channel multiply-adds (Mul + Add) run in float before their "
                     "QuantizeLinear: RepQ-ViT's post-LayerNorm reparameterization where the LayerNorm output also "
                     "feeds a residual (post-LN blocks such as BERT) or a layer kept in float")
    if any(b < 8 for b in summary["bits"]):
        notes.append("sub-8-bit points are stored as int8/uint8 (ONNX QDQ before opset 21 has no 4-bit type) "
                     "and clamped to their b-bit range, so the codes equal vitq's")
    if any(k != "uniform" for k in summary["kinds"]):
        notes.append("log (post-Softmax) quantizers have no ONNX op: they are written as float ops with the same values")
    return notes


def read_export_meta(folder: str | Path) -> dict | None:
    path = Path(folder) / EXPORT_META
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except ValueError as err:
        raise ModelError(f"{path} is unreadable: {err}", hint="export the model again") from None
