"""What a new user meets first: a text tower calibrates from a flat image folder (on the user's
sentences, --calib-text, or on vitq's built-in ones, and the command says which), and --quiet
means quiet."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from vitq.cli import main
from vitq.data import has_data
from vitq.data.calibration import calibration_batches
from vitq.data.preprocess import image_transform
from vitq.data.texts import SENTENCES, read_texts
from vitq.errors import DataError
from vitq.models.loading import load_model
from vitq.models.tokenizers import resolve_tokenizer


@pytest.fixture
def flat_folder(tmp_path):
    rng = np.random.default_rng(0)
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(4):
        Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(folder / f"img{i}.jpg")
    return folder


def _decoded(batches, tokenizer) -> list[str]:
    out = []
    for b in batches:
        out += tokenizer.batch_decode(b["input_ids"], skip_special_tokens=True)
    return [t.strip() for t in out]


def test_a_flat_folder_calibrates_text_on_given_or_built_in_sentences(flat_folder, tmp_path):
    model = load_model("zoo:clip-tiny")
    tok = resolve_tokenizer(model)
    built_in = calibration_batches(flat_folder, 4, 2, image_transform(model), tokenizer=tok)
    assert built_in.text_source == f"{len(SENTENCES)} sentences"
    assert _decoded(built_in, tok) == [tok.batch_decode(tok([s])["input_ids"], skip_special_tokens=True)[0].strip() for s in SENTENCES[:4]]
    mine = tmp_path / "mine.txt"
    mine.write_text("a red bicycle.\n\na cat on a roof.\n")
    given = calibration_batches(flat_folder, 4, 2, image_transform(model), tokenizer=tok, texts=read_texts(mine))
    assert given.text_source == "2 sentences"
    assert _decoded(given, tok) == ["a red bicycle.", "a cat on a roof.", "a red bicycle.", "a cat on a roof."]


def test_read_texts_takes_lines_or_a_caption_column_and_refuses_empty_files(tmp_path):
    csv = tmp_path / "c.csv"
    csv.write_text("image,caption\na.jpg,a dog runs.\nb.jpg, two birds. \n")
    assert read_texts(csv) == ["a dog runs.", "two birds."]
    (tmp_path / "bad.csv").write_text("image,label\na.jpg,3\n")
    with pytest.raises(DataError, match="no caption"):
        read_texts(tmp_path / "bad.csv")
    (tmp_path / "empty.txt").write_text("\n  \n")
    with pytest.raises(DataError, match="no sentences"):
        read_texts(tmp_path / "empty.txt")


def test_quantize_says_where_the_text_tower_was_calibrated(flat_folder, tmp_path, capsys):
    assert main(["quantize", "--model", "zoo:clip-tiny", "--calib", str(flat_folder), "--num-calib", "4", "--out", str(tmp_path / "a"),
                 "--quiet"]) == 0
    assert "text tower on 48 sentences from vitq's built-in sentences" in capsys.readouterr().out
    mine = tmp_path / "mine.txt"
    mine.write_text("a red bicycle.\n")
    assert main(["quantize", "--model", "zoo:clip-tiny", "--calib", str(flat_folder), "--calib-text", str(mine), "--num-calib", "4",
                 "--out", str(tmp_path / "b"), "--quiet"]) == 0
    assert f"text tower on 1 sentence from {mine}" in capsys.readouterr().out
    assert main(["quantize", "--model", "zoo:clip-tiny", "--calib", str(flat_folder), "--calib-text", str(tmp_path / "none.txt"),
                 "--out", str(tmp_path / "c")]) == 2
    assert not (tmp_path / "c").exists()


def test_quiet_silences_the_loading_bar(tmp_path, capfd):
    assert main(["synth", "--model", "zoo:deit-tiny", "--num", "1", "--steps", "1", "--batch-size", "1", "--out", str(tmp_path / "s"),
                 "--quiet"]) == 0
    assert "Loading weights" not in capfd.readouterr().err
    assert main(["synth", "--model", "zoo:deit-tiny", "--num", "1", "--steps", "1", "--batch-size", "1", "--out", str(tmp_path / "t")]) == 0
    assert "Loading weights" in capfd.readouterr().err  # without --quiet the bar shows, so the check above can fail


def _python_blocks(text: str) -> list[str]:
    import re

    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


@pytest.mark.skipif(not (has_data("tiny-imagenet-200", "train-200-per-class.zip") and has_data("cifar10", "test")),
                    reason="needs the real images ($VITQ_DATA)")
def test_readme_python_runs_as_written(tmp_path, monkeypatch):
    from pathlib import Path

    blocks = _python_blocks((Path(__file__).resolve().parents[1] / "README.md").read_text())
    assert blocks, "the README has no Python example"
    monkeypatch.chdir(tmp_path)
    for code in blocks:
        code = code.replace("limit=1000", "limit=100")  # the same call on fewer test images
        scope: dict = {}
        exec(compile(code, "README.md", "exec"), scope)
    assert (tmp_path / "out" / "clip-w4a4").is_dir() and 0 < scope["report"]["metrics"]["top1"] <= 1


def test_calibration_data_takes_any_iterable_with_a_transform(tmp_path):
    import vitq

    rows = [{"img": Image.fromarray(np.full((20, 30, 3), i * 40, dtype=np.uint8)), "caption": f"a grey square number {i}."}
            for i in range(5)]
    model = load_model("zoo:clip-tiny")
    batches = vitq.calibration_data(rows, model, num=4, batch_size=3, transform_fn=lambda r: {"image": r["img"], "text": r["caption"]})
    got = list(batches)
    assert [b["pixel_values"].shape for b in got] == [(3, 3, 64, 64), (1, 3, 64, 64)]
    tok = resolve_tokenizer(model)
    assert _decoded(got, tok)[:2] == ["a grey square number 0.", "a grey square number 1."]
    assert len(list(batches)) == 2  # re-iterable
    q = vitq.quantize(model, vitq.QuantConfig(method="minmax", bits="W8A8"), calib=batches, progress=False)
    assert q.vitq_info["components"] == ["image", "text"]
    with pytest.raises(DataError, match="not an image"):
        list(vitq.calibration_data([1, 2], model, num=2, text=False))


def test_the_declared_torch_range_is_the_one_tested():
    """pyproject's torch range must admit the torch these tests run on, and its lower bound must be
    that release's: a lower bound no test runs would claim support nobody checked."""
    from pathlib import Path

    import torch
    from packaging.requirements import Requirement

    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    from packaging.version import Version

    project = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())["project"]
    req = next(Requirement(d) for d in project["dependencies"] if d.startswith("torch"))
    installed = Version(torch.__version__.split("+")[0])
    assert installed in req.specifier
    lowest = min(Version(s.version) for s in req.specifier if s.operator in (">=", "=="))
    assert (lowest.major, lowest.minor) == (installed.major, installed.minor)


@pytest.mark.launches
def test_progress_in_a_log_updates_every_few_seconds(tmp_path):
    """Not a terminal: a bar updates every 10 s, not on every step."""
    import os
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "vitq", "synth", "--model", "zoo:deit-tiny", "--num", "1", "--steps", "40", "--batch-size", "1",
           "--out", str(tmp_path / "s")]
    run = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "TQDM_MININTERVAL": "0"}, timeout=600)
    assert run.returncode == 0, run.stderr
    bar = [chunk for chunk in run.stderr.replace("\r", "\n").split("\n") if "synthesising" in chunk]
    assert 1 <= len(bar) <= 8, len(bar)  # a few seconds of work: a handful of updates, against one per step (40) before
