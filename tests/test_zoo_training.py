"""Pieces of the reference-model training scripts: stop/resume of the loop, the zero-shot head refit."""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
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


def test_refit_is_reproducible_for_a_seed():
    *_, head_a = _run(seed=3)
    *_, head_b = _run(seed=3)
    *_, head_c = _run(seed=4)
    assert torch.equal(head_a.weight, head_b.weight)
    assert not torch.equal(head_a.weight, head_c.weight)


def _loop(run_dir: Path, epochs: int, stop_after=None, resume=False):
    """train_loop on a tiny classifier of random uint8 images; returns the final weights."""
    run_dir.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (32, 3, 64, 64), dtype=torch.uint8, generator=g)
    labels = torch.arange(4).repeat(8)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(4), torch.nn.Flatten(), torch.nn.Linear(48, 4))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    args = SimpleNamespace(batch_size=8, epochs=epochs, warmup=1.0, cooldown=0.5, run_dir=run_dir, resume=resume,
                           seed=0, low_res=32, low_res_epochs=1, stop_after=stop_after)

    def loss_fn(x, y, _g):
        return F.cross_entropy(model(x).float(), y)

    zt.train_loop(args, model, optimizer, images, labels, loss_fn, lambda: {}, zt.AugConfig())
    return model[2].weight.detach().clone()


def test_stop_after_then_resume_equals_an_uninterrupted_run(tmp_path):
    straight = _loop(tmp_path / "straight", epochs=3)
    with pytest.raises(SystemExit) as stop:
        _loop(tmp_path / "split", epochs=3, stop_after=1)
    assert stop.value.code == 0
    assert torch.load(tmp_path / "split" / "last.pt", weights_only=False)["state"]["epoch"] == 1
    resumed = _loop(tmp_path / "split", epochs=3, resume=True)
    torch.testing.assert_close(resumed, straight)


def test_stop_after_an_epoch_already_done_is_refused(tmp_path):
    with pytest.raises(SystemExit):
        _loop(tmp_path / "run", epochs=3, stop_after=2)
    with pytest.raises(SystemExit, match="already past epoch 2"):
        _loop(tmp_path / "run", epochs=3, stop_after=1, resume=True)
