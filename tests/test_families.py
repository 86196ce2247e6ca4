"""Models found by structure: the newer families on tiny random configs of their real classes, a
subclass, a torch.compile'd model, a user-registered block layout, and evaluation of a model vitq
cannot quantize."""

import pytest
import torch
from conftest import sample_inputs

import vitq
from vitq.errors import ModelError
from vitq.models.adapter import BlockRoles, adapter_of, register_block_roles
from vitq.nn import QuantLinear, QuantMatMul, quantizers, set_mode

SMALL = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64)


def _tiny(name):
    import transformers as T

    torch.manual_seed(0)
    text = dict(vocab_size=100, pad_token_id=1, bos_token_id=0, eos_token_id=2, **SMALL)
    vision = dict(image_size=32, patch_size=8, **SMALL)
    return {
        "SiglipModel": lambda: T.SiglipModel(T.SiglipConfig(text_config=text, vision_config=vision)),
        "Siglip2Model": lambda: T.Siglip2Model(T.Siglip2Config(text_config=text, vision_config=dict(num_patches=16, patch_size=8, **SMALL))),
        "Dinov2Model": lambda: T.Dinov2Model(T.Dinov2Config(image_size=32, patch_size=8, **SMALL)),
        "BeitForImageClassification": lambda: T.BeitForImageClassification(T.BeitConfig(image_size=32, patch_size=8, num_labels=3,
                                                                                         use_relative_position_bias=True, **SMALL)),
        "OwlViTModel": lambda: T.OwlViTModel(T.OwlViTConfig(text_config=text, vision_config=vision)),
        "OwlViTVisionModel": lambda: T.OwlViTVisionModel(T.OwlViTVisionConfig(**vision)),
    }[name]().eval()


def _batch(name, seed=1, n=3):
    g = torch.Generator().manual_seed(seed)
    batch = {}
    if name.startswith("Siglip2"):
        batch = {"pixel_values": torch.randn(n, 16, 3 * 8 * 8, generator=g), "pixel_attention_mask": torch.ones(n, 16, dtype=torch.long),
                 "spatial_shapes": torch.tensor([[4, 4]] * n)}
    elif "Text" not in name:
        batch = {"pixel_values": torch.randn(n, 3, 32, 32, generator=g)}
    if name in ("SiglipModel", "Siglip2Model", "OwlViTModel"):
        ids = torch.randint(3, 100, (n, 7), generator=g)
        ids[:, -1] = 2
        batch.update(input_ids=ids, attention_mask=torch.ones_like(ids))
    return batch


def _encode(model, batch):
    a = adapter_of(model)
    with torch.no_grad():
        return [a.run(model, c, batch) for c in a.components]


NEW = ["SiglipModel", "Siglip2Model", "Dinov2Model", "BeitForImageClassification", "OwlViTModel", "OwlViTVisionModel"]
TOWERS = {"SiglipModel": {"image", "text"}, "Siglip2Model": {"image", "text"}, "OwlViTModel": {"image", "text"},
          "Dinov2Model": {"image"}, "BeitForImageClassification": {"image"}, "OwlViTVisionModel": {"image"}}


@pytest.mark.parametrize("name", NEW)
def test_new_families_quantize_and_keep_the_float_function(name, tmp_path):
    model = _tiny(name)
    adapter = adapter_of(model)
    assert set(adapter.components) == TOWERS[name]
    for comp in adapter.components:
        assert len(adapter.blocks(comp)) == 2
    batch = _batch(name)
    before = _encode(model, batch)
    q = vitq.quantize(model, vitq.QuantConfig(method="minmax", bits="W8A8"), calib=[_batch(name, seed=5, n=4)], progress=False)
    linears = [m for m in q.modules() if isinstance(m, QuantLinear)]
    matmuls = [m for m in q.modules() if isinstance(m, QuantMatMul)]
    assert len(matmuls) == 2 * 2 * len(adapter.components) and len(linears) >= 12 * len(adapter.components)
    after = _encode(q, batch)
    for a, b in zip(before, after):
        cos = torch.nn.functional.cosine_similarity(a.flatten(1), b.flatten(1)).min()
        assert 0.9 < cos < 0.999999  # quantized, and still the same function
    set_mode(q, "fp")
    for a, b in zip(before, _encode(q, batch)):
        assert torch.allclose(a, b, atol=1e-5), (a - b).abs().max()
    set_mode(q, "quant")
    back = vitq.load(vitq.save(q, tmp_path / "q"))
    for a, b in zip(after, _encode(back, batch)):
        assert torch.equal(a, b)


@pytest.mark.parametrize("name", ["SiglipModel", "Dinov2Model", "BeitForImageClassification"])
def test_new_families_take_repq_vit(name):
    model = _tiny(name)
    batch = _batch(name)
    q = vitq.quantize(model, vitq.QuantConfig(method="repq-vit", bits="W4A4"), calib=[_batch(name, seed=5, n=8)], progress=False)
    assert not [n for n, p in quantizers(q) if p.role != "weight" and p.kind == "uniform" and p.axis is not None]
    assert any(p.kind == "log2_parity" for _, p in quantizers(q))
    set_mode(q, "fp")
    for a, b in zip(_encode(model, batch), _encode(q, batch)):
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-5)


