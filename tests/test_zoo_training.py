"""Pieces of the reference-model training scripts: stop/resume of the loop, the zero-shot head refit."""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import drop_path as dp  # noqa: E402
import zero_shot_refit as zsr  # noqa: E402
import zoo_training as zt  # noqa: E402


def _problem(seed: int):
    """Separable features, a frozen 'body' layer and a cosine head tied to fixed class prototypes."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(5, 16, generator=g)
    labels = torch.arange(5).repeat(40)
    feats = centres[labels] + 0.3 * torch.randn(200, 16, generator=g)
    torch.manual_seed(seed)
    body, head, text = torch.nn.Linear(16, 16), torch.nn.Linear(16, 8, bias=False), torch.nn.Linear(12, 8, bias=False)
    prototypes = torch.randn(5, 12, generator=g)

    def logits(f):
        return 10 * F.normalize(head(body(f)), dim=-1) @ F.normalize(text(prototypes), dim=-1).T

    return feats, labels, body, head, text, logits


def _run(seed: int):
    feats, labels, body, head, text, logits = _problem(0)
    frozen = [p.detach().clone() for p in body.parameters()]
    params = [*head.parameters(), *text.parameters()]
    with torch.no_grad():
        before = F.cross_entropy(logits(feats), labels).item()
    report = zsr.refit(params, logits, feats, labels, seed, epochs=8, lr=1e-2, batch=50, evaluate=lambda: {})
    with torch.no_grad():
        after = F.cross_entropy(logits(feats), labels).item()
    return before, after, report, frozen, body, head


def test_refit_trains_only_the_head_and_lowers_the_loss():
    before, after, report, frozen, body, _ = _run(seed=0)
    assert after < 0.5 * before, (before, after)
    assert all(torch.equal(a, b) for a, b in zip(frozen, body.parameters())), "the frozen body changed"
    assert [h["epoch"] for h in report["history"]] == list(range(9))
    assert report["history"][-1]["loss"] < report["history"][1]["loss"]


def test_refit_with_several_class_vector_sets_minimises_their_mean_cross_entropy():
    feats, labels, body, head, text, logits = _problem(0)
    other = torch.randn(5, 12, generator=torch.Generator().manual_seed(7))

    def both(f):
        return logits(f), 10 * F.normalize(head(body(f)), dim=-1) @ F.normalize(text(other), dim=-1).T

    with torch.no_grad():
        first, second = both(feats)
        expected = (F.cross_entropy(first, labels) + F.cross_entropy(second, labels)) / 2
        assert torch.allclose(zsr.mean_cross_entropy((first, second), labels), expected)
        assert torch.allclose(zsr.mean_cross_entropy(first, labels), F.cross_entropy(first, labels))
        before = zsr.mean_cross_entropy(both(feats), labels).item()
    report = zsr.refit([*head.parameters(), *text.parameters()], both, feats, labels, 0, epochs=8, lr=1e-2,
                       batch=50, evaluate=lambda: {})
    with torch.no_grad():
        after = zsr.mean_cross_entropy(both(feats), labels).item()
    assert after < 0.5 * before, (before, after)
    assert report["history"][-1]["loss"] < report["history"][1]["loss"]


def test_refit_is_reproducible_for_a_seed():
    *_, head_a = _run(seed=3)
    *_, head_b = _run(seed=3)
    *_, head_c = _run(seed=4)
    assert torch.equal(head_a.weight, head_b.weight)
    assert not torch.equal(head_a.weight, head_c.weight)


def _loop(run_dir: Path, epochs: int, stop_after=None, resume=False, mixup=0.0, cutmix=0.0, drop_path=0.0):
    """train_loop on a tiny classifier of random uint8 images; returns the final weights."""
    run_dir.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (32, 3, 64, 64), dtype=torch.uint8, generator=g)
    labels = torch.arange(4).repeat(8)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(4), torch.nn.Flatten(), dp.DropPath(drop_path), torch.nn.Linear(48, 4))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    args = SimpleNamespace(batch_size=8, epochs=epochs, warmup=1.0, cooldown=0.5, run_dir=run_dir, resume=resume,
                           seed=0, low_res=32, low_res_epochs=1, stop_after=stop_after, mixup=mixup, cutmix=cutmix, mix_p=1.0)

    def loss_fn(x, y, _g):
        return F.cross_entropy(model(x).float(), y)

    zt.train_loop(args, model, optimizer, images, labels, loss_fn, lambda: {}, zt.AugConfig(), num_classes=4)
    return model[-1].weight.detach().clone()


@pytest.mark.parametrize("mixing", [dict(), dict(mixup=0.8, cutmix=1.0), dict(drop_path=0.5)])
def test_stop_after_then_resume_equals_an_uninterrupted_run(tmp_path, mixing):
    straight = _loop(tmp_path / "straight", epochs=3, **mixing)
    with pytest.raises(SystemExit) as stop:
        _loop(tmp_path / "split", epochs=3, stop_after=1, **mixing)
    assert stop.value.code == 0
    import json

    assert json.loads((tmp_path / "split" / "last" / "state.json").read_text())["state"]["epoch"] == 1
    assert (tmp_path / "split" / "epoch001.safetensors").is_file()
    resumed = _loop(tmp_path / "split", epochs=3, resume=True, **mixing)
    torch.testing.assert_close(resumed, straight)
    if mixing:  # mixing / drop path changes the run
        assert not torch.allclose(straight, _loop(tmp_path / "plain", epochs=3))


def test_stop_after_an_epoch_already_done_is_refused(tmp_path):
    with pytest.raises(SystemExit):
        _loop(tmp_path / "run", epochs=3, stop_after=2)
    with pytest.raises(SystemExit, match="already past epoch 2"):
        _loop(tmp_path / "run", epochs=3, stop_after=1, resume=True)


# -- DeiT-style distillation and --init-from ------------------------------------------------------
def _distill_args(teacher=None, weight=0.5, kind="hard", tau=1.0, **extra):
    return SimpleNamespace(teacher=teacher, distill_weight=weight, distill_kind=kind, distill_tau=tau, **extra)


def test_without_a_teacher_the_loss_is_plain_cross_entropy():
    g = torch.Generator().manual_seed(0)
    logits, y = torch.randn(6, 5, generator=g), torch.arange(6) % 5
    loss = zt.Distiller(_distill_args(), label_smoothing=0.1).loss(logits, y, None)
    torch.testing.assert_close(loss, F.cross_entropy(logits, y, label_smoothing=0.1))


def test_hard_distillation_mixes_true_and_teacher_argmax_labels():
    g = torch.Generator().manual_seed(1)
    logits, teacher, y = torch.randn(8, 5, generator=g), torch.randn(8, 5, generator=g), torch.arange(8) % 5
    d = zt.Distiller(_distill_args(weight=0.3))
    d.weight = 0.3  # as with a teacher loaded
    expected = 0.7 * F.cross_entropy(logits, y) + 0.3 * F.cross_entropy(logits, teacher.argmax(1))
    torch.testing.assert_close(d.loss(logits, y, teacher), expected)


def test_soft_distillation_is_minimised_by_matching_the_teacher():
    g = torch.Generator().manual_seed(2)
    teacher, y = 3 * torch.randn(8, 5, generator=g), torch.arange(8) % 5
    d = zt.Distiller(_distill_args(kind="soft", tau=2.0))
    d.weight = 1.0
    at_teacher = teacher.clone().requires_grad_(True)
    d.loss(at_teacher, y, teacher).backward()
    assert at_teacher.grad.abs().max() < 1e-6  # stationary at the teacher's logits (KL = 0)
    elsewhere = d.loss(teacher + torch.randn(8, 5, generator=g), y, teacher)
    assert elsewhere > d.loss(teacher, y, teacher)


def test_teacher_folder_is_loaded_frozen_and_gives_its_logits(tmp_path):
    from transformers import ResNetConfig, ResNetForImageClassification

    torch.manual_seed(0)
    names = ["goldfish", "tabby", "bus", "lemon", "acorn"]
    net = ResNetForImageClassification(ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic",
                                                    num_labels=5, id2label=dict(enumerate(names)))).eval()
    net.save_pretrained(tmp_path / "teacher")
    d = zt.Distiller(_distill_args(teacher=tmp_path / "teacher", weight=0.5), class_names=names)
    assert d.weight == 0.5 and not d.teacher.training
    assert not any(p.requires_grad for p in d.teacher.parameters())
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(d.targets(x), net(pixel_values=x).logits)
    assert d.report()["parameters"] == sum(p.numel() for p in net.parameters())
    d.weight = 0.0  # a teacher that would not count is not run
    assert d.targets(x) is None


def _setup_args(tmp_path, **overrides):
    base = dict(stop_after=None, epochs=3, threads=1, seed=0, run_dir=tmp_path / "run",
                init_from=None, teacher=None, distill_weight=0.5, distill_tau=1.0, mixup=0.0, cutmix=0.0, mix_p=1.0,
                randaug=0, randaug_m=9.0, randaug_mstd=0.5, repeat_aug=1)
    return SimpleNamespace(**{**base, **overrides})


@pytest.mark.parametrize("bad, message", [
    ({"distill_weight": 1.5}, "--distill-weight"),
    ({"distill_tau": 0.0}, "--distill-tau"),
    ({"teacher": Path("/nonexistent/teacher")}, "--teacher"),
    ({"init_from": Path("/nonexistent/epoch001.pt")}, "--init-from"),
    ({"drop_path": 1.0}, "--drop-path"),
    ({"drop_path": -0.1}, "--drop-path"),
    ({"randaug": -1}, "--randaug"),
    ({"randaug_m": 11.0}, "--randaug"),
    ({"repeat_aug": 0}, "--repeat-aug"),
])
def test_setup_refuses_bad_distillation_and_init_flags(tmp_path, bad, message):
    with pytest.raises(SystemExit, match=message):
        zt.setup(_setup_args(tmp_path, **bad))


def test_init_from_loads_epoch_or_full_checkpoints_but_not_over_a_resume(tmp_path):
    source = torch.nn.Linear(3, 2)
    torch.save(source.state_dict(), tmp_path / "epoch005.pt")
    torch.save({"model": source.state_dict(), "optimizer": {}}, tmp_path / "last-copy.pt")
    for path in (tmp_path / "epoch005.pt", tmp_path / "last-copy.pt"):
        target = torch.nn.Linear(3, 2)
        zt.init_weights(SimpleNamespace(init_from=path, resume=False, run_dir=tmp_path / "run"), target)
        torch.testing.assert_close(target.weight, source.weight)
    (tmp_path / "run" / "last").mkdir(parents=True)
    (tmp_path / "run" / "last" / "state.json").write_text("{}")
    untouched = torch.nn.Linear(3, 2)
    before = untouched.weight.detach().clone()
    zt.init_weights(SimpleNamespace(init_from=tmp_path / "epoch005.pt", resume=True, run_dir=tmp_path / "run"), untouched)
    torch.testing.assert_close(untouched.weight, before)  # --resume continues from RUN_DIR/last instead
    from safetensors.torch import save_file

    save_file(source.state_dict(), str(tmp_path / "epoch006.safetensors"))  # what the loop writes now
    target = torch.nn.Linear(3, 2)
    zt.init_weights(SimpleNamespace(init_from=tmp_path / "epoch006.safetensors", resume=False, run_dir=tmp_path / "new"), target)
    torch.testing.assert_close(target.weight, source.weight)


def test_a_teacher_with_other_classes_is_refused(tmp_path):
    from transformers import ResNetConfig, ResNetForImageClassification

    config = ResNetConfig(embedding_size=8, hidden_sizes=[8], depths=[1], layer_type="basic",
                          num_labels=3, id2label={0: "goldfish", 1: "bus", 2: "tabby"})
    ResNetForImageClassification(config).save_pretrained(tmp_path / "teacher")
    args = _distill_args(teacher=tmp_path / "teacher")
    with pytest.raises(SystemExit, match="first at index 1"):
        zt.Distiller(args, class_names=["goldfish", "tabby", "bus"])  # same names, other order
    with pytest.raises(SystemExit, match="3 classes differ from the 4"):
        zt.Distiller(args, class_names=["goldfish", "bus", "tabby", "lemon"])


def test_init_from_weights_of_another_shape_is_refused_clearly(tmp_path):
    torch.save(torch.nn.Linear(3, 2).state_dict(), tmp_path / "epoch001.pt")
    args = SimpleNamespace(init_from=tmp_path / "epoch001.pt", resume=False, run_dir=tmp_path / "run")
    with pytest.raises(SystemExit, match="does not fit this model"):
        zt.init_weights(args, torch.nn.Linear(4, 2))


def _constant_images(n: int) -> torch.Tensor:
    """Image i is filled with the value i, so a mixed image's mean says how much of whom it holds."""
    return torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1).expand(n, 3, 8, 8).clone()


