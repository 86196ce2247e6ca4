"""`vitq quantize` and `vitq info` end to end on a tiny random CLIP folder, and the CLI's errors."""

import shutil

import pytest
import torch
from conftest import needs_data

import vitq
from vitq.cli import main
from vitq.data import data_root


@pytest.fixture(scope="module")
def calib_dir(tmp_path_factory):
    """24 real CIFAR-10 test images in class subfolders."""
    src = data_root() / "cifar10" / "test"
    if not src.is_dir():
        pytest.skip("real data not available (set VITQ_DATA)")
    out = tmp_path_factory.mktemp("calib")
    for cls in sorted(p.name for p in src.iterdir())[:6]:
        (out / cls).mkdir()
        for f in sorted((src / cls).iterdir())[:4]:
            shutil.copy(f, out / cls / f.name)
    return out


def run_cli(*args):
    return main([str(a) for a in args])


@needs_data("cifar10")
@pytest.mark.parametrize("bits", ["W8A8", "W4A4"])
def test_quantize_info_reload(clip_folder, calib_dir, tmp_path, capsys, bits):
    out = tmp_path / bits
    assert run_cli("quantize", "--model", clip_folder, "--method", "minmax", "--bits", bits, "--calib", calib_dir,
                   "--num-calib", 16, "--out", out, "--seed", 3, "--quiet") == 0
    assert "saved to" in capsys.readouterr().out
    assert run_cli("info", out) == 0
    table = capsys.readouterr().out
    assert "vision_model.encoder.layers.0.layer_norm1.output_quantizer" in table and "post_ln" in table
    assert f" {bits[1]} " in table
    assert (out / "tokenizer.json").is_file() or (out / "vocab.txt").is_file()
    q = vitq.load(out)
    # The CLI's model is the API's on the same images and prompts, and really quantized.
    from vitq.data.calibration import calibration_batches
    from vitq.data.preprocess import image_transform
    from vitq.models.loading import load_model
    from vitq.models.tokenizers import resolve_tokenizer

    original = load_model(str(clip_folder))
    batches = calibration_batches(calib_dir, 16, 16, image_transform(original), tokenizer=resolve_tokenizer(original), seed=3)
    api = vitq.quantize(original, vitq.QuantConfig(bits=bits, num_calib=16, seed=3), calib=batches, progress=False)
    px = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        a = q.get_image_features(pixel_values=px).pooler_output
        b = api.get_image_features(pixel_values=px).pooler_output
        c = original.get_image_features(pixel_values=px).pooler_output
    assert torch.equal(a, b)
    assert torch.nn.functional.cosine_similarity(a, c).max() < 0.99999
    # the same seed gives the same scales
    out2 = tmp_path / (bits + "-again")
    summary = tmp_path / "runs" / "quantize.json"
    run_cli("quantize", "--model", clip_folder, "--bits", bits, "--calib", calib_dir, "--num-calib", 16, "--out", out2, "--seed", 3,
            "--quiet", "--json", summary)
    assert (out / "quant_state.json").read_text() == (out2 / "quant_state.json").read_text()
    import json

    written = json.loads(summary.read_text())
    assert written["method"] == "minmax" and written["bits"] == vitq.QuantConfig(bits=bits).bits and written["out"] == str(out2)
    assert written["vitq_info"] == json.loads((out2 / "vitq_config.json").read_text())["info"]


@needs_data("cifar10")
@pytest.mark.parametrize("args,message", [
    (["--bits", "W9A8"], "out of range"),
    (["--bits", "W4"], "cannot read bit spec"),
    (["--method", "gptq"], "unknown method"),
    (["--components", "audio"], "unknown component"),
    (["--method", "omse", "--option", "stepz=10"], "unknown option stepz for method omse"),
    (["--method", "repq-vit", "--option", "post_ln=sideways"], "post_ln='sideways' is not one of"),
])
def test_clear_errors(clip_folder, calib_dir, tmp_path, capsys, args, message):
    code = run_cli("quantize", "--model", clip_folder, "--calib", calib_dir, "--out", tmp_path / "o", "--quiet", *args)
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()


def test_list_methods_needs_no_model(capsys):
    assert run_cli("quantize", "--list-methods") == 0
    out = capsys.readouterr().out
    assert "repq-vit (alias repq)" in out and "--option sequential=true" in out and "--option momentum=0.99" in out
    assert "dynamic (alias dq-clip)" in out and "needs no calibration data" in out
    assert run_cli("quantize", "--out", "x") == 2 and "--model is required" in capsys.readouterr().err


