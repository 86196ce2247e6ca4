"""`vitq report`: the per-layer error measures, the worst layer first, the files it writes, its
errors, and the HTML as a real browser renders it."""

import json
import math
import shutil
import subprocess

import pytest
import torch
from PIL import Image

import vitq
from vitq.cli import main
from vitq.errors import ConfigError, DataError
from vitq.report import build_report
from vitq.report.analysis import ErrorSum

WORST = "vision_model.encoder.layers.1.mlp.fc2"


def run_cli(*args):
    return main([str(a) for a in args])


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """24 small images in three class folders: smooth colour gradients with noise (real photographs
    are not needed to rank layers by their error)."""
    root = tmp_path_factory.mktemp("report-images")
    g = torch.Generator().manual_seed(0)
    for c, name in enumerate(("cat", "dog", "ship")):
        (root / name).mkdir()
        for i in range(8):
            ramp = torch.linspace(0, 1, 32).view(1, 32, 1) * torch.linspace(0, 1, 32).view(1, 1, 32)
            base = torch.stack([ramp[0] * (c == k) + 0.3 for k in range(3)])
            px = (base + 0.2 * torch.rand(3, 32, 32, generator=g)).clamp(0, 1)
            Image.fromarray((px.permute(1, 2, 0) * 255).to(torch.uint8).numpy()).save(root / name / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def quantized(clip_folder, images, tmp_path_factory):
    """The tiny CLIP at W8A8 with one layer at W2A2: the report must put that layer first."""
    out = tmp_path_factory.mktemp("q") / "w8a8-one-w2"
    assert run_cli("quantize", "--model", clip_folder, "--method", "minmax", "--bits", "W8A8", "--calib", images,
                   "--num-calib", 16, "--layer-bits", f"{WORST}=W2A2", "--out", out, "--quiet") == 0
    return out


def test_error_sum_is_the_sqnr_and_cosine_by_definition():
    torch.manual_seed(0)
    ref = torch.randn(4, 10, 8)
    noise = 0.1 * torch.randn(4, 10, 8)
    e = ErrorSum()
    e.add(ref[:2], ref[:2] + noise[:2])
    e.add(ref[2:], ref[2:] + noise[2:])  # sums over batches, as over one
    expected = 10 * math.log10(float(ref.pow(2).sum() / noise.pow(2).sum()))
    assert e.sqnr_db == pytest.approx(expected, rel=1e-5)
    cos = torch.nn.functional.cosine_similarity(ref.flatten(1), (ref + noise).flatten(1), dim=1).mean()
    assert e.cosine == pytest.approx(float(cos), rel=1e-6)
    same = ErrorSum()
    same.add(ref, ref.clone())
    assert same.sqnr_db == math.inf and same.cosine == pytest.approx(1.0)


def test_report_writes_tables_figures_and_the_worst_layer_first(quantized, images, tmp_path, capsys):
    bench = tmp_path / "bench.json"
    bench.write_text(json.dumps([{"model": "m", "tower": "image", "batch_size": 1, "runtime": "torch-fp32", "ms_per_image": 2.0,
                                  "speedup_vs_torch_fp32": 1.0}, {"model": "m", "tower": "image", "batch_size": 1,
                                  "runtime": "vitq-saved", "ms_per_image": 1.0, "speedup_vs_torch_fp32": 2.0}]))
    result = tmp_path / "eval.json"
    assert run_cli("eval", "--model", quantized, "--task", "zero-shot", "--data", images, "--json", result, "--quiet") == 0
    capsys.readouterr()
    out = tmp_path / "report"
    assert run_cli("report", quantized, result, bench, "--out", out, "--top", 5, "--quiet") == 0  # images: the recorded calibration set
    assert "1 model analysed" in capsys.readouterr().out
    data = json.loads((out / "report.json").read_text(), parse_constant=lambda c: pytest.fail(f"non-standard JSON constant {c}"))
    layers = data["models"][0]["layers"]
    assert layers[0]["layer"] == WORST, [r["layer"] for r in layers[:3]]
    own = [r["sqnr_db"] for r in layers if r["sqnr_db"] != "inf"]
    assert own == sorted(own)  # worst first
    # 2 bits against 8: about 6 dB a bit, so the W2A2 layer sits far below every 8-bit one.
    assert layers[0]["sqnr_db"] < min(r["sqnr_db"] for r in layers[1:] if r["sqnr_db"] != "inf") - 10
    assert all(r["accumulated_against"] == "float model" for r in layers if r["layer"].endswith(("fc1", "fc2", "q_proj")))
    md = (out / "report.md").read_text()
    assert "± " in md and "vitq-saved" in md and WORST in md
    layer_table = md.split("Per-layer error")[1].split("\n\n")[1]
    assert len(layer_table.splitlines()) == 2 + 5  # header, rule, the top 5
    names = {p.name for p in (out / "figures").iterdir()}
    for part in ("weights", "post-layernorm-ranges", "post-softmax", "post-gelu", "output-shift", "similarity"):
        assert any(part in n for n in names), (part, names)
    for p in (out / "figures").iterdir():
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"figures/{p.name}" in md
    html = (out / "report.html").read_text()
    assert html.count("<img") == len(names) and 'src="data:image/png;base64,' in html and "http" not in html
    assert html.count("<tr>") > len(layers)  # the HTML has every layer
    assert (out / "report.md").stat().st_mode & 0o777 == 0o644


def test_report_errors_say_what_to_do_and_leave_nothing(quantized, tmp_path):
    bad = tmp_path / "other.json"
    bad.write_text(json.dumps({"hello": 1}))
    with pytest.raises(DataError, match="not a result vitq knows"):
        build_report([bad], tmp_path / "r1", progress=False)
    with pytest.raises(DataError, match="not one written by `vitq quantize`"):
        build_report([tmp_path], tmp_path / "r2", progress=False)
    broken = tmp_path / "broken.json"
    broken.write_text("{")
    with pytest.raises(DataError, match="not readable JSON"):
        build_report([broken], tmp_path / "r3", progress=False)
    existing = tmp_path / "r4"
    existing.mkdir()
    (existing / "keep.txt").write_text("mine")
    with pytest.raises(ConfigError, match="already exists"):
        build_report([quantized], existing, progress=False)
    assert [p.name for p in existing.iterdir()] == ["keep.txt"]
    model = vitq.load(quantized)
    model.vitq_info.pop("calibration_data")  # as a model quantized through the Python API, which records no folder
    no_record = vitq.save(model, tmp_path / "api-saved")
    with pytest.raises(ConfigError, match="pass --data"):
        build_report([no_record], tmp_path / "r5", progress=False)
    assert not any(p.name.startswith((".r5", "r5")) for p in tmp_path.iterdir())


def _chromium():
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


CHECK = """<script>
window.addEventListener("load", () => {
  const imgs = [...document.images];
  const broken = imgs.filter(i => !(i.complete && i.naturalWidth > 0)).length;
  const empty = [...document.querySelectorAll("table")].filter(t => t.querySelectorAll("tbody tr").length === 0).length;
  const tables = document.querySelectorAll("table").length;
  document.title = `CHECK images=${imgs.length} broken=${broken} tables=${tables} empty=${empty}`;
});
</script>"""


@pytest.mark.launches
def test_report_html_renders_in_headless_chromium(quantized, tmp_path):
    browser = _chromium()
    if browser is None:
        pytest.skip("Chromium is not installed (Debian: apt-get install chromium); .ci/run installs it")
    out = tmp_path / "report"
    build_report([quantized], out, progress=False)
    # The check runs in a copy: the report itself carries no script.
    page = tmp_path / "checked.html"
    page.write_text((out / "report.html").read_text().replace("</body>", CHECK + "</body>"))
    flags = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--virtual-time-budget=10000"]
    dom = subprocess.run([*flags, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=180).stdout
    title = dom.split("<title>")[1].split("</title>")[0]
    counts = dict(kv.split("=") for kv in title.removeprefix("CHECK ").split())
    assert int(counts["images"]) == len(list((out / "figures").iterdir())) >= 6
    assert counts["broken"] == "0" and counts["empty"] == "0" and int(counts["tables"]) >= 2, title
    shot = tmp_path / "report.png"
    subprocess.run([*flags, f"--screenshot={shot}", "--window-size=1280,2400", (out / "report.html").as_uri()],
                   capture_output=True, timeout=180)
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000
