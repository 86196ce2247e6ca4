"""``vitq report``: what a quantized model lost, and where, as Markdown and self-contained HTML.

Result JSON files give the accuracy, size and speed tables (and the accuracy-against-bits and
-size plot); each saved model folder is run on a few real images next to the float model it came
from, for its per-layer error table (worst layers first) and the papers' figures.
"""

from __future__ import annotations

import csv
import importlib.util
import io
import re
from pathlib import Path

import torch

from ..errors import ConfigError, install_hint
from ..io_utils import atomic_folder, check_output_dir, write_json
from . import figures
from .analysis import Analysis, analyze
from .render import fmt, to_html, to_markdown
from .results import Inputs, read_inputs

def _slug(path: Path, index: int) -> str:
    return f"m{index}-" + re.sub(r"[^A-Za-z0-9]+", "-", path.resolve().name).strip("-")[:40]


def _accuracy_section(inputs: Inputs, folder: Path) -> tuple[str, list] | None:
    if not inputs.accuracy:
        return None
    rows = [[r["model"], r["method"], r["bits"], r["data"] or "-", r["metric"],
             f"{100 * r['value']:.2f}" + (f" ± {100 * r['se']:.2f}" if r["se"] is not None else ""),
             r["n"] or "-", fmt(r["size_mb"]), r["source"]] for r in inputs.accuracy]
    blocks = [("p", "Accuracy in %, ± one standard error (√(p(1−p)/n)); differences within about two standard errors are noise."),
              ("table", (["model", "method", "bits", "data", "metric", "value (%)", "n", "size (MB)", "from"], rows))]
    plotted = [r for r in inputs.accuracy if r["w_bits"] is not None]
    if len({(r["method"], r["w_bits"]) for r in plotted}) >= 2:
        blocks.append(("img", figures.accuracy_against(plotted, folder / "figures" / "accuracy-vs-bits-and-size.png",
                                                       "/".join(sorted({r["metric"] for r in plotted})) + " (%)")))
    return "Accuracy and size", blocks


def _speed_section(inputs: Inputs) -> tuple[str, list] | None:
    if not inputs.speed:
        return None
    rows = [[r.get("model"), r.get("tower"), r.get("batch_size"), r.get("runtime"), fmt(r.get("ms_per_image")),
             fmt(r.get("speedup_vs_torch_fp32")), fmt(r.get("size_mb"), 1), fmt(r.get("peak_rss_delta_mb"), 0),
             fmt(r.get("resident_mb"), 0), r.get("note") or ""]
            for r in inputs.speed]
    return "Speed", [("p", "Median ms per image (or sequence), speed-up over PyTorch FP32 measured in the same run."),
                     ("table", (["model", "tower", "batch", "runtime", "ms/img", "speed-up", "size (MB)", "peak RSS Δ (MB)", "resident (MB)", "note"], rows))]


def _runs_section(inputs: Inputs) -> tuple[str, list] | None:
    if not inputs.runs:
        return None
    rows = [[r.get("model"), r.get("method", "-"), r.get("bits", "-"), r.get("components", "-"), fmt(r.get("calibration_s"), 1),
             fmt(r.get("size_mb")), r["source"]] for r in inputs.runs]
    return "Quantization runs", [("table", (["model", "method", "bits", "components", "calibration (s)", "size (MB)", "from"], rows))]


def _output_rows(a: Analysis) -> list[list]:
    rows = []
    for comp, d in a.outputs.items():
        base = d.get("reference", d["fp"])
        cos = torch.nn.functional.cosine_similarity(base, d["quantized"], dim=-1)
        agree = "-"
        if comp == "image" and "text" not in a.outputs:  # a classifier: do the decisions agree?
            agree = f"{100 * float((base.argmax(-1) == d['quantized'].argmax(-1)).float().mean()):.1f}%"
        rows.append([comp, len(base), f"{float(cos.mean()):.4f}", f"{float(cos.min()):.4f}", agree,
                     "float model" if "reference" in d else "points off"])
    return rows


