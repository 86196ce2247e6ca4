"""Bad input, untrusted files and determinism."""

import io
import os
import pickle
import random
import shutil

import pytest
import torch
from conftest import needs_data, sample_inputs
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

import vitq
from vitq.data import BadImage, ImageFolder, data_root, load_rgb
from vitq.errors import ConfigError, ModelError, VitqError
from vitq.models.loading import load_model
from vitq.nn import quant_state
from vitq.nn.tensor_quantizer import KINDS, TensorQuantizer

# -- untrusted checkpoints ------------------------------------------------------------------------


class _Exploit:
    def __reduce__(self):
        return (os.system, ("echo pwned > /tmp/vitq-pwned",))


@pytest.fixture
def vit_folder(tmp_path):
    import transformers as T

    cfg = T.ViTConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32, image_size=16, patch_size=8)
    model = T.ViTModel(cfg).eval()
    model.save_pretrained(tmp_path)
    return tmp_path, model


def test_pickle_with_code_is_refused(vit_folder):
    folder, _ = vit_folder
    bad = folder / "evil.pt"
    with bad.open("wb") as f:
        pickle.dump({"weight": _Exploit()}, f)
    with pytest.raises(ModelError, match="refused"):
        load_model(str(bad))
    assert not os.path.exists("/tmp/vitq-pwned")


def test_plain_state_dict_loads_with_weights_only(vit_folder):
    folder, model = vit_folder
    torch.save(model.state_dict(), folder / "weights.pt")
    loaded = load_model(str(folder / "weights.pt"))
    x = torch.randn(1, 3, 16, 16)
    with torch.no_grad():
        assert torch.allclose(loaded(pixel_values=x).last_hidden_state, model(pixel_values=x).last_hidden_state)
    torch.save({"unrelated": torch.zeros(3)}, folder / "other.pt")
    with pytest.raises(ModelError, match="does not match"):
        load_model(str(folder / "other.pt"))
    (folder / "notes.txt").write_text("hello")
    with pytest.raises(ModelError, match="not a model vitq can read"):
        load_model(str(folder / "notes.txt"))


# -- quantizer settings: any combination either works or raises a documented error --------------

@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    bits=st.one_of(st.integers(-2, 12), st.sampled_from([2.5, "4", None])),
    kind=st.sampled_from(list(KINDS) + ["log3", ""]),
    symmetric=st.booleans(),
    axis=st.sampled_from([None, 0, 1, -1]),
    observer=st.sampled_from(["minmax", "ema", "percentile", "omse", "pct_search", "kmeans"]),
    scale=st.floats(1e-3, 1e3),
)
def test_quantizer_settings_fail_only_with_documented_errors(bits, kind, symmetric, axis, observer, scale):
    x = torch.randn(4, 6) * scale
    try:
        q = TensorQuantizer(bits=bits, kind=kind, symmetric=symmetric, axis=axis, observer=observer)
        q.set_mode("calib")
        q(x.abs() if kind != "uniform" else x)
        q.finish_calibration()
        q.set_mode("quant")
        y = q(x.abs() if kind != "uniform" else x)
    except (ConfigError, ValueError) as err:
        assert str(err)  # documented: bad bits/observer (ConfigError) or an unknown kind (ValueError)
        return
    assert torch.isfinite(y).all() and y.shape == x.shape


@settings(max_examples=120, deadline=None)
@given(st.text(max_size=12))
def test_bit_spec_parser_never_crashes(text):
    try:
        spec = vitq.parse_bits(text)
    except ConfigError as err:
        assert err.hint
        return
    assert 2 <= spec.w <= 8 and 2 <= spec.a <= 8 and 2 <= spec.attn <= 8


# -- images: fuzzed real JPEGs either decode or fail with BadImage naming the file ---------------

@needs_data("cifar10")
def test_fuzzed_jpegs_fail_cleanly(tmp_path):
    src = sorted((data_root() / "cifar10" / "test" / "cat").iterdir())[:5]
    rng = random.Random(0)
    outcomes = {"decoded": 0, "bad": 0}
    for i in range(200):
        data = bytearray(src[i % len(src)].read_bytes())
        mutation = i % 4
        if mutation == 0:
            data = data[: rng.randrange(1, len(data))]  # truncated
        elif mutation == 1:
            for _ in range(rng.randrange(1, 20)):  # flipped bytes
                data[rng.randrange(len(data))] = rng.randrange(256)
        elif mutation == 2:
            start = rng.randrange(len(data))  # a zeroed run
            data[start : start + rng.randrange(1, 64)] = bytes(min(64, len(data) - start))
        else:
            data = bytes(rng.randrange(256) for _ in range(rng.randrange(0, 300)))  # noise
        path = tmp_path / f"f{i}.jpg"
        path.write_bytes(bytes(data))
        try:
            img = load_rgb(str(path))
            assert img.mode == "RGB"
            outcomes["decoded"] += 1
        except BadImage as err:
            assert str(path) in err.message
            outcomes["bad"] += 1
    assert outcomes["bad"] > 20 and sum(outcomes.values()) == 200