@pytest.mark.parametrize("mixup,cutmix", [(0.8, 0.0), (0.0, 1.0), (0.8, 1.0)])
def test_mixed_targets_match_what_the_mixed_images_hold(mixup, cutmix):
    x, y = _constant_images(16), torch.arange(16)
    for seed in range(6):
        mixed, target = zt.mix_batch(x, y, torch.Generator().manual_seed(seed), 16, mixup, cutmix, p=1.0)
        assert mixed.shape == x.shape and target.shape == (16, 16)
        torch.testing.assert_close(target.sum(1), torch.ones(16))
        # Class k's image holds the value k: the target's expectation is the mixed image's mean.
        torch.testing.assert_close(mixed.mean(dim=(1, 2, 3)), target @ torch.arange(16.0))
        if cutmix > 0 and mixup == 0:  # CutMix pastes whole pixels: only the two images' values occur
            assert all(len(row.unique()) <= 2 for row in mixed.flatten(1))


def test_mixing_is_deterministic_off_by_default_and_skippable():
    x, y = torch.randn(8, 3, 8, 8), torch.arange(8) % 4
    a = zt.mix_batch(x, y, torch.Generator().manual_seed(5), 4, 0.8, 1.0, p=1.0)
    b = zt.mix_batch(x, y, torch.Generator().manual_seed(5), 4, 0.8, 1.0, p=1.0)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    untouched = torch.Generator().manual_seed(5)
    same_x, same_y = zt.mix_batch(x, y, untouched, 4, 0.0, 0.0, p=1.0)
    assert same_x is x and same_y is y
    # Off, no draw is taken: the documented runs without mixing replay exactly as before.
    assert torch.equal(untouched.get_state(), torch.Generator().manual_seed(5).get_state())
    kept_x, onehot = zt.mix_batch(x, y, torch.Generator().manual_seed(5), 4, 0.8, 1.0, p=0.0)
    assert torch.equal(kept_x, x) and torch.equal(onehot, F.one_hot(y, 4).float())
    # Probability targets go through the distillation loss like class indices.
    logits = torch.randn(8, 4, generator=torch.Generator().manual_seed(0))
    d = zt.Distiller(_distill_args())
    torch.testing.assert_close(d.loss(logits, onehot, None), d.loss(logits, y, None))


@pytest.mark.parametrize("bad", [dict(mixup=-0.1), dict(cutmix=-1.0), dict(mix_p=1.5)])
def test_setup_refuses_bad_mixing_flags(tmp_path, bad):
    with pytest.raises(SystemExit, match="--mixup"):
        zt.setup(_setup_args(tmp_path, **bad))


def test_repeated_augmentation_order():
    plain = zt.epoch_order(100, torch.Generator().manual_seed(0))
    torch.testing.assert_close(plain, torch.randperm(100, generator=torch.Generator().manual_seed(0)))  # unchanged
    rep = zt.epoch_order(100, torch.Generator().manual_seed(0), repeats=3)
    assert len(rep) == 100 and len(rep.unique()) == 34
    assert torch.equal(rep[:99].view(33, 3), rep[:99:3, None].expand(33, 3))  # copies sit side by side
    torch.testing.assert_close(rep[::3], plain[:34])