def _layer_rows(layers: list[dict], limit: int | None = None) -> list[list]:
    shown = layers if limit is None else layers[:limit]
    return [[i + 1, r["layer"], r["component"], r["bits"], r["quantizer"],
             f"{fmt(r['scale_min'], 4)} … {fmt(r['scale_max'], 4)}" if r["scale_min"] is not None else "-",
             fmt(r["sqnr_db"], 1), fmt(r["cosine"], 4), fmt(r["accumulated_sqnr_db"], 1), fmt(r["accumulated_cosine"], 4),
             r["accumulated_against"]] for i, r in enumerate(shown)]


LAYER_HEADERS = ["#", "layer", "tower", "bits", "quantizer", "scale range", "own SQNR (dB)", "own cosine",
                 "accumulated SQNR (dB)", "accumulated cosine", "accumulated vs"]


def _model_section(path: Path, index: int, folder: Path, opts: dict) -> tuple[tuple[str, list], dict]:
    """Analyse one saved model; returns its section and its data for report.json."""
    from ..data.calibration import calibration_batches
    from ..data.preprocess import image_transform
    from ..eval.fidelity import MATRIX_SIZE, save_similarity_plot
    from ..models.loading import load_model
    from ..models.tokenizers import resolve_tokenizer
    from ..saving import float_source, load

    model = load(path)
    info = model.vitq_info or {}
    reference = load_model(opts["reference"]) if opts.get("reference") else float_source(model)
    data = opts.get("data") or info.get("calibration_data")
    if not data:
        raise ConfigError(f"no images to analyse {path} on: it does not record its calibration images",
                          hint="pass --data with a folder or .zip of images (a few dozen are enough)")
    components = list(info.get("components") or [])
    tokenizer = resolve_tokenizer(model) if "text" in components else None
    batches = calibration_batches(data, opts["num_images"], opts["batch_size"], image_transform(model), tokenizer=tokenizer, seed=opts["seed"])
    a = analyze(model, batches, reference=reference, components=components, tokenizer=tokenizer, seed=opts["seed"], progress=opts["progress"])
    slug = _slug(path, index)
    figs = folder / "figures"
    blocks: list = [("p", f"`{path}`: {info.get('method')} at {(info.get('config') or {}).get('bits')} "
                          f"({', '.join(a.components)}), analysed on {a.num_images} images from `{data}`. "
                          + ("Compared with the float model it was quantized from." if reference is not None else
                             "The float model it came from is not available here, so full precision is the same model with every point "
                             "off: a saved model's weights are already on their grid, so weight error is not part of that comparison."))]
    blocks += [("table", (["output", "examples", "mean cosine", "worst cosine", "top-1 agreement", "against"], _output_rows(a)))]
    top = opts["top"]
    blocks += [("p", f"Per-layer error, worst first ({'all ' + str(len(a.layers)) if len(a.layers) <= top else f'the worst {top} of {len(a.layers)} here; all in report.html and layers-{slug}.csv'}). "
                     "*Own*: the layer with only its own points on, on the full-precision input (for a saved model the weights are "
                     "already quantized, so this is its activation and attention quantizers' share). *Accumulated*: its output in "
                     "the quantized model against the float model's same layer (or the points-off pass where the float model has "
                     "no such layer)."),
               ("table", (LAYER_HEADERS, _layer_rows(a.layers, top)))]
    if a.weights:
        blocks.append(("img", figures.weight_distributions(a.weights, figs / f"{slug}-weights.png")))
    if a.post_ln:
        blocks.append(("img", figures.post_ln_ranges(a.post_ln, figs / f"{slug}-post-layernorm-ranges.png")))
    if a.softmax:
        blocks.append(("img", figures.softmax_values(a.softmax, figs / f"{slug}-post-softmax.png")))
    if a.gelu:
        blocks.append(("img", figures.gelu_values(a.gelu, figs / f"{slug}-post-gelu.png")))
    shift = {c: {"fp": d.get("reference", d["fp"]), "quantized": d["quantized"]} for c, d in a.outputs.items()}
    if shift:
        blocks.append(("img", figures.embedding_shift(shift, figs / f"{slug}-output-shift.png")))
    if "image" in a.outputs and "text" in a.outputs and a.texts:
        n = min(MATRIX_SIZE, len(a.texts), len(a.outputs["image"]["quantized"]))
        norm = lambda t: torch.nn.functional.normalize(t[:n], dim=-1)  # noqa: E731
        img, txt = a.outputs["image"], a.outputs["text"]
        sim_q = norm(img["quantized"]) @ norm(txt["quantized"]).T
        sim_r = norm(img.get("reference", img["fp"])) @ norm(txt.get("reference", txt["fp"])).T
        blocks.append(("p", "Image-text cosine similarity of the first images and their texts, full precision next to quantized."))
        blocks.append(("img", save_similarity_plot(sim_q, sim_r, [t[:28] for t in a.texts[:n]], figs / f"{slug}-similarity.png")))
    layers = [{k: ("inf" if isinstance(v, float) and v == float("inf") else v) for k, v in r.items()} for r in a.layers]  # valid JSON
    record = {"model": str(path), "method": info.get("method"), "bits": (info.get("config") or {}).get("bits"),
              "data": str(data), "num_images": a.num_images, "reference": reference is not None, "layers": layers, "_rows": a.layers}
    return (f"Model {path.name}", blocks), record


