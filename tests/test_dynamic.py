"""DQ-CLIP's dynamic int8 method on torchao kernels."""

import pytest
import torch
from conftest import sample_inputs
from test_adapters import encode_all

import vitq
from vitq.errors import ConfigError
from vitq.methods.dynamic import is_dynamic_weight

pytest.importorskip("torchao")


def int8_layers(model, prefix):
    return [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and n.startswith(prefix) and is_dynamic_weight(m.weight)]


@pytest.mark.parametrize("components,image,text", [("image", True, False), ("text", False, True), ("image,text", True, True)])
def test_components_and_fidelity(models, inputs, components, image, text):
    model = models["CLIPModel"]
    q = vitq.quantize(model, vitq.QuantConfig(method="dynamic", components=components), progress=False)
    assert bool(int8_layers(q, "vision_model")) == image and bool(int8_layers(q, "visual_projection")) == image
    assert bool(int8_layers(q, "text_model")) == text
    for a, b in zip(encode_all(model, inputs), encode_all(q, inputs)):
        assert torch.nn.functional.cosine_similarity(a, b).min() > 0.99
    assert not int8_layers(model, "")  # the original keeps its float weights


def test_save_load_identical_and_small(models, inputs, tmp_path):
    q = vitq.quantize(models["CLIPModel"], vitq.QuantConfig(method="dynamic"), progress=False)
    out = vitq.save(q, tmp_path / "dq")
    back = vitq.load(out)
    for a, b in zip(encode_all(q, inputs), encode_all(back, inputs)):
        assert torch.equal(a, b)
    from safetensors.torch import load_file

    tensors = load_file(str(out / "model.safetensors"))
    assert tensors["vision_model.encoder.layers.0.mlp.fc1.weight.int8"].dtype == torch.int8


def test_only_8_bits(models):
    with pytest.raises(ConfigError, match="int8"):
        vitq.quantize(models["CLIPModel"], vitq.QuantConfig(method="dynamic", bits="W4A4"), progress=False)


def test_needs_no_calibration(models):
    q = vitq.quantize(models["ViTForImageClassification"], vitq.QuantConfig(method="dq-clip"), progress=False)
    x = sample_inputs()["pixel_values"]
    with torch.no_grad():
        assert q(pixel_values=x).logits.shape == (3, 5)
