"""P4Q: prompts through the text tower's input embeddings, the QAdapter, the losses, and the method
end to end on zoo:clip-tiny (training, save/load, evaluation, resume). Its data-parallel test is in
test_distributed.py, early in the run."""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F

from vitq.models.prompting import (PromptTokens, attach_image_adapter, prompt_tokens, prompted_text_features,
                                   text_length_limit, token_table)
from vitq.nn import LearnedPrompt, QAdapter


class WordTokenizer:
    """A word-level stand-in for CLIP's tokenizer: start 0, end 119 (the highest id, as CLIP's end
    token is), pad 1."""

    pad_token_id = 1
    model_max_length = 77

    def __call__(self, text, add_special_tokens=True, **_):
        if isinstance(text, list):
            rows = [self(t, add_special_tokens)["input_ids"] for t in text]
            width = max(map(len, rows))
            ids = torch.tensor([r + [1] * (width - len(r)) for r in rows])
            return {"input_ids": ids, "attention_mask": (torch.arange(width)[None] < torch.tensor([len(r) for r in rows])[:, None]).long()}
        ids = [3 + (sum(map(ord, w)) * 7) % 115 for w in text.replace(".", " .").split()]
        return {"input_ids": [0] + ids + [119] if add_special_tokens else ids}


def _template_prompt(model, tokenizer, words="a photo of a"):
    init = tokenizer(words, add_special_tokens=False)["input_ids"]
    prompt = LearnedPrompt(len(init), token_table(model).weight.shape[1])
    with torch.no_grad():
        prompt.ctx.copy_(token_table(model)(torch.tensor(init)))
    return prompt


def _features(out):
    return out if torch.is_tensor(out) else out.pooler_output


@pytest.mark.parametrize("kind", ["CLIPModel", "zoo"])
def test_prompt_through_input_embeddings_equals_the_written_template(models, kind):
    """Context vectors equal to the words of "a photo of a" give exactly the text features of the
    written prompt: CLIP's text transformer (run from its parts) and a BERT tower (inputs_embeds)."""
    if kind == "zoo":
        from vitq.models.loading import load_model
        from vitq.models.tokenizers import resolve_tokenizer

        model = load_model("zoo:clip-tiny").eval()
        tokenizer = resolve_tokenizer(model)
    else:
        model, tokenizer = models["CLIPModel"], WordTokenizer()
    names = ["airplane", "golden retriever", "x ray tube"]
    prompt = _template_prompt(model, tokenizer)
    tokens = prompt_tokens(tokenizer, names, prompt.n_ctx, "end", text_length_limit(model, tokenizer))
    with torch.no_grad():
        mine = prompted_text_features(model, tokens, prompt)
        ref = _features(model.get_text_features(**tokenizer([f"a photo of a {n}." for n in names], padding=True, return_tensors="pt")))
    assert torch.allclose(mine, ref, atol=1e-5), (mine - ref).abs().max()
    with torch.no_grad():
        prompt.ctx[0] += torch.randn(prompt.ctx.shape[1])  # a context vector that moves moves the features
        # (not by a constant: the first LayerNorm removes a shift of every channel alike)
        assert not torch.allclose(prompted_text_features(model, tokens, prompt), ref, atol=1e-3)


def test_class_name_positions_lay_out_the_context_slots():
    tok = WordTokenizer()
    name = tok("red fox", add_special_tokens=False)["input_ids"]
    period = tok(".", add_special_tokens=False)["input_ids"]
    for position, slots in {"end": [0, 1, 2, 3, -1, -1], "front": [-1, -1, 0, 1, 2, 3], "middle": [0, 1, -1, -1, 2, 3]}.items():
        t = prompt_tokens(tok, ["red fox"], 4, position)
        assert t.ctx_index[0].tolist() == [-1] + slots + [-1, -1], position
        words = [i for i, s in zip(t.input_ids[0].tolist()[1:7], slots) if s < 0]
        assert words == name, position
        assert t.input_ids[0, -2:].tolist() == period + [119] and int(t.end[0]) == 8


