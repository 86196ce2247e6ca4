"""On-disk size of a quantized model next to its theoretical size (params × bits / 8)."""

from __future__ import annotations

from pathlib import Path

from torch import nn

from ..nn import WEIGHT_QUANT_LAYERS


def size_report(model: nn.Module, saved_folder: str | Path | None = None, export_folder: str | Path | None = None) -> dict:
    """Bytes: theoretical (quantized weights at their bit width, other tensors fp32), the saved
    safetensors (packed codes) and the ONNX graphs (codes unpacked to int8)."""
    quantized_bits, quantized_params = 0, 0
    owners = set()
    for name, m in model.named_modules():
        wq = getattr(m, "weight_quantizer", None)
        if isinstance(m, WEIGHT_QUANT_LAYERS) and wq is not None and wq.active:
            quantized_bits += m.weight.numel() * wq.bits
            quantized_params += m.weight.numel()
            owners.add(f"{name}.weight")
    float_params = sum(p.numel() for n, p in model.named_parameters() if n not in owners)
    out = {
        "quantized_weight_params": quantized_params,
        "float_params": float_params,
        "theoretical_bytes": quantized_bits // 8 + 4 * float_params,
    }
    if saved_folder is not None:
        from ..saving import weights_file

        weights = weights_file(saved_folder)
        if weights.is_file():
            out["safetensors_bytes"] = weights.stat().st_size
    if export_folder is not None:
        out["onnx_bytes"] = sum(p.stat().st_size for p in Path(export_folder).glob("*.onnx"))
    return out


def format_size_report(report: dict) -> str:
    mb = lambda b: f"{b / 1e6:.2f} MB"  # noqa: E731
    parts = [f"theoretical {mb(report['theoretical_bytes'])} (quantized weights at their bit width, the rest fp32)"]
    if "safetensors_bytes" in report:
        parts.append(f"saved safetensors {mb(report['safetensors_bytes'])} (packed codes)")
    if "onnx_bytes" in report:
        parts.append(f"ONNX {mb(report['onnx_bytes'])} (codes as int8)")
    return "size: " + "; ".join(parts)