def test_subclass_and_compiled_models_are_found_by_structure(models, tmp_path):
    import transformers as T

    class MyViT(T.ViTForImageClassification):
        """A user's subclass: vitq used to refuse it by class name."""

    base = models["ViTForImageClassification"]
    mine = MyViT(base.config).eval()
    mine.load_state_dict(base.state_dict())
    x = sample_inputs()["pixel_values"]
    calib = [sample_inputs(seed=5)["pixel_values"]]
    q = vitq.quantize(mine, vitq.QuantConfig(bits="W8A8"), calib=calib, progress=False)
    ref = vitq.quantize(base, vitq.QuantConfig(bits="W8A8"), calib=calib, progress=False)
    with torch.no_grad():
        assert torch.equal(q(pixel_values=x).logits, ref(pixel_values=x).logits)
    back = vitq.load(vitq.save(q, tmp_path / "mine"))  # saved as the transformers class it derives from
    assert type(back).__name__ == "ViTForImageClassification"
    compiled = torch.compile(base)
    qc = vitq.quantize(compiled, vitq.QuantConfig(bits="W8A8"), calib=calib, progress=False)
    with torch.no_grad():
        assert torch.equal(qc(pixel_values=x).logits, ref(pixel_values=x).logits)


def test_a_block_layout_vitq_does_not_know_can_be_registered():
    """An architecture with other layer names: no blocks are found until its layout is registered."""
    from torch import nn

    class Attn(nn.Module):
        def __init__(self, d):
            super().__init__()
            self.wq, self.wk, self.wv, self.wo = (nn.Linear(d, d) for _ in range(4))

    class OddBlock(nn.Module):
        def __init__(self, d=16):
            super().__init__()
            self.pre, self.post = nn.LayerNorm(d), nn.LayerNorm(d)
            self.mixer = Attn(d)
            self.up, self.down = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)

        def forward(self, x):
            h = self.pre(x)
            a = torch.softmax(self.mixer.wq(h) @ self.mixer.wk(h).transpose(1, 2) / 4, -1) @ self.mixer.wv(h)
            x = x + self.mixer.wo(a)
            return x + self.down(torch.nn.functional.gelu(self.up(self.post(x))))

    class Odd(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Conv2d(3, 16, 4, 4)
            self.blocks = nn.ModuleList([OddBlock(), OddBlock()])

        def forward(self, pixel_values):
            x = self.embed(pixel_values).flatten(2).transpose(1, 2)
            for b in self.blocks:
                x = b(x)
            return x.mean(1)

    torch.manual_seed(0)
    model = Odd().eval()
    with pytest.raises(ModelError, match="no transformer blocks") as err:
        vitq.quantize(model, vitq.QuantConfig(bits="W8A8"), calib=[torch.randn(2, 3, 16, 16)], progress=False)
    assert "register_block_roles" in err.value.hint
    register_block_roles(OddBlock, {"attention": "mixer", "q": "mixer.wq", "k": "mixer.wk", "v": "mixer.wv", "out": "mixer.wo",
                                    "fc1": "up", "fc2": "down", "ln_attn": "pre", "ln_mlp": "post"})
    try:
        assert adapter_of(model).blocks("image") == ["blocks.0", "blocks.1"]
        q = vitq.quantize(model, vitq.QuantConfig(bits="W8A8"), calib=[torch.randn(2, 3, 16, 16)], progress=False)
        assert type(q.blocks[0].pre).__name__ == "QuantLayerNorm" and isinstance(q.blocks[1].down, QuantLinear)
        x = torch.randn(2, 3, 16, 16)
        set_mode(q, "fp")
        with torch.no_grad():
            assert torch.allclose(q(pixel_values=x), model(pixel_values=x), atol=1e-5)
    finally:
        from vitq.models import adapter as adapter_module

        adapter_module._REGISTERED.pop("OddBlock", None)
    with pytest.raises(ModelError, match="unknown block roles colour"):
        BlockRoles.from_dict({"attention": "a", "out": "o", "fc1": "f", "fc2": "g", "colour": "red"})


def test_a_model_vitq_cannot_quantize_still_evaluates(tmp_path):
    """A convnet has no transformer blocks to quantize, but top-1 and cost need only its outputs."""
    import transformers as T
    from PIL import Image

    torch.manual_seed(0)
    net = T.ResNetForImageClassification(T.ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], num_labels=2)).eval()
    for c, color in (("0", (250, 10, 10)), ("1", (10, 10, 250))):
        (tmp_path / c).mkdir()
        for i in range(3):
            Image.new("RGB", (32, 32), color).save(tmp_path / c / f"{i}.png")
    from vitq.data import ResizeCropNormalize

    out = vitq.evaluate(net, "top1", tmp_path, transform=ResizeCropNormalize(32), label_map="index", progress=False)
    assert out["num_examples"] == 6 and 0.0 <= out["metrics"]["top1"] <= 1.0
    cost = vitq.evaluate(net, "cost")
    assert cost["cost"]["size"]["params"] == sum(p.numel() for p in net.parameters()) and cost["cost"]["compute"]["flops"] > 0
    with pytest.raises(ModelError, match="no transformer blocks"):
        vitq.quantize(net, vitq.QuantConfig(bits="W8A8"), calib=[torch.randn(2, 3, 32, 32)], progress=False)
