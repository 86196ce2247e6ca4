"""Check an export before it is marked complete: can the runtime run it on integer kernels, and does
it compute what the simulated (fake-quant) model computes?

- :func:`check_points` refuses, before any tracing, quantization points that integer kernels cannot
  execute (a per-channel activation scale), naming the layer.
- :func:`integer_kernel_report` lets ONNX Runtime optimize a graph and lists which linears became
  integer kernels and which still run in float.
- :func:`verify_export` runs every graph in ONNX Runtime with its default (full) optimizations on
  random inputs and compares it with the simulation.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch
from torch import nn

from ..errors import ModelError
from ..nn import quantizers

# ONNX Runtime operators that compute a linear layer on integer inputs.
INTEGER_OPS = ("MatMulIntegerToFloat", "QLinearMatMul", "MatMulInteger", "DynamicQuantizeMatMul", "QGemm",
               "QLinearConv", "ConvInteger", "QAttention", "DynamicQuantizeLSTM")
# An export agrees with its simulation when, over the check inputs, the outputs' cosine similarity is
# at least MEDIAN_COSINE for the median input and MIN_COSINE for every one. The runtime's float ops
# (LayerNorm, GELU, summation order) may move a value across a rounding boundary of a quantizer, and
# inputs far outside the calibrated ranges amplify that on a few inputs; a saturating or mis-scaled
# kernel moves every input.
MEDIAN_COSINE, MIN_COSINE = 0.999, 0.95


def _layer_of(point_name: str) -> str:
    """The layer a point belongs to: ``a.b.input_quantizer`` -> ``a.b``."""
    return point_name.rpartition(".")[0] or point_name


def check_points(model: nn.Module) -> None:
    """Refuse points that integer runtimes cannot execute, naming the first such layer."""
    bad = [(n, q) for n, q in quantizers(model)
           if q.active and q.kind == "uniform" and q.role != "weight" and q.axis is not None and q.quantizer.scale.numel() > 1]
    if bad:
        name, q = bad[0]
        layer = _layer_of(name)
        more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
        raise ModelError(
            f"{name} quantizes an activation with one scale per channel ({q.quantizer.scale.numel()} scales){more}; "
            "the integer kernels of ONNX Runtime and OpenVINO take one scale and zero-point per activation tensor",
            hint=f"quantize with layer-wise activations (repq-vit's default reparameterizes its channel-wise "
                 f"post-LayerNorm points; the post_ln=channel ablation does not), or keep the layer in float: "
                 f"--exclude '{layer}'",
        )


def _weight_name(initializer: str) -> str:
    """The vitq layer behind an exported weight initializer (``model.a.b.weight_quantized_t`` -> ``a.b``)."""
    name = initializer
    for prefix in ("model.",):
        if name.startswith(prefix):
            name = name[len(prefix):]
    return name.split(".weight")[0]


def integer_kernel_report(path: str | Path) -> dict:
    """After ONNX Runtime's graph optimizations: how many integer kernels, and which weighted linears
    (MatMul/Gemm/Conv fed by a dequantized weight) still run in float, with and without a quantized input."""
    import onnx
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        so = ort.SessionOptions()
        # EXTENDED holds the QDQ fusions and nothing hardware-specific, so the saved graph is portable.
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        so.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
        so.log_severity_level = 3
        ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        graph = onnx.load(so.optimized_model_filepath).graph
    inits = {t.name: len(t.dims) for t in graph.initializer}
    producer = {o: n for n in graph.node for o in n.output}
    integer = sum(1 for n in graph.node if n.op_type in INTEGER_OPS)
    unfused, weight_only = [], []
    for node in graph.node:
        if node.op_type not in ("MatMul", "Gemm", "Conv"):
            continue
        sources = [producer.get(i) for i in node.input[:2]]
        weight = next((s.input[0] for s in sources if s is not None and s.op_type == "DequantizeLinear"
                       and inits.get(s.input[0], 0) >= 2), None)
        if weight is None:
            continue
        quantized_input = any(s is not None and s.op_type == "DequantizeLinear" and s.input[0] not in inits for s in sources)
        (unfused if quantized_input else weight_only).append(_weight_name(weight))
    return {"integer_kernels": integer, "float_linears": sorted(unfused), "weight_only_linears": sorted(weight_only)}


def check_inputs(model: nn.Module, tower: str, samples: int, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Inputs to compare an export on: for a text tower with a tokenizer, built-in English sentences
    (random token ids drive a quantized text tower far outside its calibrated ranges); otherwise
    random tensors of the right shapes."""
    from .towers import example_inputs

    if tower == "text":
        from ..data.texts import sentences
        from ..models.tokenizers import resolve_tokenizer

        try:
            tokenizer = resolve_tokenizer(model)
        except ModelError:
            tokenizer = None
        if tokenizer is not None:
            rng = torch.Generator().manual_seed(seed)
            pool = sentences()
            chosen = [pool[i] for i in torch.randperm(len(pool), generator=rng)[:samples].tolist()]
            tok = tokenizer(chosen, padding=True, truncation=True, max_length=64, return_tensors="pt")
            return tok["input_ids"], tok["attention_mask"]
    return example_inputs(model, tower, batch=samples, seed=seed)


