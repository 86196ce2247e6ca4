"""`vitq bench` runs end to end on a tiny model and writes JSON rows (runtimes not installed are skipped)."""

from __future__ import annotations

import json

import pytest

from vitq.cli import main
from vitq.bench import RUNTIMES

pytest.importorskip("onnxruntime")

FAST = ["torch-fp32", "ort-fp32", "ort-static-int8", "vitq-w8a8", "vitq-w4a8"]


def test_bench_writes_rows(tmp_path, capsys):
    out = tmp_path / "bench.json"
    code = main(["bench", "--model", "tiny-clip", "--repeats", "1", "--warmup", "0", "--batch-size", "2",
                 "--runtimes", ",".join(FAST), "--towers", "image", "--json", str(out), "--quiet"])
    assert code == 0
    rows = json.loads(out.read_text())
    assert [(r["tower"], r["runtime"]) for r in rows] == [("image", r) for r in FAST]
    for r in rows:
        assert r["batch_size"] == 2
        if "skipped" not in r:
            assert r["ms_per_image"] > 0 and r["model_bytes"] > 0
            # resident memory: measured in a fresh process for the rows that load a graph file
            assert (r["resident_mb"] is None) if r["runtime"].startswith("torch") else r["resident_mb"] > 0, r
    ran = {r["runtime"] for r in rows if "skipped" not in r}
    assert {"torch-fp32", "ort-fp32", "vitq-w8a8"} <= ran  # vitq runs on OpenVINO, or on ONNX Runtime without it
    assert rows[0]["speedup_vs_torch_fp32"] == pytest.approx(1.0)
    table = capsys.readouterr().out
    assert "vitq-w8a8" in table and "ms/img" in table and "resident MB" in table
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # written atomically


def test_bench_rejects_unknown_runtime(capsys):
    assert main(["bench", "--model", "tiny-clip", "--runtimes", "torch-fp32,tensorrt"]) == 2
    err = capsys.readouterr().err
    assert "unknown runtime: tensorrt" in err and "torch-fp32" in err


def test_runtime_names_cover_the_issue():
    assert {"torch-fp32", "torch-bf16", "torch-dynamic-int8", "ort-fp32", "ort-dynamic-int8", "ort-static-int8",
            "openvino-fp32", "openvino-bf16", "openvino-nncf-int8", "vitq-w8a8"} <= set(RUNTIMES)


def test_bench_times_a_saved_folder_as_it_is_next_to_its_float_source(tmp_path):
    """The user's own W4A8 model is exported as saved (not re-quantized), and torch-fp32 is the
    float model it came from, not the fake-quant one."""
    import torch

    import vitq

    model = vitq.load_model("zoo:deit-tiny")
    q = vitq.quantize(model, vitq.QuantConfig(method="minmax", bits="W4A8"), calib=[torch.randn(4, 3, 64, 64)], progress=False)
    vitq.save(q, tmp_path / "q")
    out = tmp_path / "bench.json"
    assert main(["bench", "--model", str(tmp_path / "q"), "--repeats", "1", "--warmup", "0", "--batch-size", "2",
                 "--runtimes", "torch-fp32,vitq-saved-ort,vitq-saved-torch", "--towers", "image", "--json", str(out), "--quiet"]) == 0
    rows = {r["runtime"]: r for r in json.loads(out.read_text())}
    assert "skipped" not in rows["torch-fp32"] and "simulated" not in rows["torch-fp32"].get("note", "")
    assert rows["vitq-saved-ort"]["note"].startswith("your model (minmax W4A8)")
    assert rows["torch-fp32"]["model_bytes"] > rows["vitq-saved-ort"]["model_bytes"]  # int8 codes against float32
    from vitq.bench import default_runtimes

    assert "vitq-saved" in default_runtimes(str(tmp_path / "q")) and "vitq-saved" not in default_runtimes("tiny-clip")