def test_image_modes_that_must_work(tmp_path):
    import numpy as np

    cases = {
        "grey.png": Image.new("L", (9, 7), 128),
        "cmyk.jpg": Image.new("CMYK", (9, 7), (10, 20, 30, 40)),
        "sixteen.png": Image.fromarray(np.full((7, 9), 40000, dtype=np.uint16)),
        "palette.png": Image.new("P", (9, 7), 3),
        "rgba.png": Image.new("RGBA", (9, 7), (1, 2, 3, 4)),
    }
    for name, img in cases.items():
        img.save(tmp_path / name)
        out = load_rgb(str(tmp_path / name))
        assert out.mode == "RGB" and out.size == (9, 7), name
    sixteen = load_rgb(str(tmp_path / "sixteen.png"))
    assert sixteen.getpixel((0, 0))[0] == round(40000 / 257)  # 16 bits mapped onto 8, not clipped


def test_decompression_bomb_and_empty_files(tmp_path):
    from vitq.data import imageio

    big = tmp_path / "bomb.png"
    Image.new("L", (9000, 8000)).save(big)
    with pytest.raises(BadImage, match="bomb"):
        load_rgb(str(big))
    (tmp_path / "empty.jpg").write_bytes(b"")
    with pytest.raises(BadImage, match="empty.jpg"):
        load_rgb(str(tmp_path / "empty.jpg"))
    assert imageio.MAX_PIXELS < 9000 * 8000
    # a BadImage survives pickling (DataLoader workers send it back to the main process)
    err = pickle.loads(pickle.dumps(BadImage("x.jpg", "broken")))
    assert err.where == "x.jpg" and "x.jpg" in err.message


def test_folders_without_classes(tmp_path):
    with pytest.raises(VitqError, match="no images in class subfolders"):
        ImageFolder(tmp_path)
    Image.new("RGB", (4, 4)).save(tmp_path / "flat.jpg")
    with pytest.raises(VitqError, match="no images in class subfolders"):
        ImageFolder(tmp_path)


# -- determinism: the same seed gives bit-identical scales ----------------------------------------

@pytest.mark.parametrize("method", ["minmax", "omse", "repq-vit"])
def test_same_seed_same_scales(models, method):
    runs = []
    for _ in range(2):
        q = vitq.quantize(models["CLIPModel"], vitq.QuantConfig(method=method, bits="W4A4", seed=5),
                          calib=[sample_inputs(seed=9, batch=6)], progress=False)
        runs.append(q.state_dict())
    assert runs[0].keys() == runs[1].keys()
    for key in runs[0]:
        assert torch.equal(runs[0][key], runs[1][key]), key


# -- interrupted evaluations resume to the same result ---------------------------------------------

@needs_data("cifar10")
def test_killed_evaluation_resumes_to_the_same_result(tmp_path, monkeypatch):
    import transformers as T

    from vitq.eval import features

    torch.manual_seed(0)
    model = T.ViTForImageClassification(T.ViTConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                                    intermediate_size=32, image_size=32, patch_size=8, num_labels=10)).eval()
    data = data_root() / "cifar10" / "test"
    opts = dict(limit=100, batch_size=8, progress=False, label_map="index")
    full = vitq.evaluate(model, "top1", data, **opts)

    real = features._as_tuple
    calls = {"n": 0}

    def dies_after_11_of_13_batches(out):
        calls["n"] += 1
        if calls["n"] > 11:
            raise KeyboardInterrupt  # what SIGINT/SIGTERM does in the CLI
        return real(out)

    monkeypatch.setattr(features, "_as_tuple", dies_after_11_of_13_batches)
    with pytest.raises(KeyboardInterrupt):
        vitq.evaluate(model, "top1", data, checkpoint=tmp_path / "ckpt", **opts)
    monkeypatch.setattr(features, "_as_tuple", real)
    saved = list((tmp_path / "ckpt").iterdir())
    assert len(saved) == 1  # 10 batches were saved before the kill

    computed = {"n": 0}

    def counting(out):
        computed["n"] += 1
        return real(out)

    monkeypatch.setattr(features, "_as_tuple", counting)
    resumed = vitq.evaluate(model, "top1", data, checkpoint=tmp_path / "ckpt", resume=True, **opts)
    assert computed["n"] == 3  # only the 3 batches not saved before the kill ran again
    assert resumed["metrics"] == full["metrics"] and resumed["num_examples"] == full["num_examples"]
    assert not list((tmp_path / "ckpt").iterdir())  # a finished run removes its checkpoint
    with pytest.raises(ConfigError, match="--checkpoint"):
        vitq.evaluate(model, "top1", data, resume=True, **opts)
