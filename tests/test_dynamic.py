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

    tensors = load_file(str(out / "vitq_weights.safetensors"))
    assert tensors["vision_model.encoder.layers.0.mlp.fc1.weight.int8"].dtype == torch.int8


def test_only_8_bits(models):
    with pytest.raises(ConfigError, match="int8"):
        vitq.quantize(models["CLIPModel"], vitq.QuantConfig(method="dynamic", bits="W4A4"), progress=False)


def _int8_reference(x, weight_codes, weight_scale, bias, per_token: bool):
    """Symmetric int8 activations (scale = amax / 127.5, codes round(x / s)) times int8 weights."""
    amax = x.abs().amax(-1, keepdim=True) if per_token else x.abs().amax()
    s = amax / 127.5
    codes = torch.clamp(torch.round(x * (1 / s)), -128, 127)
    return (codes @ weight_codes.float().T) * s * weight_scale.reshape(1, -1) + bias


def test_activation_scales_are_computed_per_token_at_run_time(models):
    """No calibration: each token gets its own int8 scale when it arrives. Rows a million times apart
    in magnitude are each quantized as finely as their own range allows; one static scale would
    wipe out the small rows."""
    q = vitq.quantize(models["ViTForImageClassification"], vitq.QuantConfig(method="dq-clip"), progress=False)
    assert q.vitq_info["dynamic"]["count"] == len(int8_layers(q, ""))
    layer = q.vit.layers[0].mlp.fc1
    w = layer.weight
    x = torch.randn(6, w.shape[1], generator=torch.Generator().manual_seed(0)) * torch.tensor([[1e-3], [1.0], [1e3], [1e-3], [1.0], [1e3]])
    with torch.no_grad():
        got = layer(x)
        float_out = torch.nn.functional.linear(x, models["ViTForImageClassification"].vit.layers[0].mlp.fc1.weight, layer.bias)
    per_token = _int8_reference(x, w.qdata, w.scale, layer.bias, per_token=True)
    static = _int8_reference(x, w.qdata, w.scale, layer.bias, per_token=False)
    rel = lambda a, b: ((a - b).abs() / b.abs().amax(-1, keepdim=True)).amax(-1)  # noqa: E731  per row
    assert (rel(got, per_token) < 1e-5).all()  # exactly the per-token int8 computation
    assert (rel(got, float_out) > 1e-4).all()  # which really is quantized
    assert rel(static, float_out)[[0, 3]].min() > 0.5  # a static scale would lose the small rows


def test_paper_variant_is_quantize_dynamic_per_tensor(models, inputs, tmp_path):
    """DQ-CLIP's own setting: torch.ao quantize_dynamic, one scale per weight tensor and per
    activation tensor (coarser than the torchao variant's per-channel/per-token), saved and reloaded
    exactly."""
    from vitq.methods.dynamic import is_paper_dynamic

    model = models["CLIPModel"]
    paper = vitq.quantize(model, vitq.QuantConfig(method="dynamic", options={"variant": "paper"}), progress=False)
    converted = [n for n, m in paper.named_modules() if is_paper_dynamic(m)]
    linears = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    assert sorted(converted) == sorted(linears) and paper.vitq_info["dynamic"]["variant"] == "paper"
    layer = paper.get_submodule("vision_model.encoder.layers.0.mlp.fc1")
    assert layer.weight().qscheme() == torch.per_tensor_affine
    assert not int8_layers(paper, "")  # no torchao tensors in this variant
    finer = vitq.quantize(model, vitq.QuantConfig(method="dynamic"), progress=False)
    err = lambda q: [1 - torch.nn.functional.cosine_similarity(a, b).mean() for a, b in zip(encode_all(model, inputs), encode_all(q, inputs))]  # noqa: E731
    assert all(e_paper > e_finer for e_paper, e_finer in zip(err(paper), err(finer)))  # per-tensor is coarser
    from vitq.eval.cost import model_size

    assert model_size(paper)["bytes"] == model_size(finer)["bytes"] < model_size(model)["bytes"]  # int8 weights either way
    back = vitq.load(vitq.save(paper, tmp_path / "paper"))
    for a, b in zip(encode_all(paper, inputs), encode_all(back, inputs)):
        assert torch.equal(a, b)
    with pytest.raises(ConfigError, match="variant='fp16' is not one of torchao, paper"):
        vitq.quantize(model, vitq.QuantConfig(method="dynamic", options={"variant": "fp16"}), progress=False)
