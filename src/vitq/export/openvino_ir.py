"""OpenVINO IR (``.xml`` + ``.bin``) beside the QDQ ONNX graphs, for users who deploy on OpenVINO
without converting themselves. The IR is OpenVINO's own conversion of the verified ONNX graph, so
it carries vitq's scales unchanged; it is checked against ONNX Runtime before it is put in place."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np

from ..errors import ConfigError, ModelError, install_hint


def write_openvino_ir(model, export_folder: str | Path, towers, samples: int = 4) -> dict:
    """``image.xml``/``image.bin`` (and text) next to the ONNX graphs in ``export_folder``; returns,
    per tower, the files and the cosine of the IR's outputs to ONNX Runtime's on random inputs."""
    try:
        import openvino as ov
    except ImportError:
        raise ConfigError("--format openvino needs OpenVINO", hint=install_hint("deploy", "openvino")) from None
    import onnxruntime as ort

    from .towers import SIGNATURES, example_inputs

    folder = Path(export_folder)
    out = {}
    for tower in towers:
        onnx_path = folder / f"{tower}.onnx"
        staging = Path(tempfile.mkdtemp(prefix=".ov-", dir=folder))
        try:
            ir = ov.convert_model(str(onnx_path))
            ov.save_model(ir, str(staging / f"{tower}.xml"), compress_to_fp16=False)  # fp16 would change the float parts
            compiled = ov.Core().compile_model(str(staging / f"{tower}.xml"), "CPU")
            session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
            feeds = {n: t.numpy() for n, t in zip(SIGNATURES[tower][0], example_inputs(model, tower, batch=samples, seed=7))}
            a = np.asarray(compiled(feeds)[0], dtype=np.float64).reshape(samples, -1)
            b = np.asarray(session.run(None, feeds)[0], dtype=np.float64).reshape(samples, -1)
            cos = (a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)
            if float(cos.min()) < 0.99:
                raise ModelError(f"OpenVINO's IR of the {tower} tower disagrees with ONNX Runtime (cosine {cos.min():.4f})",
                                 hint="use the ONNX graphs (OpenVINO reads them directly), and report the model")
            for suffix in (".xml", ".bin"):
                os.replace(staging / f"{tower}{suffix}", folder / f"{tower}{suffix}")
            out[tower] = {"files": [f"{tower}.xml", f"{tower}.bin"], "cosine_to_onnxruntime_min": round(float(cos.min()), 6)}
        finally:
            for p in staging.iterdir():
                p.unlink()
            staging.rmdir()
    return out
