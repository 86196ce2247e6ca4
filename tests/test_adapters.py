"""Model adapters: with every quantizer off, the wrapped model reproduces the original (1e-5)."""

import pytest
import torch
from conftest import sample_inputs

import vitq
from vitq.errors import ConfigError, ModelError
from vitq.methods.common import baseline_scheme
from vitq.models.families import family_of
from vitq.models.prepare import prepare
from vitq.nn import QuantLayerNorm, QuantLinear, QuantMatMul, quantizers, set_mode


def encode_all(model, batch):
    fam = family_of(model)
    outs = []
    with torch.no_grad():
        if "image" in fam.components:
            outs.append(fam.encode_image(model, batch["pixel_values"]))
        if "text" in fam.components:
            outs.append(fam.encode_text(model, batch["input_ids"], batch["attention_mask"]))
    return outs


def calib_for(model):
    return [sample_inputs(seed=7, batch=4)]


CLASSES = [
    "CLIPModel", "CLIPVisionModelWithProjection", "CLIPTextModel", "ViTModel", "ViTForImageClassification",
    "DeiTForImageClassification", "SwinForImageClassification", "BertModel", "VisionTextDualEncoderModel",
]


@pytest.mark.parametrize("cls", CLASSES)
def test_quantizers_off_reproduce_original(models, inputs, cls):
    model = models[cls]
    before = encode_all(model, inputs)
    q = vitq.quantize(model, vitq.QuantConfig(bits="W4A4"), calib=calib_for(model), progress=False)
    set_mode(q, "fp")
    after = encode_all(q, inputs)
    for a, b in zip(before, after):
        assert torch.allclose(a, b, atol=1e-5), (a - b).abs().max()
    # and disabling each point one by one is the same as fp mode
    set_mode(q, "quant")
    for _, point in quantizers(q):
        point.enabled = False
    for a, b in zip(before, encode_all(q, inputs)):
        assert torch.allclose(a, b, atol=1e-5)
    # the original is untouched
    assert not any(True for _ in quantizers(model))


@pytest.mark.parametrize("cls", CLASSES)
def test_quantized_outputs_close_at_8_bits(models, inputs, cls):
    model = models[cls]
    q = vitq.quantize(model, vitq.QuantConfig(bits="W8A8"), calib=calib_for(model), progress=False)
    for a, b in zip(encode_all(model, inputs), encode_all(q, inputs)):
        cos = torch.nn.functional.cosine_similarity(a.flatten(1), b.flatten(1)).min()
        assert cos > 0.98, cos
        assert not torch.equal(a, b)  # quantization really happened


def test_clip_quantization_points(models):
    q = vitq.quantize(models["CLIPModel"], vitq.QuantConfig(bits="4-4-8"), calib=calib_for(None), progress=False)
    layer = q.vision_model.encoder.layers[0]
    assert isinstance(layer.layer_norm1, QuantLayerNorm) and layer.layer_norm1.output_quantizer.role == "post_ln"
    assert isinstance(layer.layer_norm2, QuantLayerNorm)
    assert layer.self_attn.q_proj.input_quantizer is None  # covered by the post-LN point
    assert layer.mlp.fc2.input_quantizer.role == "post_gelu"
    assert isinstance(layer.self_attn.vitq_qk, QuantMatMul)
    assert layer.self_attn.vitq_pv.a_quantizer.role == "softmax"
    assert layer.self_attn.vitq_pv.a_quantizer.bits == 8 and layer.mlp.fc1.weight_quantizer.bits == 4
    assert isinstance(q.vision_model.embeddings.patch_embedding, vitq.nn.QuantConv2d)
    assert isinstance(q.visual_projection, QuantLinear) and isinstance(q.text_projection, QuantLinear)


def test_bert_post_ln_uses_linear_inputs(models):
    q = vitq.quantize(models["BertModel"], vitq.QuantConfig(), calib=calib_for(None), progress=False)
    layer = q.encoder.layer[0]
    assert not isinstance(layer.attention.output.LayerNorm, QuantLayerNorm)  # it also feeds the residual
    assert layer.attention.self.query.input_quantizer.role == "post_ln"
    assert layer.intermediate.dense.input_quantizer.role == "post_ln"


def test_swin_patch_merging_post_ln(models):
    q = vitq.quantize(models["SwinForImageClassification"], vitq.QuantConfig(), calib=calib_for(None), progress=False)
    merge = q.swin.encoder.layers[0].downsample
    assert isinstance(merge.norm, QuantLayerNorm) and merge.reduction.input_quantizer is None


@pytest.mark.parametrize("components,image_q,text_q", [(("image",), True, False), (("text",), False, True), ("image,text", True, True)])
def test_components(models, components, image_q, text_q):
    q = vitq.quantize(models["CLIPModel"], vitq.QuantConfig(components=components), calib=calib_for(None), progress=False)
    assert isinstance(q.vision_model.encoder.layers[0].mlp.fc1, QuantLinear) == image_q
    assert isinstance(q.visual_projection, QuantLinear) == image_q
    assert isinstance(q.text_model.encoder.layers[0].mlp.fc1, QuantLinear) == text_q


def test_exclusion_patterns(models):
    cfg = vitq.QuantConfig(components="image", exclude=("*.layers.0.self_attn.q_proj", "visual_projection"))
    q = vitq.quantize(models["CLIPModel"], cfg, calib=calib_for(None), progress=False)
    layer0 = q.vision_model.encoder.layers[0]
    assert not isinstance(layer0.self_attn.q_proj, QuantLinear)
    assert not isinstance(q.visual_projection, QuantLinear)
    # the LayerNorm feeding an excluded q_proj is not quantized; k and v quantize their own input
    assert not isinstance(layer0.layer_norm1, QuantLayerNorm)
    assert layer0.self_attn.k_proj.input_quantizer.role == "post_ln"
    assert isinstance(q.vision_model.encoder.layers[1].layer_norm1, QuantLayerNorm)


def test_unsupported_model_and_component():
    with pytest.raises(ModelError, match="cannot tell the image or text tower of a Sequential") as err:
        prepare(torch.nn.Sequential(torch.nn.Linear(2, 2)), baseline_scheme(vitq.QuantConfig()))
    assert "CLIPModel" in err.value.hint
    import transformers as T

    vit = T.ViTModel(T.ViTConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32, image_size=16, patch_size=8))
    with pytest.raises(ConfigError, match="no text component"):
        vitq.quantize(vit, vitq.QuantConfig(components="text"), calib=[torch.randn(1, 3, 16, 16)], progress=False)


def test_missing_calibration_modality(models):
    with pytest.raises(ConfigError, match="no text"):
        vitq.quantize(models["CLIPModel"], vitq.QuantConfig(), calib=[torch.randn(2, 3, 32, 32)], progress=False)
