"""CLAMP-ViT: the synthesis losses, the contrastive fitness, the evolutionary search, mixed
precision under two budgets, the method end to end (data-free), and the commands around it."""

from __future__ import annotations

import itertools
import json
import math
import random

import pytest
import torch
import torch.nn.functional as F

import vitq
from test_reconstruction import _calib, _vit
from vitq.calib.bitalloc import choose_bits
from vitq.data.synthetic import SynthesisConfig, patch_contrastive, patch_similarity_entropy, synthesize
from vitq.errors import ConfigError
from vitq.methods.clamp import contrastive_fitness, evolve


def _patch_contrastive_by_hand(grid, window, top_n, temperature):
    b, side, _, c = grid.shape
    f = F.normalize(grid.reshape(b, side * side, c), dim=-1)
    total, count = 0.0, 0
    for n in range(b):
        for i in range(side * side):
            ri, ci = divmod(i, side)
            sims = {j: float(f[n, i] @ f[n, j]) / temperature for j in range(side * side) if j != i}
            near = [j for j in sims if abs(divmod(j, side)[0] - ri) <= window // 2 and abs(divmod(j, side)[1] - ci) <= window // 2]
            pos = sorted(near, key=lambda j: -sims[j])[:top_n]
            num = math.log(sum(math.exp(sims[j]) for j in pos))
            den = math.log(sum(math.exp(s) for s in sims.values()))
            total += den - num
            count += 1
    return total / count


@pytest.mark.parametrize("window,top_n", [(3, 1), (3, 2), (5, 4)])
def test_patch_contrastive_is_infonce_over_the_top_n_of_each_window(window, top_n):
    grid = torch.randn(2, 5, 5, 6, generator=torch.Generator().manual_seed(0))
    got = float(patch_contrastive(grid, window, top_n, temperature=0.5))
    assert got == pytest.approx(_patch_contrastive_by_hand(grid, window, top_n, 0.5), rel=1e-5)


def test_patch_contrastive_prefers_locally_coherent_patches():
    """Features that vary smoothly over the grid (neighbours alike, far patches not) score lower than
    random ones: what the synthesis pushes the images towards."""
    side = 6
    r, c = torch.meshgrid(torch.arange(side).float(), torch.arange(side).float(), indexing="ij")
    smooth = torch.stack([torch.cos(r), torch.sin(r), torch.cos(c), torch.sin(c)], -1)[None]
    noisy = torch.randn(1, side, side, 4, generator=torch.Generator().manual_seed(1))
    assert float(patch_contrastive(smooth)) < float(patch_contrastive(noisy)) - 0.5


def test_patch_similarity_entropy_is_higher_for_diverse_similarities():
    same = torch.ones(1, 4, 4, 8) + 1e-3 * torch.randn(1, 4, 4, 8, generator=torch.Generator().manual_seed(0))
    varied = torch.randn(1, 4, 4, 8, generator=torch.Generator().manual_seed(0))
    assert float(patch_similarity_entropy(varied)) > float(patch_similarity_entropy(same)) + 1.0


def test_contrastive_fitness_is_the_infonce_of_each_token_against_its_own_reference():
    g = torch.Generator().manual_seed(0)
    ref = torch.randn(3, 7, 5, generator=g)
    q = ref + 0.3 * torch.randn(3, 7, 5, generator=g)
    by_hand = 0.0
    for n in range(3):
        a = F.normalize(q[n] - q[n].mean(0), dim=-1)
        b = F.normalize(ref[n] - ref[n].mean(0), dim=-1)
        by_hand += float(F.cross_entropy(a @ b.T / 0.2, torch.arange(7)))
    assert float(contrastive_fitness(q, ref, 0.2)) == pytest.approx(by_hand / 3, rel=1e-5)
    # more perturbation, worse fitness
    worse = ref + 1.0 * torch.randn(3, 7, 5, generator=g)
    assert float(contrastive_fitness(ref, ref)) < float(contrastive_fitness(q, ref)) < float(contrastive_fitness(worse, ref))


def test_contrastive_fitness_reads_a_patch_embedding_map_as_tokens():
    ref = torch.randn(2, 4, 3, 3, generator=torch.Generator().manual_seed(0))  # (B, C, h, w)
    as_tokens = ref.flatten(2).transpose(1, 2)
    q = ref + 0.5
    assert float(contrastive_fitness(q, ref, conv=True)) == pytest.approx(
        float(contrastive_fitness(q.flatten(2).transpose(1, 2), as_tokens)), rel=1e-6)


def test_evolution_finds_a_better_point_and_never_loses_the_start():
    target = [1.3, 0.8]
    score = lambda f: sum((a - b) ** 2 for a, b in zip(f, target))  # noqa: E731
    best, fitness, evals = evolve(score, 2, population=8, tournament=4, generations=200, mutation=0.1, rng=random.Random(0))
    assert evals == 208
    assert fitness == pytest.approx(score(best))
    assert fitness < 0.01 < score([1.0, 1.0])
    # elitist: a score no mutation can improve keeps the start
    best, fitness, _ = evolve(lambda f: score(f) if f == [1.0, 1.0] else 99.0, 2, 8, 4, 20, 0.1, random.Random(0))
    assert best == [1.0, 1.0]
    again = evolve(score, 2, 8, 4, 50, 0.1, random.Random(3))
    assert again == evolve(score, 2, 8, 4, 50, 0.1, random.Random(3))


def test_choose_bits_with_two_budgets_is_the_exact_optimum():
    g = torch.Generator().manual_seed(0)
    sizes = [2, 1, 1, 2]
    pairs = [(w, a) for w in (4, 8) for a in (4, 8)]
    costs = [{p: float(torch.rand(1, generator=g)) * (12 - p[0] - p[1] / 2) for p in pairs} for _ in sizes]
    w_target, a_target = 5.5, 6.0
    best = None
    for combo in itertools.product(pairs, repeat=len(sizes)):
        if sum(s * c[0] for s, c in zip(sizes, combo)) <= w_target * sum(sizes) and sum(c[1] for c in combo) <= a_target * len(sizes):
            total = sum(cost[c] for cost, c in zip(costs, combo))
            best = total if best is None else min(best, total)
    picked = choose_bits(costs, sizes, w_target, a_target)
    assert sum(cost[c] for cost, c in zip(costs, picked)) == pytest.approx(best)
    assert sum(c[1] for c in picked) <= a_target * len(sizes)
    with pytest.raises(ConfigError, match="activation bits"):
        choose_bits(costs, sizes, 8.0, 3.0)


def test_options_are_checked_before_any_work():
    for bad in ({"recipe": "gan"}, {"top_n": 9}, {"neighbourhood": 4}, {"mutation": 1.5}, {"population": 0}):
        with pytest.raises(ConfigError):
            vitq.methods.get_method("clamp-vit").parse_options(bad)
    with pytest.raises(ConfigError, match="outside the bit choices"):
        vitq.methods.get_method("clamp-vit-mp").parse_options({"target_a_bits": 9})


FAST = dict(steps=3, feedback_steps=2, batch_size=8, population=4, tournament=3, generations=4)


def test_synthesis_learns_the_targets_and_is_reproducible():
    model = _vit(layers=2)  # a random model is not shift- or flip-invariant: no jitter
    images = synthesize(model, 8, SynthesisConfig(steps=60, batch_size=8, jitter=0, seed=3), progress=False)
    with torch.no_grad():
        noise_logits = model(pixel_values=torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(3))).logits
        logits = model(pixel_values=images.pixel_values).logits
    hit = (logits.argmax(-1) == images.targets).float().mean()
    assert hit >= 0.75 and hit > (noise_logits.argmax(-1) == images.targets).float().mean()
    assert images.pixel_values.min() >= images.low.min() - 1e-6 and images.pixel_values.max() <= images.high.max() + 1e-6
    again = synthesize(model, 8, SynthesisConfig(steps=60, batch_size=8, jitter=0, seed=3), progress=False)
    assert torch.equal(images.pixel_values, again.pixel_values)
    assert all(p.requires_grad for p in model.parameters())  # the model's parameters are left as they were


