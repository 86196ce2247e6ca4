"""Reading what the report is given: result JSON files and saved model folders.

Understood JSON: a ``vitq eval --json`` result, a ``vitq quantize --json`` summary, the rows of
``vitq bench --json``, and a benchmark script's ``--json`` (``{"rows": [...]}`` with
``<dataset>_top1`` / ``<dataset>_n`` columns).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from ..config import parse_bits
from ..errors import ConfigError, DataError
from ..saving import is_saved_folder

PRIMARY_METRICS = ("top1", "recall@1", "image_to_text_recall@1", "cosine_mean", "psnr")


@dataclass
class Inputs:
    accuracy: list[dict] = field(default_factory=list)
    speed: list[dict] = field(default_factory=list)
    runs: list[dict] = field(default_factory=list)
    models: list[Path] = field(default_factory=list)


def standard_error(p: float, n: int) -> float | None:
    """Of a proportion ``p`` measured on ``n`` examples."""
    if not n or not 0.0 <= p <= 1.0:
        return None
    return math.sqrt(p * (1.0 - p) / n)


def _w_bits(bits: str) -> int | None:
    if bits in ("-", "FP32", "fp32", None):
        return 32
    try:
        return parse_bits(bits).w
    except ConfigError:  # a label we cannot read as a spec: no point on the bits axis
        return None


def method_and_bits(model_spec: str) -> tuple[str, str]:
    """What a result's model is: a saved vitq folder says its method and bits; anything else is
    the full-precision model."""
    if model_spec and is_saved_folder(model_spec):
        info = json.loads((Path(model_spec) / "vitq_config.json").read_text())["info"]
        return info["method"], info["config"]["bits"]
    return "full precision", "FP32"


def _eval_rows(result: dict, source: str) -> list[dict]:
    metrics = result.get("metrics") or {}
    metric = next((m for m in PRIMARY_METRICS if isinstance(metrics.get(m), (int, float))), None)
    if metric is None:
        return []
    method, bits = method_and_bits(result.get("model", ""))
    size = ((result.get("cost") or {}).get("size") or {}).get("bytes")
    n = int(result.get("num_examples") or 0)
    value = float(metrics[metric])
    return [{"model": result.get("model"), "method": method, "bits": bits, "w_bits": _w_bits(bits),
             "task": result.get("task"), "data": result.get("data"), "metric": metric, "value": value, "n": n,
             "se": standard_error(value, n) if metric in ("top1", "recall@1", "image_to_text_recall@1") else None,
             "size_mb": size / 1e6 if size else None, "source": source}]


def _benchmark_rows(payload: dict, source: str) -> list[dict]:
    rows = []
    for r in payload.get("rows", []):
        for key, value in r.items():
            if not key.endswith("_top1") or not isinstance(value, (int, float)):
                continue
            data = key[: -len("_top1")]
            n = int(r.get(f"{data}_n") or 0)
            bits = str(r.get("bits", "-"))
            method = str(r.get("row") or r.get("method") or "?")
            rows.append({"model": r.get("model"), "method": method, "bits": "FP32" if bits == "-" else bits,
                         "w_bits": _w_bits(bits), "task": payload.get("benchmark"), "data": data, "metric": "top1",
                         "value": float(value), "n": n, "se": standard_error(float(value), n),
                         "size_mb": r.get("size_mb"), "source": source})
    return rows


def read_inputs(paths) -> Inputs:
    """Sort ``paths`` into accuracy rows, speed rows, quantization runs and model folders."""
    out = Inputs()
    if not paths:
        raise ConfigError("nothing to report on", hint="give result JSON files (vitq eval/quantize/bench --json) or saved model folders")
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            if not is_saved_folder(path):
                raise DataError(f"{path} is a folder but not one written by `vitq quantize`",
                                hint="give a saved model folder, or a result JSON file")
            out.models.append(path)
            continue
        if not path.is_file():
            raise DataError(f"{path} does not exist", hint="give result JSON files or saved model folders")
        try:
            payload = json.loads(path.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as err:
            raise DataError(f"{path} is not readable JSON: {err}", hint="give a file written by a vitq command with --json") from None
        source = path.name
        if isinstance(payload, list) and payload and all(isinstance(r, dict) and "runtime" in r for r in payload):
            out.speed.extend({**r, "source": source} for r in payload)
        elif isinstance(payload, dict) and "metrics" in payload and "task" in payload:
            rows = _eval_rows(payload, source)
            out.accuracy.extend(rows)
            if not rows and payload.get("task") == "cost":
                out.runs.append({"model": payload.get("model"), "size_mb": (payload["cost"]["size"]["bytes"] / 1e6), "source": source})
        elif isinstance(payload, dict) and payload.get("command") == "quantize":
            out.runs.append({"model": payload.get("model"), "method": payload.get("method"), "bits": payload.get("bits"),
                             "components": ",".join(payload.get("components") or []),
                             "calibration_s": payload.get("calibration_seconds"), "out": payload.get("out"), "source": source})
        elif isinstance(payload, dict) and isinstance(payload.get("rows"), list):
            out.accuracy.extend(_benchmark_rows(payload, source))
        else:
            raise DataError(f"{path} is JSON, but not a result vitq knows",
                            hint="give the output of vitq eval / quantize / bench --json, or of a benchmark script's --json")
    return out
