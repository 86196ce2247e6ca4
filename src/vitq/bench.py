"""Speed benchmark: the image and text towers on every runtime, one process, one table.

Each runtime gets a *builder* that turns the float model (and, for vitq, its W8A8 copy) into a
callable on a batch; the timing loop is shared: ``warmup`` runs, then ``repeats`` timed runs, and
the median is reported (ms per image = median batch latency / batch size). Weights are random for
the full-size configs: speed does not depend on their values.

Peak memory is the rise of the process's peak resident set (VmHWM, reset before each runtime via
/proc/self/clear_refs) over its resident set before building: it covers building the runtime's
model (export, quantization, compilation) and running it. Resident memory is what a deployment pays:
a fresh process loads the row's graph file, runs it once, and reports its resident set over what it
held after importing the runtime (PyTorch rows have no file: "-"). Model size is the bytes the runtime
loads: the ONNX / OpenVINO IR files, or the serialized state dict for PyTorch.
"""

from __future__ import annotations

import contextlib
import gc
import io
import statistics
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

RUNTIMES = (
    "torch-fp32", "torch-bf16", "torch-dynamic-int8", "ort-fp32", "ort-dynamic-int8", "ort-static-int8",
    "openvino-fp32", "openvino-bf16", "openvino-nncf-int8", "vitq-w8a8", "vitq-w8a8-ort", "vitq-w8a8-asymattn",
    "vitq-w4a8", "vitq-w4a4", "vitq-saved", "vitq-saved-ort", "vitq-saved-torch",
)
SAVED = ("vitq-saved", "vitq-saved-ort", "vitq-saved-torch")  # the user's own quantized folder (--model DIR)
DEFAULT_FLOAT = tuple(r for r in RUNTIMES if r not in SAVED)
DEFAULT_SAVED = ("torch-fp32", "ort-fp32", "openvino-fp32", "ort-static-int8", "openvino-nncf-int8", "vitq-w8a8", *SAVED)


def default_runtimes(model_spec: str) -> tuple[str, ...]:
    """A float model: every runtime but the saved-model rows; a saved vitq folder: the user's model
    on each runtime next to its float source and the int8 peers."""
    from .saving import is_saved_folder

    return DEFAULT_SAVED if is_saved_folder(model_spec) else DEFAULT_FLOAT
# vitq's export runs on OpenVINO when it is installed: on this project's AVX-512 VNNI CPU it ran the
# same QDQ graph 1.3-2x faster than ONNX Runtime (see docs/deployment.md); vitq-w8a8-ort is the other.
VITQ_RUNTIME_ORDER = ("openvino", "onnxruntime")
MODELS = ("clip-vit-b32", "clip-vit-b16", "clip-tiny", "tiny-clip")
TOWERS = ("image", "text")


class Skip(Exception):
    """A runtime that cannot run here (not installed, unsupported); the reason goes in the table."""


@dataclass
class Case:
    """What one benchmark run works on: the float model, its inputs, and files it may share."""

    model: torch.nn.Module
    tower: str
    batch_size: int
    seq_len: int
    workdir: Path
    calib_batches: int = 16
    cache: dict = field(default_factory=dict)
    quantized: torch.nn.Module | None = None  # a saved vitq model given as --model; ``model`` is then its float source

    def inputs(self, batch: int | None = None, seed: int = 0) -> tuple[torch.Tensor, ...]:
        from .export.towers import example_inputs

        return example_inputs(self.model if self.model is not None else self.quantized, self.tower, batch or self.batch_size,
                              self.seq_len, seed)

    def feeds(self, batch: int | None = None, seed: int = 0) -> dict:
        from .export.towers import SIGNATURES

        return {n: t.numpy() for n, t in zip(SIGNATURES[self.tower][0], self.inputs(batch, seed))}


# -- model specs --------------------------------------------------------------------------------
def build_model(spec: str) -> torch.nn.Module:
    """Full-size random CLIP configs by name, the zoo model, a tiny random CLIP, or any model spec."""
    import transformers as T

    torch.manual_seed(0)
    if spec == "clip-vit-b32":
        return T.CLIPModel(T.CLIPConfig()).eval()
    if spec == "clip-vit-b16":
        return T.CLIPModel(T.CLIPConfig(vision_config=dict(patch_size=16))).eval()
    if spec == "tiny-clip":
        tiny = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64)
        cfg = T.CLIPConfig(text_config=dict(vocab_size=120, bos_token_id=0, eos_token_id=2, pad_token_id=1, **tiny),
                           vision_config=dict(image_size=32, patch_size=8, **tiny), projection_dim=16)
        return T.CLIPModel(cfg).eval()
    from .saving import load_any

    return load_any("zoo:clip-tiny" if spec == "clip-tiny" else spec)