def test_synthesis_lowers_the_patch_contrastive_loss():
    """The recipe's own term, alone (no guidance, priors or jitter), on an 8 x 8 patch grid."""
    import transformers as T

    from vitq.data.synthetic import _PatchTaps

    torch.manual_seed(0)
    model = T.ViTForImageClassification(T.ViTConfig(image_size=32, patch_size=4, num_labels=5, hidden_size=32, num_hidden_layers=2,
                                                    num_attention_heads=4, intermediate_size=64)).eval()

    def loss(x):
        with torch.no_grad(), _PatchTaps(model) as taps:
            model(pixel_values=x)
            return sum(float(patch_contrastive(g)) for g in taps.grids())

    start = synthesize(model, 4, SynthesisConfig(steps=0, batch_size=4, seed=1), progress=False)
    alone = dict(ce_weight=0.0, tv_weight=0.0, l2_weight=0.0, jitter=0)
    done = synthesize(model, 4, SynthesisConfig(steps=40, batch_size=4, lr=0.05, seed=1, **alone), progress=False)
    assert loss(done.pixel_values) < loss(start.pixel_values) - 0.3


def test_clamp_vit_is_data_free_searches_every_unit_and_saves(tmp_path):
    model = _vit(layers=2)
    cfg = vitq.QuantConfig(method="clamp-vit", bits="W4A8", num_calib=8, seed=0, components=("image",), options=FAST)
    q = vitq.quantize(model, cfg, calib=None, progress=False)
    info = q.vitq_info["clamp_vit"]
    assert info["data"] == "synthetic (clamp)" and len(info["cycles"]) == 2
    for cycle in info["cycles"]:
        assert cycle["units"] > 10 and cycle["fitness_after"] <= cycle["fitness_before"]
    again = vitq.quantize(model, cfg, calib=None, progress=False)
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        assert torch.equal(q(pixel_values=x).logits, again(pixel_values=x).logits)  # same seed, same model
        vitq.save(q, tmp_path / "q")
        assert torch.equal(vitq.load(tmp_path / "q")(pixel_values=x).logits, q(pixel_values=x).logits)


