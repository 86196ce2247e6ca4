"""Saving and loading quantized models: identical outputs, packed integers, integrity checks."""

import json

import pytest
import torch
from conftest import sample_inputs
from safetensors.torch import load_file

import vitq
from vitq.errors import ConfigError, IntegrityError, ModelError
from vitq.nn import quant_state
from test_adapters import encode_all


@pytest.mark.parametrize("cls,bits", [("CLIPModel", "W8A8"), ("CLIPModel", "W4A4"), ("SwinForImageClassification", "4-4-8"), ("BertModel", "W4A4")])
def test_round_trip_identical(models, inputs, tmp_path, cls, bits):
    q = vitq.quantize(models[cls], vitq.QuantConfig(bits=bits), calib=[sample_inputs(seed=5, batch=4)], progress=False)
    vitq.save(q, tmp_path / "m")
    back = vitq.load(tmp_path / "m")
    for a, b in zip(encode_all(q, inputs), encode_all(back, inputs)):
        assert torch.equal(a, b)
    assert quant_state(back) == quant_state(q)
    assert back.vitq_info["method"] == "minmax"


def test_folder_is_inspectable_and_packed(models, tmp_path):
    q = vitq.quantize(models["CLIPModel"], vitq.QuantConfig(bits="W4A4"), calib=[sample_inputs(seed=5, batch=4)], progress=False)
    out = vitq.save(q, tmp_path / "m")
    names = {p.name for p in out.iterdir()}
    assert {"vitq_config.json", "config.json", "quant_state.json", "vitq_weights.safetensors", "manifest.json"} <= names
    tensors = load_file(str(out / "vitq_weights.safetensors"))
    codes = tensors["vision_model.encoder.layers.0.mlp.fc1.weight.codes"]
    w = q.vision_model.encoder.layers[0].mlp.fc1.weight
    assert codes.dtype == torch.uint8 and codes.numel() == w.numel() // 2  # two 4-bit codes per byte
    assert "vision_model.encoder.layers.0.mlp.fc1.weight" not in tensors
    state = json.loads((out / "quant_state.json").read_text())
    point = state["vision_model.encoder.layers.0.mlp.fc1.weight_quantizer"]
    assert point["bits"] == 4 and point["kind"] == "uniform" and point["axis"] == 0 and len(point["scale"]) == w.shape[0]
    # The token-embedding table is a weight too: 8-bit codes (one byte each) with one scale per row.
    table = q.text_model.embeddings.token_embedding.weight
    assert tensors["text_model.embeddings.token_embedding.weight.codes"].numel() == table.numel()
    row_point = state["text_model.embeddings.token_embedding.weight_quantizer"]
    assert row_point["bits"] == 8 and row_point["axis"] == 0 and len(row_point["scale"]) == table.shape[0]


def test_written_files_get_the_usual_permissions(tmp_path):
    """Atomic writes go through mkstemp (mode 0600); the result must be readable as open() would leave it."""
    import os

    from vitq.io_utils import write_json

    old = os.umask(0o022)
    try:
        path = write_json(tmp_path / "r.json", {"a": 1})
        assert oct(path.stat().st_mode & 0o777) == oct(0o644)
        os.umask(0o027)
        assert oct(write_json(tmp_path / "g.json", {}).stat().st_mode & 0o777) == oct(0o640)
    finally:
        os.umask(old)


def test_refuses_existing_folder_and_file(models, tmp_path):
    q = vitq.quantize(models["ViTModel"], vitq.QuantConfig(), calib=[sample_inputs()["pixel_values"]], progress=False)
    vitq.save(q, tmp_path / "m")
    with pytest.raises(ConfigError, match="already exists"):
        vitq.save(q, tmp_path / "m")
    vitq.save(q, tmp_path / "m", overwrite=True)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary leftovers
    (tmp_path / "f").write_text("x")
    with pytest.raises(ConfigError, match="is a file"):
        vitq.save(q, tmp_path / "f")
    with pytest.raises(ModelError, match="not quantized"):
        vitq.save(models["ViTModel"], tmp_path / "plain")


def test_edited_or_missing_file_is_named(models, tmp_path):
    q = vitq.quantize(models["ViTModel"], vitq.QuantConfig(), calib=[sample_inputs()["pixel_values"]], progress=False)
    out = vitq.save(q, tmp_path / "m")
    data = bytearray((out / "vitq_weights.safetensors").read_bytes())
    data[-10] ^= 0xFF
    (out / "vitq_weights.safetensors").write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match="vitq_weights.safetensors was changed"):
        vitq.load(out)
    (out / "config.json").unlink()
    with pytest.raises(IntegrityError, match="config.json is missing"):
        vitq.load(out)
    with pytest.raises(ModelError, match="not a vitq"):
        vitq.load(tmp_path)


