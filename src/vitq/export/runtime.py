"""Run exported towers on ONNX Runtime or OpenVINO behind vitq's encode interface.

``ExportedModel`` looks enough like the transformers model it came from for vitq's evaluators:
``get_image_features`` / ``get_text_features`` (dual encoders) and ``__call__`` return outputs whose
``pooler_output`` is the embedding (``logits`` for classifiers); ``config`` is the model's config.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..errors import ConfigError, ModelError, install_hint
from .onnx_qdq import read_export_meta
from .towers import SIGNATURES

RUNTIMES = ("onnxruntime", "openvino")


@dataclass
class EncoderOutput:
    """The fields vitq's evaluators read, all the same tensor."""

    pooler_output: torch.Tensor

    @property
    def logits(self) -> torch.Tensor:
        return self.pooler_output

    @property
    def image_embeds(self) -> torch.Tensor:
        return self.pooler_output

    @property
    def text_embeds(self) -> torch.Tensor:
        return self.pooler_output

    def __getitem__(self, i):
        return (self.pooler_output,)[i]


def ort_session(path: str | Path, threads: int | None = None, optimized_path: str | Path | None = None):
    """An ONNX Runtime CPU session with every graph optimization (QDQ → integer kernels) on."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    if threads:
        so.intra_op_num_threads = threads
    if optimized_path:
        so.optimized_model_filepath = str(optimized_path)
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


class _OrtRunner:
    def __init__(self, path, threads=None):
        self.session = ort_session(path, threads)

    def __call__(self, feeds: dict) -> np.ndarray:
        return self.session.run(None, feeds)[0]


class _OpenVinoRunner:
    """A compiled OpenVINO model; f32 precision for the float parts (the CPU plugin's default on a
    bf16-capable CPU would be bf16, which is less faithful to the simulation)."""

    def __init__(self, path, threads=None, precision: str = "f32", **config):
        import openvino as ov

        config = {"INFERENCE_PRECISION_HINT": precision, "PERFORMANCE_HINT": "LATENCY", **config}  # e.g. PERF_COUNT="YES"
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        self.compiled = ov.Core().compile_model(str(path), "CPU", config)

    def __call__(self, feeds: dict) -> np.ndarray:
        return self.compiled(feeds)[0]


def make_runner(path, runtime: str = "onnxruntime", threads: int | None = None, **options):
    if runtime == "onnxruntime":
        return _OrtRunner(path, threads)
    if runtime == "openvino":
        try:
            import openvino  # noqa: F401
        except ImportError:
            raise ConfigError("the openvino runtime is not installed", hint=install_hint("deploy", "openvino")) from None
        return _OpenVinoRunner(path, threads, **options)
    raise ConfigError(f"unknown runtime {runtime!r}", hint=f"use one of: {', '.join(RUNTIMES)}")


def _digest(paths) -> torch.Tensor:
    h = hashlib.sha256()
    for p in paths:
        h.update(Path(p).read_bytes())
    return torch.frombuffer(bytearray(h.digest()), dtype=torch.uint8)


class ExportedModel(nn.Module):
    """Exported towers behind the encode interface (no parameters: the runtime holds the weights)."""

    def __init__(self, folder: str | Path, runtime: str = "onnxruntime", threads: int | None = None, **options):
        super().__init__()
        folder = Path(folder)
        meta = read_export_meta(folder)
        if meta is None:
            raise ModelError(f"{folder} holds no exported model (no export.json)", hint="run `vitq export --model DIR --format onnx` first")
        self.folder, self.runtime, self.meta = folder, runtime, meta
        _warn_if_saturating(meta)
        self.runners = {t: make_runner(folder / info["file"], runtime, threads, **options) for t, info in meta["towers"].items()}
        self.config = _read_config(folder, meta)
        self.name_or_path = str(folder)
        # Lets evaluators that hash a model's buffers (text-embedding caches) tell exports apart.
        self.register_buffer("graph_digest", _digest(folder / info["file"] for info in meta["towers"].values()))
        if "image" in self.runners and "text" in self.runners:  # dual encoder: CLIP-style feature methods
            self.get_image_features = lambda pixel_values, **_: EncoderOutput(self.encode_image(pixel_values))
            self.get_text_features = lambda input_ids, attention_mask=None, **_: EncoderOutput(self.encode_text(input_ids, attention_mask))

    @property
    def towers(self) -> tuple[str, ...]:
        return tuple(self.runners)

    def _run(self, tower: str, *tensors) -> torch.Tensor:
        if tower not in self.runners:
            raise ModelError(f"this export has no {tower} tower", hint=f"it has: {', '.join(self.runners)}")
        names = SIGNATURES[tower][0]
        feeds = {n: t.detach().cpu().numpy() for n, t in zip(names, tensors)}
        return torch.from_numpy(np.ascontiguousarray(self.runners[tower](feeds)))

    def encode_image(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self._run("image", pixel_values.float())

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        return self._run("text", input_ids.long(), attention_mask.long())

    def forward(self, pixel_values=None, input_ids=None, attention_mask=None, **_):
        if pixel_values is not None:
            return EncoderOutput(self.encode_image(pixel_values))
        if input_ids is not None:
            return EncoderOutput(self.encode_text(input_ids, attention_mask))
        raise ConfigError("give pixel_values or input_ids")

    def extra_repr(self) -> str:
        return f"runtime={self.runtime}, towers={','.join(self.runners)}, folder={self.folder}"


def _warn_if_saturating(meta: dict) -> None:
    """An export made for a VNNI CPU keeps full-range int8 weights; elsewhere its kernels saturate."""
    import warnings

    from .cpu import u8s8_saturates

    wide = sum(t.get("wide_int8_weights", 0) for t in meta.get("towers", {}).values())
    if wide and u8s8_saturates():
        warnings.warn(f"this export stores {wide} weight tensors as full-range int8, and this CPU has no VNNI: its "
                      "uint8 x int8 kernels saturate and the outputs lose accuracy; re-export here (vitq export "
                      "--weight-dtype auto or uint8)", RuntimeWarning, stacklevel=3)


def _read_config(folder: Path, meta: dict):
    path = folder / "config.json"
    if not path.is_file():
        return None
    import transformers

    cls = getattr(transformers, meta.get("model_class", ""), None)
    try:
        config = cls.config_class.from_json_file(str(path)) if cls is not None else json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(config, dict):
        config._name_or_path = str(folder)
    return config
