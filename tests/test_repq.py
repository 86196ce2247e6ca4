"""RepQ-ViT: the reparameterizations are exact."""

import pytest
import torch
from conftest import sample_inputs
from test_adapters import encode_all

import vitq
from vitq.errors import ConfigError
from vitq.nn import QuantLayerNorm, quantizers, set_mode

FAMILIES = ["ViTForImageClassification", "DeiTForImageClassification", "SwinForImageClassification", "CLIPModel", "VisionTextDualEncoderModel"]
CALIB = [sample_inputs(seed=7, batch=8)]


def repq(model, bits="W4A4", **options):
    return vitq.quantize(model, vitq.QuantConfig(method="repq-vit", bits=bits, options=options), calib=CALIB, progress=False)


def only_roles(model, roles):
    for _, q in quantizers(model):
        q.enabled = q.role in roles


@pytest.mark.parametrize("cls", FAMILIES)
def test_reparameterization_keeps_float_function(models, inputs, cls):
    """With quantizers off, the reparameterized model is the original function (CLIP: both towers)."""
    model = models[cls]
    q = repq(model)
    set_mode(q, "fp")
    for a, b in zip(encode_all(model, inputs), encode_all(q, inputs)):
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-5), (a - b).abs().max()
    # the LayerNorms and the linears after them really changed
    ln_weights = [m.weight for m in q.modules() if isinstance(m, QuantLayerNorm)]
    assert ln_weights and any(not torch.allclose(w, torch.ones_like(w)) for w in ln_weights)


@pytest.mark.parametrize("cls", FAMILIES)
def test_layer_wise_quantizer_reproduces_channel_wise(models, inputs, cls):
    """With post-LayerNorm and post-Softmax quantizers on, the reparameterized model (layer-wise
    post-LN quantizer, shift-only softmax) computes what the channel-wise, log-sqrt2 model computes."""
    model = models[cls]
    channel = repq(model, post_ln="channel", softmax="logsqrt2")
    reparam = repq(model)
    for m in (channel, reparam):
        only_roles(m, {"post_ln", "softmax"})
    for a, b in zip(encode_all(channel, inputs), encode_all(reparam, inputs)):
        assert torch.allclose(a, b, atol=1e-4, rtol=1e-4), (a - b).abs().max()
    # and the quantized model differs from the float one (the points are really on)
    set_mode(channel, "fp")
    assert any(not torch.allclose(a, b, atol=1e-4) for a, b in zip(encode_all(channel, inputs), encode_all(reparam, inputs)))


def test_integer_codes_are_identical(models):
    """The layer-wise codes of X' = X/r1 - b equal the channel-wise codes of X."""
    model = models["ViTForImageClassification"]
    channel = repq(model, post_ln="channel")
    reparam = repq(model)
    x = sample_inputs(seed=3)["pixel_values"]
    grabbed = {}

    def grab(key):
        def hook(mod, inp, out):
            grabbed[key] = torch.nn.functional.layer_norm(inp[0], mod.normalized_shape, mod.weight, mod.bias, mod.eps)
        return hook

    ln_c = channel.vit.layers[1].layernorm_before
    ln_r = reparam.vit.layers[1].layernorm_before
    h1 = ln_c.register_forward_hook(grab("c"))
    h2 = ln_r.register_forward_hook(grab("r"))
    set_mode(channel, "fp")
    set_mode(reparam, "fp")
    with torch.no_grad():
        channel(pixel_values=x)
        reparam(pixel_values=x)
    h1.remove()
    h2.remove()
    codes_c = ln_c.output_quantizer.quantizer.quantize(grabbed["c"])
    codes_r = ln_r.output_quantizer.quantizer.quantize(grabbed["r"])
    assert ln_c.output_quantizer.axis == -1 and ln_r.output_quantizer.axis is None
    mismatch = (codes_c != codes_r).float().mean().item()
    assert mismatch < 1e-3  # only float rounding at exact ties may differ
    assert (codes_c - codes_r).abs().max() <= 1


def test_quantizer_kinds_after_calibration(models):
    q = repq(models["CLIPModel"])
    layer = q.vision_model.encoder.layers[0]
    assert layer.layer_norm1.output_quantizer.axis is None  # layer-wise after reparameterization
    assert layer.self_attn.vitq_pv.a_quantizer.kind == "log2_parity"
    assert layer.mlp.fc1.weight_quantizer.axis == 0
    assert q.vision_model.embeddings.patch_embedding.input_quantizer.bits == 8
    ablation = repq(models["CLIPModel"], post_ln="channel", softmax="log2")
    layer = ablation.vision_model.encoder.layers[0]
    assert layer.layer_norm1.output_quantizer.axis == -1 and layer.self_attn.vitq_pv.a_quantizer.kind == "log2"


def test_reparameterized_model_saves_and_reloads(models, inputs, tmp_path):
    q = repq(models["SwinForImageClassification"])
    vitq.save(q, tmp_path / "m")
    back = vitq.load(tmp_path / "m")
    for a, b in zip(encode_all(q, inputs), encode_all(back, inputs)):
        assert torch.equal(a, b)


def test_bad_ablation_option(models):
    with pytest.raises(ConfigError, match="post_ln='sideways' is not one of reparam, channel, layer"):
        repq(models["ViTModel"], post_ln="sideways")