def tower_cosines(model: nn.Module, path: str | Path, tower: str, samples: int = 8, seed: int = 0) -> torch.Tensor:
    """Cosine similarity, per check input, of the graph's output (ONNX Runtime, default options) and
    the simulated model's."""
    import numpy as np

    from .runtime import ort_session
    from .towers import SIGNATURES, tower_module

    args = check_inputs(model, tower, samples, seed)
    with torch.no_grad():
        ref = tower_module(model, tower)(*args)
    session = ort_session(path)
    feeds = {n: t.numpy() for n, t in zip(SIGNATURES[tower][0], args)}
    got = torch.from_numpy(np.ascontiguousarray(session.run(None, feeds)[0]))
    return torch.nn.functional.cosine_similarity(ref.flatten(1).float(), got.flatten(1).float(), dim=-1)


def verify_export(model: nn.Module, folder: str | Path, towers, samples: int = 8, seed: int = 0) -> dict:
    """Run each tower's graph in ONNX Runtime and compare it with the simulation; raise a ModelError
    that says what failed and what to do. Returns, per tower, the cosines and the kernel report."""
    folder = Path(folder)
    report = {}
    for tower in towers:
        path = folder / f"{tower}.onnx"
        try:
            kernels = integer_kernel_report(path)
            cos = tower_cosines(model, path, tower, samples=samples, seed=seed)
        except ModelError:
            raise
        except Exception as err:  # onnxruntime raises its own exception types (Fail, InvalidGraph, ...)
            raise ModelError(
                f"ONNX Runtime cannot run the exported {tower} graph: {str(err).splitlines()[0][:300]}",
                hint="this is a vitq export bug or an unsupported layer; export the other towers with --towers, "
                     "or keep the failing layer in float with --exclude",
            ) from None
        if kernels["float_linears"]:
            names = ", ".join(kernels["float_linears"][:5])
            raise ModelError(
                f"ONNX Runtime runs {len(kernels['float_linears'])} quantized linear(s) of the {tower} tower in float, "
                f"not on integer kernels: {names}",
                hint=f"keep these layers in float (--exclude '{kernels['float_linears'][0]}') or report the layer type",
            )
        median, low = float(cos.median()), float(cos.min())
        if median < MEDIAN_COSINE or low < MIN_COSINE:
            raise ModelError(
                f"the exported {tower} graph does not compute what the simulated model computes: cosine similarity "
                f"{median:.5f} for the median input, {low:.5f} at worst over {len(cos)} inputs "
                f"(needed {MEDIAN_COSINE} and {MIN_COSINE})",
                hint="on an x86 CPU without VNNI, export with weight_dtype='uint8' (--weight-dtype uint8); otherwise "
                     "report this with the model and bit spec",
            )
        report[tower] = {"cosine_median": round(median, 6), "cosine_min": round(low, 6), "samples": len(cos), **kernels}
    return report


def compare_with_simulation(model, folder: str | Path, tower: str, samples: int = 4, runtime: str = "onnxruntime", seed: int = 0) -> float:
    """Lowest cosine similarity, over ``samples`` random inputs, of an exported folder's outputs on
    ``runtime`` and the simulated outputs."""
    from .runtime import ExportedModel
    from .towers import example_inputs, tower_module

    exported = ExportedModel(folder, runtime=runtime)
    args = example_inputs(model, tower, batch=samples, seed=seed)
    with torch.no_grad():
        ref = tower_module(model, tower)(*args)
    got = exported.encode_image(*args) if tower == "image" else exported.encode_text(*args)
    return float(torch.nn.functional.cosine_similarity(ref.flatten(1).float(), got.flatten(1).float(), dim=-1).min())