def test_the_search_improves_fidelity_on_real_calibration_data():
    """On the same (random-image) calibration data, the evolutionary search brings the quantized
    logits closer to full precision than the calibrated scales alone."""
    model = _vit(layers=2)
    calib = torch.cat(_calib(batches=2))
    x = torch.cat(_calib(seed=20, batches=2))
    with torch.no_grad():
        ref = model(pixel_values=x).logits
    errors = {}
    for search in (False, True):
        opts = dict(FAST, search=search, cycles=1, generations=30, population=8)
        q = vitq.quantize(model, vitq.QuantConfig(method="clamp-vit", bits="W3A4", components=("image",), options=opts),
                          calib=calib, progress=False)
        assert q.vitq_info["clamp_vit"]["data"] == "real"
        with torch.no_grad():
            errors[search] = float((q(pixel_values=x).logits - ref).pow(2).mean())
    assert errors[True] < errors[False]


def test_clamp_vit_mp_meets_both_budgets_and_shows_the_plan():
    model = _vit(layers=2)
    opts = dict(FAST, cycles=1, bit_choices=(4, 8), target_w_bits=6.0, target_a_bits=5.0)
    q = vitq.quantize(model, vitq.QuantConfig(method="clamp-vit-mp", bits="W4A8", num_calib=8, components=("image",), options=opts),
                      calib=None, progress=False)
    mp = q.vitq_info["clamp_vit"]["mixed_precision"]
    assert mp["average_w_bits"] <= 6.0 and mp["average_a_bits"] <= 5.0
    assert set(mp["modules"].values()) <= {"W4A4", "W4A8", "W8A4", "W8A8"} and len(mp["modules"]) == 4
    bits = {n: q.get_submodule(n).weight_quantizer.quantizer.bits for n, m in q.named_modules() if n.endswith("mlp.fc1")}
    for name, spec in mp["modules"].items():
        if name.endswith(":mlp"):
            assert bits[f"{name.split(':')[0]}.mlp.fc1"] == int(spec[1])


def test_clip_synthesis_guides_to_sentences_that_calibrate_the_text_tower():
    model = vitq.models.loading.load_model("zoo:clip-tiny")
    images = synthesize(model, 4, SynthesisConfig(steps=2, batch_size=4), progress=False)
    batch = next(iter(images))
    assert set(batch) == {"pixel_values", "input_ids", "attention_mask"} and images.sentences
    q = vitq.quantize(model, vitq.QuantConfig(method="minmax", bits="W8A8"), calib=images, progress=False)
    assert q.vitq_info["components"] == ["image", "text"]