def test_error_messages_for_inputs(clip_folder, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert run_cli("quantize", "--model", clip_folder, "--calib", empty, "--out", tmp_path / "o", "--quiet") == 2
    assert "no images" in capsys.readouterr().err
    bad = tmp_path / "bad" / "cat"
    bad.mkdir(parents=True)
    (bad / "x.jpg").write_bytes(b"not a jpeg")
    assert run_cli("quantize", "--model", clip_folder, "--calib", bad.parent, "--out", tmp_path / "o", "--quiet") == 2
    assert "x.jpg" in capsys.readouterr().err
    existing = tmp_path / "exists"
    existing.mkdir()
    (existing / "keep.txt").write_text("mine")
    assert run_cli("quantize", "--model", clip_folder, "--calib", empty, "--out", existing, "--quiet") == 2
    assert "--overwrite" in capsys.readouterr().err and (existing / "keep.txt").read_text() == "mine"


def test_model_errors(tmp_path, capsys):
    import transformers as T

    folder = tmp_path / "gpt2"
    T.GPT2Model(T.GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=50)).save_pretrained(folder)
    assert run_cli("quantize", "--model", folder, "--calib", tmp_path, "--out", tmp_path / "o") == 2
    err = capsys.readouterr().err
    assert "found no transformer blocks" in err and "register_block_roles" in err
    assert run_cli("quantize", "--model", "openai/clip-vit-base-patch32", "--calib", tmp_path, "--out", tmp_path / "o") == 2
    assert "network access" in capsys.readouterr().err
    ckpt = tmp_path / "model.pt"
    ckpt.write_bytes(b"\x80\x04")
    assert run_cli("quantize", "--model", ckpt, "--calib", tmp_path, "--out", tmp_path / "o") == 2
    assert "config.json" in capsys.readouterr().err
    assert run_cli("info", tmp_path) == 2
    assert "not a vitq" in capsys.readouterr().err


@pytest.mark.parametrize("args,message", [
    (["eval", "--model", "zoo:clip-tiny", "--task", "zero-shot", "--data", ".", "--reference", "zoo:clip-tiny"],
     "--reference only applies to --task fidelity"),
    (["eval", "--model", "zoo:clip-tiny", "--task", "zero-shot", "--data", ".", "--train-data", "."],
     "--train-data only applies to --task linear-probe"),
    (["eval", "--model", "zoo:deit-tiny", "--task", "top1", "--data", ".", "--train-limit", "5"],
     "--train-limit only applies"),
    (["eval", "--model", "zoo:clip-tiny", "--task", "retrieval", "--data", ".", "--plot", "x.png"], "--plot only applies"),
    (["eval", "--model", "zoo:clip-tiny", "--task", "top1", "--data", ".", "--resume"], "--resume needs --checkpoint"),
    (["quantize", "--model", "zoo:clip-tiny", "--method", "dynamic", "--calib", ".", "--out", "never"],
     "takes no calibration data"),
])
def test_conflicting_options_are_named(capsys, args, message):
    """Options that cannot go together fail before any model is loaded, and write nothing."""
    assert run_cli(*args) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_unwritable_json_paths_fail_before_work(tmp_path, capsys):
    afile = tmp_path / "afile"
    afile.write_text("keep")
    cases = [(afile / "x.json", "is a file"), (tmp_path, "is a folder")]
    for target, message in cases:
        code = run_cli("eval", "--model", "zoo:deit-tiny", "--task", "cost", "--json", target, "--quiet")
        err = capsys.readouterr().err
        assert code == 2 and message in err and "Traceback" not in err
    assert afile.read_text() == "keep"


def test_os_errors_are_named_without_traceback(monkeypatch, capsys):
    from vitq.commands import info

    def disk_full(args):
        raise OSError(28, "No space left on device", "/out/model.safetensors")

    monkeypatch.setattr(info, "run", disk_full)  # the parser picks up each command's run() when built
    assert main(["info", "anything"]) == 1
    err = capsys.readouterr().err
    assert "/out/model.safetensors" in err and "No space left" in err and "Traceback" not in err


@needs_data("cifar10")
def test_recon_checkpoints_resumes_and_reports(clip_folder, calib_dir, tmp_path, capsys):
    common = ["quantize", "--model", clip_folder, "--method", "recon", "--bits", "W4A4", "--calib", calib_dir,
              "--num-calib", 16, "--batch-size", 8, "--components", "image", "--quiet", "--option", "iters=4"]
    ckpt = tmp_path / "ckpt"
    # an interrupted run leaves its checkpoints; --resume finishes it as an uninterrupted run would
    assert run_cli(*common, "--out", tmp_path / "part", "--checkpoint-dir", ckpt, "--option", "stop_after=2") == 0
    assert (ckpt / "last" / "state.json").is_file()
    assert run_cli(*common, "--out", tmp_path / "resumed", "--checkpoint-dir", ckpt, "--resume") == 0
    assert run_cli(*common, "--out", tmp_path / "full") == 0
    assert not (tmp_path / "full.checkpoints").exists()  # default checkpoints are removed once saved
    a, b = vitq.load(tmp_path / "resumed"), vitq.load(tmp_path / "full")
    assert a.vitq_info["recon"]["resumed"] == 2
    sa, sb = a.state_dict(), b.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    capsys.readouterr()
    assert run_cli("info", tmp_path / "full") == 0
    text = capsys.readouterr().out
    assert "block reconstruction after repq-vit: 4 steps per block" in text and "vision_model.encoder.layers.1: rounding of" in text
    assert run_cli("quantize", "--model", clip_folder, "--calib", calib_dir, "--out", tmp_path / "x", "--resume", "--quiet") == 2
    assert "writes no checkpoints" in capsys.readouterr().err