def test_adapter_starts_as_the_identity_of_the_mix_and_mixes_by_the_ratio():
    proj = torch.nn.Linear(6, 8)
    adapter = QAdapter(8, 2, bits=8)
    x = torch.randn(5, 6)
    adapted = attach_image_adapter_to(proj, adapter, 0.2)
    adapter.calibrate_inputs(proj(x).detach())
    with torch.no_grad():
        assert torch.allclose(adapted(x), 0.8 * proj(x), atol=1e-6)  # zero second layer: f' = (1 - α) f
        adapter.fc2.weight.normal_()
        adapter.calibrate_inputs(proj(x))
        f = proj(x)
        assert torch.allclose(adapted(x), 0.2 * adapter(f) + 0.8 * f, atol=1e-6)
        float_out = adapter.fc2(F.relu(adapter.fc1(f)))
    # the QFC layers quantize: the 8-bit adapter is close to, but not, its float layers
    fc = adapter.fc1
    assert fc.weight_quantizer.active and fc.input_quantizer.active and adapter.fc2.input_quantizer.active
    with torch.no_grad():
        plain = F.linear(F.relu(F.linear(f, adapter.fc1.weight, adapter.fc1.bias)), adapter.fc2.weight, adapter.fc2.bias)
    assert 0 < (float_out - plain).abs().max() < 0.05 * plain.abs().max()


def attach_image_adapter_to(projection, adapter, ratio):
    from vitq.nn import AdaptedProjection

    return AdaptedProjection(projection, adapter, ratio)


def test_p4q_loss_is_cross_entropy_plus_weighted_soft_cross_entropy():
    from vitq.methods.p4q import p4q_loss

    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    teacher = torch.tensor([[0.0, 0.0], [1.0, 0.0]])
    labels = torch.tensor([0, 0])
    ls = torch.log_softmax(logits, -1)
    ce = -(ls[0, 0] + ls[1, 0]) / 2
    pt = torch.softmax(teacher, -1)
    kd = -(pt * ls).sum(-1).mean()
    assert torch.allclose(p4q_loss(logits, labels, teacher, "cls"), ce)
    assert torch.allclose(p4q_loss(logits, labels, teacher, "kd"), kd)
    assert torch.allclose(p4q_loss(logits, labels, teacher, "both", kd_weight=0.5), ce + 0.5 * kd)


def test_multi_optimizer_state_round_trips():
    from vitq.train import MultiOptimizer

    a, b = torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(2))
    opt = MultiOptimizer([torch.optim.SGD([a], lr=0.1, momentum=0.9), torch.optim.AdamW([b], lr=0.01)])
    for _ in range(2):
        opt.zero_grad()
        (a.sum() * 2 + (b ** 2).sum()).backward()
        opt.step()
    sd = opt.state_dict()
    assert sorted(sd["state"]) == [0, 1] and [g["params"] for g in sd["param_groups"]] == [[0], [1]]
    a2, b2 = torch.nn.Parameter(a.detach().clone()), torch.nn.Parameter(b.detach().clone())
    other = MultiOptimizer([torch.optim.SGD([a2], lr=0.1, momentum=0.9), torch.optim.AdamW([b2], lr=0.01)])
    other.load_state_dict(__import__("copy").deepcopy(sd))  # as from a checkpoint file: no shared buffers
    for o in (opt, other):
        o.zero_grad()
    (a.sum() * 2 + (b ** 2).sum()).backward()
    (a2.sum() * 2 + (b2 ** 2).sum()).backward()
    opt.step()
    other.step()
    assert torch.equal(a, a2) and torch.equal(b, b2)


# -- the method end to end --------------------------------------------------------------------
COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220)}


@pytest.fixture(scope="module")
def colour_folder(tmp_path_factory):
    from PIL import Image

    root = tmp_path_factory.mktemp("colours")
    g = torch.Generator().manual_seed(0)
    for name, rgb in COLOURS.items():
        (root / name).mkdir()
        for i in range(8):
            noise = torch.randint(-25, 25, (32, 32, 3), generator=g)
            pixels = (torch.tensor(rgb) + noise).clamp(0, 255).to(torch.uint8).numpy()
            Image.fromarray(pixels).save(root / name / f"{i}.png")
    return root


def _p4q(folder, bits="8-8-8", **options):
    import vitq
    from vitq.data.calibration import calibration_batches
    from vitq.data.preprocess import image_transform
    from vitq.models.loading import load_model
    from vitq.models.tokenizers import resolve_tokenizer

    model = load_model("zoo:clip-tiny").eval()
    calib = calibration_batches(folder, 8, 8, image_transform(model), tokenizer=resolve_tokenizer(model), seed=0)
    opts = dict(train_data=str(folder), epochs=4, batch_size=8, prompt_lr=0.002, adapter_lr=0.01, n_ctx=4, **options)
    cfg = vitq.QuantConfig(method="p4q", bits=bits, seed=0, options=opts)
    return vitq.quantize(model, cfg, calib=calib, progress=False, inplace=True)


@pytest.fixture(scope="module")
def trained(colour_folder):
    return _p4q(colour_folder)


