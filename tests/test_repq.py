"""RepQ-ViT: the reparameterizations are exact."""

import pytest
import torch
from conftest import sample_inputs
from test_adapters import CLASSES, encode_all

import vitq
from vitq.errors import ConfigError
from vitq.nn import QuantLayerNorm, quantizers, set_mode
from vitq.nn.modules import InputAffine

FAMILIES = ["ViTForImageClassification", "DeiTForImageClassification", "SwinForImageClassification", "CLIPModel", "VisionTextDualEncoderModel"]
# Pre-LN models with a LayerNorm consumer kept in float: the other consumers take the reparameterization.
EXCLUDED = {"CLIPModel": ("vision_model.encoder.layers.0.self_attn.k_proj", "text_model.encoder.layers.1.mlp.fc1"),
            "ViTForImageClassification": ("vit.layers.1.attention.v_proj",)}
CALIB = [sample_inputs(seed=7, batch=8)]


def repq(model, bits="W4A4", exclude=(), **options):
    cfg = vitq.QuantConfig(method="repq-vit", bits=bits, exclude=exclude, options=options)
    return vitq.quantize(model, cfg, calib=CALIB, progress=False)


def per_channel_activations(model):
    return [n for n, q in quantizers(model) if q.active and q.role != "weight" and q.kind == "uniform" and q.axis is not None]


@pytest.mark.parametrize("cls", CLASSES + [f"{c}-excluded" for c in EXCLUDED])
def test_only_layer_wise_activation_points_remain(models, cls):
    """After repq-vit no activation point is channel-wise, in every supported class: post-LN (BERT)
    towers and LayerNorms with a consumer kept in float included."""
    name = cls.removesuffix("-excluded")
    exclude = EXCLUDED[name] if cls.endswith("-excluded") else ()
    channel = repq(models[name], exclude=exclude, post_ln="channel")
    assert per_channel_activations(channel)  # the calibration really was channel-wise
    q = repq(models[name], exclude=exclude)
    assert per_channel_activations(q) == []
    affines = [n for n, m in q.named_modules() if isinstance(m, InputAffine)]
    assert len(affines) == q.vitq_info["repq"]["input_affines"]
    # Post-LN towers (BERT) and LayerNorms with a float consumer need input affines; pre-LN ones fold into the LayerNorm.
    assert bool(affines) == (name in ("BertModel", "VisionTextDualEncoderModel") or bool(exclude))


@pytest.mark.parametrize("cls", ["BertModel", "VisionTextDualEncoderModel", "CLIPModel-excluded", "ViTForImageClassification-excluded"])
def test_post_ln_reparameterization_keeps_float_function_and_codes(models, inputs, cls):
    """Where the LayerNorm cannot take the reparameterization, the consumers' input affines keep the
    float function, and with the post-LN points on the layer-wise model computes what the
    channel-wise one computes."""
    name = cls.removesuffix("-excluded")
    exclude = EXCLUDED[name] if cls.endswith("-excluded") else ()
    model = models[name]
    q = repq(model, exclude=exclude)
    assert any(isinstance(m, InputAffine) for m in q.modules())
    set_mode(q, "fp")
    for a, b in zip(encode_all(model, inputs), encode_all(q, inputs)):
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-5), (a - b).abs().max()
    channel = repq(model, exclude=exclude, post_ln="channel", softmax="logsqrt2")
    set_mode(q, "quant")
    for m in (channel, q):
        only_roles(m, {"post_ln"})
    for a, b in zip(encode_all(channel, inputs), encode_all(q, inputs)):
        assert torch.allclose(a, b, atol=1e-4, rtol=1e-4), (a - b).abs().max()
    set_mode(channel, "fp")
    assert any(not torch.allclose(a, b, atol=1e-4) for a, b in zip(encode_all(channel, inputs), encode_all(q, inputs)))


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
    # the LayerNorms and the linears after them really changed, in every tower (a dual encoder's
    # post-LN BERT tower through its consumers' input affines)
    from vitq.models.families import component_of, family_of

    fam = family_of(q)
    for comp in fam.components:
        lns = [m.weight for n, m in q.named_modules() if isinstance(m, QuantLayerNorm) and component_of(fam, n) == comp]
        affines = [m for n, m in q.named_modules() if isinstance(m, InputAffine) and component_of(fam, n) == comp]
        assert any(not torch.allclose(w, torch.ones_like(w)) for w in lns) or any(not torch.allclose(a.scale, torch.ones_like(a.scale)) for a in affines), comp


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


@pytest.mark.parametrize("cls", ["SwinForImageClassification", "VisionTextDualEncoderModel"])
def test_reparameterized_model_saves_and_reloads(models, inputs, tmp_path, cls):
    q = repq(models[cls])
    vitq.save(q, tmp_path / "m")
    back = vitq.load(tmp_path / "m")
    assert sum(isinstance(m, InputAffine) for m in back.modules()) == q.vitq_info["repq"]["input_affines"]
    for a, b in zip(encode_all(q, inputs), encode_all(back, inputs)):
        assert torch.equal(a, b)


def test_bad_ablation_option(models):
    with pytest.raises(ConfigError, match="post_ln='sideways' is not one of reparam, channel, layer"):
        repq(models["ViTModel"], post_ln="sideways")
