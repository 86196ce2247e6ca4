"""The zero-shot head refit of the reference-model training (scripts/zero_shot_refit.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import zero_shot_refit as zsr  # noqa: E402


def _problem(seed: int):
    """Separable features, a frozen 'body' layer and a cosine head tied to fixed class prototypes."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(5, 16, generator=g)
    labels = torch.arange(5).repeat(40)
    feats = centres[labels] + 0.3 * torch.randn(200, 16, generator=g)
    torch.manual_seed(seed)
    body, head, text = torch.nn.Linear(16, 16), torch.nn.Linear(16, 8, bias=False), torch.nn.Linear(12, 8, bias=False)
    prototypes = torch.randn(5, 12, generator=g)

    def logits(f, _g):
        return 10 * F.normalize(head(body(f)), dim=-1) @ F.normalize(text(prototypes), dim=-1).T

    return feats, labels, body, head, text, logits


def _run(seed: int):
    feats, labels, body, head, text, logits = _problem(0)
    frozen = [p.detach().clone() for p in body.parameters()]
    params = [*head.parameters(), *text.parameters()]
    with torch.no_grad():
        before = F.cross_entropy(logits(feats, None), labels).item()
    report = zsr.refit(params, logits, feats, labels, seed, epochs=8, lr=1e-2, batch=50, evaluate=lambda: {})
    with torch.no_grad():
        after = F.cross_entropy(logits(feats, None), labels).item()
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