def test_p4q_trains_and_lowers_its_loss(trained):
    info = trained.vitq_info["p4q"]
    losses = [h["full_loss"] for h in info["history"]]
    assert len(losses) == 4 and losses[-1] < 0.8 * info["initial_loss"], (info["initial_loss"], losses)
    assert info["train_images"] == 24 and info["classes"] == 3 and info["base"] == "omse"


def test_p4q_model_saves_loads_and_evaluates_with_its_prompt(trained, colour_folder, tmp_path):
    import vitq
    from vitq.models.prompting import image_adapter, learned_prompt

    vitq.save(trained, tmp_path / "m")
    loaded = vitq.load(tmp_path / "m")
    assert learned_prompt(loaded) is not None and image_adapter(loaded) is not None
    assert torch.equal(learned_prompt(loaded).ctx, learned_prompt(trained).ctx)
    pixels = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        a, b = trained.get_image_features(pixel_values=pixels), loaded.get_image_features(pixel_values=pixels)
    assert torch.allclose(_features(a), _features(b), atol=1e-6)
    r1 = vitq.evaluate(trained, "zero-shot", data=str(colour_folder), progress=False)
    r2 = vitq.evaluate(loaded, "zero-shot", data=str(colour_folder), progress=False)
    assert r1["metrics"] == r2["metrics"] and r1["templates"][0].startswith("learned prompt")


def test_p4q_resume_equals_an_uninterrupted_run(trained, colour_folder, tmp_path):
    from vitq.models.prompting import image_adapter, learned_prompt

    torch.manual_seed(12345)  # the global RNG stands elsewhere than for `trained`: the seed alone must decide
    _p4q(colour_folder, checkpoint_dir=str(tmp_path / "ck"), stop_after=1)
    resumed = _p4q(colour_folder, checkpoint_dir=str(tmp_path / "ck"), resume=True)
    assert torch.equal(learned_prompt(resumed).ctx, learned_prompt(trained).ctx)
    for (k, v), (_, w) in zip(image_adapter(resumed).state_dict().items(), image_adapter(trained).state_dict().items()):
        assert torch.equal(v, w), k
    from vitq.errors import ConfigError

    with pytest.raises(ConfigError, match="other settings"):
        _p4q(colour_folder, checkpoint_dir=str(tmp_path / "ck"), resume=True, kd_weight=0.5)


def test_p4q_refuses_what_it_cannot_do(models, colour_folder):
    import vitq
    from vitq.errors import ConfigError, ModelError

    from vitq.methods import get_method

    with pytest.raises(ConfigError, match="learns nothing"):
        get_method("p4q").parse_options({"prompt": False, "adapter": False})
    with pytest.raises(ConfigError, match="no training data"):
        vitq.quantize(__import__("vitq.models.loading", fromlist=["load_model"]).load_model("zoo:clip-tiny"),
                      vitq.QuantConfig(method="p4q"), calib=[torch.rand(2, 3, 64, 64)], progress=False)
    with pytest.raises(ModelError, match="dual encoder"):
        vitq.quantize(models["ViTModel"], vitq.QuantConfig(method="p4q", options={"train_data": str(colour_folder)}), calib=[torch.rand(2, 3, 32, 32)], progress=False)


def test_quantized_linear_probe_folds_the_scaler_and_quantizes_per_class():
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    from vitq.eval.linear_probe import fit_probe, quantized_classifier

    g = torch.Generator().manual_seed(0)
    x = torch.randn(300, 12, generator=g).numpy() * 3 + 1
    y = (x[:, :3].argmax(1))
    scaler = StandardScaler().fit(x)
    probe = LogisticRegression(max_iter=500).fit(scaler.transform(x), y)
    w8, b8 = quantized_classifier(probe, scaler, 8)
    exact = probe.decision_function(scaler.transform(x))
    folded = x @ w8.T + b8
    step = abs(w8).max(1) / 127
    assert abs(folded - exact).max() <= (abs(x).sum(1).max() * step.max() / 2) + 1e-4  # only the rounding of W differs
    w2, _ = quantized_classifier(probe, scaler, 2)
    assert all(len(set(row.round(6))) <= 4 for row in w2)
    out8 = fit_probe(x, y, x, y, c_values=(1.0,), bits=8)
    out2 = fit_probe(x, y, x, y, c_values=(1.0,), bits=2)
    plain = fit_probe(x, y, x, y, c_values=(1.0,))
    assert abs(out8["top1"] - plain["top1"]) <= 0.02 and out2["top1"] < plain["top1"]