# -- helpers ------------------------------------------------------------------------------------
def _state_bytes(tower: torch.nn.Module) -> int:
    """Serialized size of the tensors of this tower only (a dual encoder holds both towers)."""
    from .models.families import component_of

    name = "image" if tower.__class__.__name__ == "ImageTower" else "text"
    family = tower.family
    state = {k: v for k, v in tower.model.state_dict().items() if component_of(family, k) in (name, None)}
    buf = io.BytesIO()
    torch.save(state, buf)
    return buf.tell()


def _file_bytes(*paths) -> int:
    return sum(Path(p).stat().st_size for p in paths if Path(p).exists())


def _torch_tower(model, tower):
    from .export.towers import tower_module

    return tower_module(model, tower).eval()


def fp32_onnx(case: Case) -> Path:
    """The float tower as ONNX, exported once per case and shared by the ONNX-based runtimes."""
    path = case.workdir / f"fp32_{case.tower}.onnx"
    if not path.exists():
        from .export.onnx_qdq import _dynamic_axes
        from .export.towers import SIGNATURES, output_name

        inputs, output = SIGNATURES[case.tower][0], output_name(case.model, case.tower)
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(_torch_tower(case.model, case.tower), case.inputs(2), str(path), dynamo=False, opset_version=17,
                              input_names=list(inputs), output_names=[output], dynamic_axes=_dynamic_axes(case.tower, output))
    return path


def calibration_feeds(case: Case) -> list[dict]:
    """Random calibration batches of one sample each (speed does not depend on the values)."""
    return [case.feeds(1, seed=100 + i) for i in range(case.calib_batches)]


@contextlib.contextmanager
def _quiet_root_logger():
    import logging

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def _need(module: str, what: str):
    import importlib

    try:
        return importlib.import_module(module)
    except Exception as err:  # ImportError, or a library that fails to initialise here
        raise Skip(f"{what} unavailable: {type(err).__name__}: {str(err).splitlines()[0][:120] if str(err) else ''}") from None


# -- builders: each returns (callable on the case's inputs, model bytes, note) ------------------
def _torch_runner(module, case, autocast=False):
    args = case.inputs()

    def run():
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            return module(*args)

    return run


def build_torch_fp32(case):
    m = _torch_tower(case.model, case.tower)
    return _torch_runner(m, case), _state_bytes(m), ""


def build_torch_bf16(case):
    m = _torch_tower(case.model, case.tower)
    return _torch_runner(m, case, autocast=True), _state_bytes(m), "torch.autocast(cpu, bfloat16); fp32 weights"


def build_torch_dynamic_int8(case):
    import copy

    m = _torch_tower(copy.deepcopy(case.model), case.tower)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_

        quantize_(m, Int8DynamicActivationInt8WeightConfig())
        note = "torchao Int8DynamicActivationInt8WeightConfig (eager)"
    except ImportError:
        m = torch.ao.quantization.quantize_dynamic(m, {torch.nn.Linear}, dtype=torch.qint8)
        note = "torch.ao.quantization.quantize_dynamic (torchao not installed)"
    return _torch_runner(m, case), _state_bytes(m), note


def _loaded(run: Callable, runtime: str, path, precision: str = "") -> Callable:
    """Mark a runner with the file it runs, so that its resident memory can be measured on its own."""
    run.loaded = (runtime, str(path), precision)
    return run


def _ort_runner(path, case):
    from .export.runtime import ort_session

    session, feeds = ort_session(path), case.feeds()
    return _loaded(lambda: session.run(None, feeds), "onnxruntime", path)


def build_ort_fp32(case):
    _need("onnxruntime", "onnxruntime")
    path = fp32_onnx(case)
    return _ort_runner(path, case), _file_bytes(path), ""


def build_ort_dynamic_int8(case):
    _need("onnxruntime", "onnxruntime")
    from onnxruntime.quantization import QuantType, quantize_dynamic

    out = case.workdir / f"ort_dynamic_{case.tower}.onnx"
    if not out.exists():  # shared by the batch sizes of one tower
        with _quiet_root_logger():
            quantize_dynamic(str(fp32_onnx(case)), str(out), weight_type=QuantType.QInt8, per_channel=True)
    return _ort_runner(out, case), _file_bytes(out), "quantize_dynamic, per-channel int8 weights"