def test_synth_command_writes_pngs_and_targets_and_quantize_takes_synthetic(tmp_path, capsys):
    from PIL import Image

    from vitq.cli import main

    out = tmp_path / "synth"
    assert main(["synth", "--model", "zoo:deit-tiny", "--num", "3", "--steps", "2", "--batch-size", "3", "--out", str(out), "--quiet"]) == 0
    pngs = sorted(out.glob("*.png"))
    assert len(pngs) == 3 and Image.open(pngs[0]).size == (64, 64)
    targets = json.loads((out / "targets.json").read_text())["images"]
    assert set(targets) == {p.name for p in pngs}
    assert main(["synth", "--model", "zoo:deit-tiny", "--num", "3", "--out", str(out)]) == 2  # exists: refused, kept
    assert len(list(out.glob("*.png"))) == 3
    with pytest.raises(SystemExit):  # argparse names the recipes
        main(["synth", "--model", "zoo:deit-tiny", "--recipe", "gan", "--out", str(tmp_path / "x")])
    assert main(["synth", "--model", "zoo:deit-tiny", "--top-n", "9", "--out", str(tmp_path / "x")]) == 2
    assert not (tmp_path / "x").exists()
    q_out = tmp_path / "q"
    assert main(["quantize", "--model", "zoo:deit-tiny", "--method", "minmax", "--calib", "synthetic", "--num-calib", "2",
                 "--synth-steps", "2", "--batch-size", "2", "--out", str(q_out), "--quiet"]) == 0
    assert "synthesised 2 calibration images" in capsys.readouterr().out
    assert main(["quantize", "--model", "zoo:clip-tiny", "--method", "p4q", "--calib", "synthetic", "--out", str(tmp_path / "p")]) == 2
    assert "trains on labelled images" in capsys.readouterr().err and not (tmp_path / "p").exists()
    assert main(["quantize", "--model", "zoo:deit-tiny", "--method", "minmax", "--calib", str(out), "--num-calib", "3",
                 "--out", str(tmp_path / "q2"), "--quiet"]) == 0  # the PNG folder calibrates like real images


def test_demo_falls_back_to_data_free_and_says_so(tmp_path, monkeypatch, capsys):
    from vitq.cli import main

    monkeypatch.setenv("VITQ_DATA", str(tmp_path / "nothing"))
    assert main(["demo", "--bits", "W8A8", "--num-calib", "2", "--synth-steps", "1", "--json", str(tmp_path / "d.json")]) == 0
    out = capsys.readouterr().out
    assert "falling back to data-free calibration" in out and "fidelity to full precision" in out
    rows = json.loads((tmp_path / "d.json").read_text())["rows"]
    assert rows[0]["cosine"] == pytest.approx(1.0) and 0.5 < rows[1]["cosine"] < 1.0 and rows[1]["calibration"] == "synthetic"


def test_feedback_moves_the_images_to_where_the_quantized_model_departs():
    model = _vit(layers=2)
    q = vitq.quantize(model, vitq.QuantConfig(method="minmax", bits="W3A3", components=("image",)), calib=_calib(batches=1), progress=False)
    start = synthesize(model, 8, SynthesisConfig(steps=0, batch_size=8, seed=2), progress=False)

    def kl(images):
        with torch.no_grad():
            p, r = q(pixel_values=images.pixel_values).logits, model(pixel_values=images.pixel_values).logits
        return float(F.kl_div(F.log_softmax(p, -1), F.log_softmax(r, -1), log_target=True, reduction="batchmean"))

    plain = dict(steps=30, batch_size=8, lr=0.05, ce_weight=0.0, tv_weight=0.0, l2_weight=0.0, jitter=0, seed=2)
    without = synthesize(model, 8, SynthesisConfig(feedback_weight=0.0, **plain), feedback=q, init=start, progress=False)
    with_fb = synthesize(model, 8, SynthesisConfig(feedback_weight=5.0, **plain), feedback=q, init=start, progress=False)
    assert kl(with_fb) > 2 * kl(without)