def test_interrupted_save_keeps_previous(models, tmp_path, monkeypatch):
    q = vitq.quantize(models["ViTModel"], vitq.QuantConfig(), calib=[sample_inputs()["pixel_values"]], progress=False)
    out = vitq.save(q, tmp_path / "m")
    before = (out / "manifest.json").read_text()

    import vitq.saving as saving

    def boom(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(saving, "save_file", boom)
    with pytest.raises(KeyboardInterrupt):
        vitq.save(q, out, overwrite=True)
    assert (out / "manifest.json").read_text() == before
    assert vitq.load(out) is not None
    assert [p.name for p in tmp_path.iterdir()] == ["m"]


def test_point_description_round_trips_every_field():
    from vitq.nn import TensorQuantizer

    for kind in ("uniform", "log2", "logsqrt2", "log2_parity"):
        p = TensorQuantizer(bits=5, kind=kind, symmetric=False, axis=None, observer="omse", learnable=kind == "uniform", role="softmax")
        back = TensorQuantizer.from_description(p.describe())
        assert back.describe() | {"scale_min": None, "scale_max": None} == p.describe() | {"scale_min": None, "scale_max": None}
        assert back.role == "softmax" and back.kind == kind and back.learnable == (kind == "uniform")


FIXTURES = __import__("pathlib").Path(__file__).parent / "fixtures" / "saved_v1"


@pytest.mark.parametrize("name", ["clip_minmax_w8a8", "clip_repq_w4a4", "swin_omse_448", "clip_dynamic"])
def test_folders_saved_by_the_first_release_load_exactly(name):
    """Folders written before core v2 (tests/fixtures/saved_v1) load and compute the outputs that
    the code which wrote them computed. Bit for bit only on the CPU that wrote them: another CPU's
    matmul kernels (AVX-512 against AVX2) round differently, which can move a value across a
    quantization boundary, so elsewhere the outputs must agree to cosine 0.999 per input."""
    from safetensors.torch import load_file as read
    from vitq.models.families import family_of

    inputs, expected = read(FIXTURES / "inputs.safetensors"), read(FIXTURES / f"{name}.outputs.safetensors")
    model = vitq.load(FIXTURES / name)
    fam = family_of(model)
    with torch.no_grad():
        for tower, want in expected.items():
            got = (fam.encode_image(model, inputs["pixel_values"]) if tower == "image"
                   else fam.encode_text(model, inputs["input_ids"], inputs["attention_mask"]))
            if not torch.equal(got, want):
                cos = torch.nn.functional.cosine_similarity(got.flatten(1).float(), want.flatten(1).float())
                assert float(cos.min()) > 0.999, (tower, cos)


def test_folder_from_a_newer_format_names_the_version(tmp_path):
    import shutil

    shutil.copytree(FIXTURES / "clip_minmax_w8a8", tmp_path / "m")
    cfg_path = tmp_path / "m" / "vitq_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg.update(format_version=99, vitq_version="9.0")
    cfg_path.write_text(json.dumps(cfg))
    manifest = json.loads((tmp_path / "m" / "manifest.json").read_text())
    from vitq.io_utils import file_sha256

    manifest["sha256"]["vitq_config.json"] = file_sha256(cfg_path)
    (tmp_path / "m" / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelError, match="(?s)v99 by vitq 9.0.*upgrade vitq to 9.0"):
        vitq.load(tmp_path / "m")


def test_plain_transformers_refuses_a_vitq_folder_instead_of_loading_it_wrong(models, tmp_path):
    """The weights file is not model.safetensors, so from_pretrained fails loudly rather than giving a
    model whose quantized weights are freshly initialised (it loaded, with logits at cosine 0.01, in format v1)."""
    import transformers

    q = vitq.quantize(models["ViTForImageClassification"], vitq.QuantConfig(bits="W4A4"), calib=[sample_inputs(seed=5, batch=4)],
                      progress=False)
    out = vitq.save(q, tmp_path / "m")
    with pytest.raises(OSError):
        transformers.AutoModelForImageClassification.from_pretrained(str(out))
    assert json.loads((out / "vitq_config.json").read_text())["format_version"] == 2