def _csv(layers: list[dict]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf)
    keys = ["layer", "component", "bits", "quantizer", "scale_min", "scale_max", "sqnr_db", "cosine",
            "accumulated_sqnr_db", "accumulated_cosine", "accumulated_against"]
    writer.writerow(keys)
    for r in layers:
        writer.writerow([r[k] for k in keys])
    return buf.getvalue()


def build_report(paths, out, data=None, reference=None, num_images: int = 32, batch_size: int = 8, seed: int = 0,
                 top: int = 25, progress: bool = True, overwrite: bool = False, title: str = "vitq report") -> dict:
    """Write ``report.md``, ``report.html``, ``report.json`` and ``figures/`` to the folder ``out``
    (replaced in one step at the end: an interrupted report leaves no half-written folder)."""
    if num_images < 1 or batch_size < 1:
        raise ConfigError("--num-images and --batch-size must be at least 1")
    if importlib.util.find_spec("matplotlib") is None:
        raise ConfigError("vitq report draws its figures with matplotlib, which is not installed", hint=install_hint("eval", "matplotlib"))
    out = check_output_dir(out, overwrite, what="the report")
    inputs = read_inputs(paths)
    opts = {"data": data, "reference": reference, "num_images": num_images, "batch_size": batch_size, "seed": seed,
            "top": top, "progress": progress}
    with atomic_folder(out) as tmp:
        (tmp / "figures").mkdir()
        common = [s for s in (_accuracy_section(inputs, tmp), _speed_section(inputs), _runs_section(inputs)) if s]
        md_models, html_models, records = [], [], []
        for i, path in enumerate(inputs.models, 1):
            md_section, record = _model_section(path, i, tmp, opts)
            every_layer = _layer_rows(record.pop("_rows"))
            # The HTML shows every layer; the figures are the same files.
            html_section = (md_section[0], [("table", (LAYER_HEADERS, every_layer))
                                            if kind == "table" and body[0] == LAYER_HEADERS else (kind, body)
                                            for kind, body in md_section[1]])
            md_models.append(md_section)
            html_models.append(html_section)
            records.append(record)
            (tmp / f"layers-{_slug(path, i)}.csv").write_text(_csv(record["layers"]), encoding="utf-8")
        (tmp / "report.md").write_text(to_markdown(title, common + md_models, tmp), encoding="utf-8")
        (tmp / "report.html").write_text(to_html(title, common + html_models), encoding="utf-8")
        write_json(tmp / "report.json", {"accuracy": inputs.accuracy, "speed": inputs.speed, "runs": inputs.runs, "models": records})
        figure_names = sorted(p.name for p in (tmp / "figures").iterdir())
    return {"out": str(out), "figures": figure_names, "models": len(records), "accuracy_rows": len(inputs.accuracy),
            "speed_rows": len(inputs.speed)}


__all__ = ["build_report", "analyze", "read_inputs"]