def build_ort_static_int8(case):
    _need("onnxruntime", "onnxruntime")
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self, feeds):
            self.it = iter(feeds)

        def get_next(self):
            return next(self.it, None)

    out = case.workdir / f"ort_static_{case.tower}.onnx"
    if not out.exists():
        with _quiet_root_logger():  # ORT's quantizer logs a pre-processing advice on every call
            quantize_static(str(fp32_onnx(case)), str(out), Reader(calibration_feeds(case)), quant_format=QuantFormat.QDQ,
                            per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            calibrate_method=CalibrationMethod.MinMax)
    return _ort_runner(out, case), _file_bytes(out), f"QDQ, per-channel, MinMax, {case.calib_batches} calibration samples"


def _ov_runner(model_or_path, case, precision):
    _need("openvino", "openvino")
    from .export.runtime import _OpenVinoRunner

    runner, feeds = _OpenVinoRunner(model_or_path, precision=precision), case.feeds()
    return _loaded(lambda: runner(feeds), "openvino", model_or_path, precision)


def build_openvino_fp32(case):
    path = fp32_onnx(case)
    return _ov_runner(str(path), case, "f32"), _file_bytes(path), "ONNX read directly"


def build_openvino_bf16(case):
    _need("openvino", "openvino")
    import openvino as ov

    if "bf16" not in " ".join(ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")).lower():
        raise Skip("this CPU has no bf16 support in OpenVINO")
    path = fp32_onnx(case)
    return _ov_runner(str(path), case, "bf16"), _file_bytes(path), "INFERENCE_PRECISION_HINT=bf16"


def build_openvino_nncf_int8(case):
    ov = _need("openvino", "openvino")
    nncf = _need("nncf", "nncf")
    xml = case.workdir / f"nncf_{case.tower}.xml"
    if not xml.exists():
        model = ov.Core().read_model(str(fp32_onnx(case)))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            quantized = nncf.quantize(model, nncf.Dataset(calibration_feeds(case)), model_type=nncf.ModelType.TRANSFORMER,
                                      subset_size=case.calib_batches)
        ov.save_model(quantized, str(xml))
    return _ov_runner(str(xml), case, "f32"), _file_bytes(xml, xml.with_suffix(".bin")), \
        f"nncf.quantize(TRANSFORMER preset), {case.calib_batches} random calibration samples"


def vitq_export(case: Case, bits: str = "W8A8", options: dict | None = None) -> Path:
    """vitq's own minmax model of the tower at ``bits``, exported once per case and option set."""
    options = dict(options or {})
    key = ("vitq", bits, tuple(sorted(options.items())))
    if key not in case.cache:
        from .api import quantize
        from .config import QuantConfig
        from .export import export_onnx
        from .export.towers import SIGNATURES

        names = SIGNATURES[case.tower][0]
        calib = [dict(zip(names, case.inputs(4, seed=200 + i))) for i in range(2)]
        cfg = QuantConfig(method="minmax", bits=bits, components=(case.tower,), options=options)
        q = quantize(case.model, cfg, calib=calib, progress=False)
        folder = export_onnx(q, case.workdir / f"vitq_{bits}_{len(case.cache)}", towers=[case.tower])
        case.cache[key] = folder / f"{case.tower}.onnx"
    return case.cache[key]


def build_vitq_w8a8(case):
    """vitq's export on its preferred runtime (the first of VITQ_RUNTIME_ORDER installed)."""
    import importlib.util

    for runtime in VITQ_RUNTIME_ORDER:
        if importlib.util.find_spec(runtime) is not None:
            break
    else:
        raise Skip("neither openvino nor onnxruntime is installed")
    if runtime == "onnxruntime":
        return build_vitq_w8a8_ort(case)
    path = vitq_export(case)
    return _ov_runner(str(path), case, "f32"), _file_bytes(path), "vitq minmax W8A8 QDQ export (signed q/k/v) on OpenVINO"


def build_vitq_w8a8_asymattn(case):
    """The same with asymmetric q, k, v (option symmetric_attention=false; the default before
    2026-12-04): OpenVINO then runs attention in f32."""
    _need("openvino", "openvino")
    path = vitq_export(case, options={"symmetric_attention": False})
    return _ov_runner(str(path), case, "f32"), _file_bytes(path), \
        "vitq minmax W8A8, option symmetric_attention=false (asymmetric q/k/v), on OpenVINO"


def _build_vitq_low_bit(case, bits: str):
    """vitq minmax at ``bits`` on OpenVINO: 4-bit weight codes stored as int8 (the graph's 4-bit
    storage runs on float kernels in both runtimes here; see docs/deployment.md)."""
    _need("openvino", "openvino")
    path = vitq_export(case, bits=bits)
    return _ov_runner(str(path), case, "f32"), _file_bytes(path), f"vitq minmax {bits} QDQ export on OpenVINO"


def build_vitq_w4a8(case):
    return _build_vitq_low_bit(case, "W4A8")


def build_vitq_w4a4(case):
    return _build_vitq_low_bit(case, "W4A4")


def build_vitq_w8a8_ort(case):
    _need("onnxruntime", "onnxruntime")
    path = vitq_export(case)
    return _ort_runner(path, case), _file_bytes(path), "vitq minmax W8A8 QDQ export on ONNX Runtime"


def _saved(case: Case) -> torch.nn.Module:
    if case.quantized is None:
        raise Skip("needs a saved vitq folder as --model")
    return case.quantized


def _describe_saved(q) -> str:
    info = q.vitq_info
    return f"your model ({info.get('method')} {info.get('config', {}).get('bits', '')})"


def saved_export(case: Case) -> Path:
    """The user's own quantized model, exported as it is (no re-calibration), once per case."""
    q = _saved(case)
    if "saved" not in case.cache:
        from .export import export_onnx

        case.cache["saved"] = export_onnx(q, case.workdir / "saved", towers=[case.tower]) / f"{case.tower}.onnx"
    return case.cache["saved"]


def build_vitq_saved(case):
    import importlib.util

    q = _saved(case)
    if importlib.util.find_spec("openvino") is None:
        return build_vitq_saved_ort(case)
    path = saved_export(case)
    return _ov_runner(str(path), case, "f32"), _file_bytes(path), f"{_describe_saved(q)}, its QDQ export on OpenVINO"


def build_vitq_saved_ort(case):
    q = _saved(case)
    _need("onnxruntime", "onnxruntime")
    path = saved_export(case)
    return _ort_runner(path, case), _file_bytes(path), f"{_describe_saved(q)}, its QDQ export on ONNX Runtime"


def build_vitq_saved_torch(case):
    q = _saved(case)
    module = _torch_tower(q, case.tower)
    return _torch_runner(module, case), _state_bytes(module), f"{_describe_saved(q)}, simulated (fake-quant) in PyTorch"


BUILDERS: dict[str, Callable] = {name: globals()["build_" + name.replace("-", "_")] for name in RUNTIMES}


# -- measuring ----------------------------------------------------------------------------------
def _rss_kib(field_name: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def resident_after_load(loaded: tuple, feeds: dict, workdir: Path) -> float | None:
    """Resident memory (MB) that loading a graph file and running it once adds to a fresh process
    (RSS after the first call minus RSS after importing the runtime): what a deployment pays, without
    the quantizing and exporting that the benchmark process itself did. None, with a warning that
    says why, when the child fails."""
    import os
    import subprocess
    import sys

    import numpy as np

    runtime, path, precision = loaded
    npz = workdir / "resident_feeds.npz"
    np.savez(npz, **feeds)
    code = "import sys; from vitq.bench import _resident_child; _resident_child(*sys.argv[1:])"
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}
    done = subprocess.run([sys.executable, "-c", code, runtime, path, str(npz), precision], capture_output=True, text=True,
                          timeout=900, env=env)
    try:
        return float(done.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        why = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1][:200]
        warnings.warn(f"resident memory of {Path(path).name} on {runtime} not measured: {why}")
        return None


def _resident_child(runtime: str, path: str, npz: str, precision: str) -> None:
    import importlib

    import numpy as np

    from .export.runtime import make_runner

    feeds = dict(np.load(npz))
    importlib.import_module(runtime)  # the runtime's own import is not part of the model's cost
    base = _rss_kib("VmRSS")
    make_runner(path, runtime, **({"precision": precision} if precision else {}))(feeds)
    print(round((_rss_kib("VmRSS") - base) / 1024, 1))


def time_runner(run: Callable, warmup: int, repeats: int) -> list[float]:
    for _ in range(warmup):
        run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return times


def measure(case: Case, runtime: str, warmup: int = 1, repeats: int = 3) -> dict:
    row = {"runtime": runtime, "tower": case.tower, "batch_size": case.batch_size}
    gc.collect()
    peak_ok = _reset_peak()
    before = _rss_kib("VmRSS")
    try:
        if case.model is None and runtime not in SAVED:
            raise Skip("the saved folder does not say which float model it came from")
        run, size, note = BUILDERS[runtime](case)
        times = time_runner(run, warmup, repeats)
    except Skip as why:
        return {**row, "skipped": str(why)}
    except Exception as err:  # a runtime that fails here is reported, the others still run
        return {**row, "skipped": f"failed: {type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else ''}"}
    peak = _rss_kib("VmHWM")
    median = statistics.median(times)
    row.update({
        "ms_per_image": 1000 * median / case.batch_size,
        "ms_per_batch": 1000 * median,
        "images_per_s": case.batch_size / median,
        "repeats": repeats,
        "model_bytes": int(size),
        "peak_rss_delta_mb": round((peak - before) / 1024, 1) if peak_ok and peak and before else None,
        "resident_mb": resident_after_load(run.loaded, case.feeds(), case.workdir) if hasattr(run, "loaded") else None,
        "note": note,
    })
    del run
    gc.collect()
    return row


def add_speedups(rows: list[dict]) -> None:
    """Speed-up of each row over PyTorch FP32 of the same tower and batch size."""
    base = {(r["tower"], r["batch_size"]): r["ms_per_image"] for r in rows if r["runtime"] == "torch-fp32" and "ms_per_image" in r}
    for r in rows:
        ref = base.get((r["tower"], r["batch_size"]))
        if ref and "ms_per_image" in r:
            r["speedup_vs_torch_fp32"] = ref / r["ms_per_image"]


def run_benchmark(model_spec: str, towers=TOWERS, batch_sizes=(1, 32), runtimes=RUNTIMES, repeats: int = 3, warmup: int = 1,
                  seq_len: int = 77, progress: bool = True, workdir: str | Path | None = None) -> list[dict]:
    from tqdm.auto import tqdm

    from .export.towers import towers_of

    model = build_model(model_spec)
    quantized = None
    if getattr(model, "vitq_info", None) is not None:  # a saved quantized folder: bench it beside its float source
        from .saving import float_source

        quantized, model = model, float_source(model)
    shape_of = model if model is not None else quantized
    towers = [t for t in towers if t in towers_of(shape_of)]
    cfg = getattr(shape_of.config, "text_config", shape_of.config)
    seq = min(seq_len, int(getattr(cfg, "max_position_embeddings", seq_len)))
    rows = []
    jobs = [(t, b, r) for t in towers for b in batch_sizes for r in runtimes]
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        cases = {}
        bar = tqdm(jobs, desc=f"bench {model_spec}", disable=not progress)
        for tower, batch, runtime in bar:
            bar.set_postfix_str(f"{tower} b{batch} {runtime}", refresh=False)
            base = cases.setdefault(tower, Case(model, tower, batch, seq, Path(tmp), quantized=quantized))
            case = Case(model, tower, batch, seq, Path(tmp), cache=base.cache, quantized=quantized)
            row = measure(case, runtime, warmup, repeats)
            row.update(model=model_spec, threads=torch.get_num_threads(), seq_len=seq if tower == "text" else None)
            rows.append(row)
    add_speedups(rows)
    return rows


def format_table(rows: list[dict]) -> str:
    head = ("model", "tower", "batch", "runtime", "ms/img", "img/s", "speed-up", "peak RSS Δ MB", "resident MB", "size MB", "note")
    lines = [head]
    mb = lambda v: "-" if v is None else f"{v:.0f}"  # noqa: E731
    for r in rows:
        if "skipped" in r:
            lines.append((r.get("model", ""), r["tower"], str(r["batch_size"]), r["runtime"], "-", "-", "-", "-", "-", "-", "skipped: " + r["skipped"]))
            continue
        sp = r.get("speedup_vs_torch_fp32")
        lines.append((r.get("model", ""), r["tower"], str(r["batch_size"]), r["runtime"], f"{r['ms_per_image']:.2f}", f"{r['images_per_s']:.1f}",
                      f"{sp:.2f}x" if sp else "-", mb(r["peak_rss_delta_mb"]), mb(r.get("resident_mb")),
                      f"{r['model_bytes'] / 1e6:.1f}", r.get("note", "")))
    widths = [max(len(l[i]) for l in lines) for i in range(len(head))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(l, widths)).rstrip() for l in lines)
