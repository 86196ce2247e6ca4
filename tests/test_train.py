"""The training package: resume equals an uninterrupted run, checkpoints are safetensors + JSON
and atomic, the distillation losses (two processes averaging to one: tests/test_distributed.py)."""

import json

import pytest
import torch

from vitq.errors import ConfigError
from vitq.train import (TrainConfig, contrastive, hard_distillation, load_checkpoint, save_checkpoint, soft_cross_entropy,
                        soft_distillation, train)

X = torch.randn(64, 8, generator=torch.Generator().manual_seed(0))
Y = (X[:, :2].sum(1) > 0).long()


def _setup(seed=0):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Dropout(0.2), torch.nn.ReLU(), torch.nn.Linear(16, 2))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1 / (1 + 0.1 * s))
    return model, opt, sched


def _step(model):
    def step(idx, ctx):
        noise = torch.randn(len(idx), 8, generator=ctx.generator) * 0.1  # the step's own seeded draws
        return torch.nn.functional.cross_entropy(model(X[idx] + noise), Y[idx])

    return step


def _run(tmp, epochs=4, **kw):
    model, opt, sched = _setup()
    cfg = TrainConfig(epochs=epochs, batch_size=8, checkpoint_dir=tmp, progress=False, **kw)
    state = train(model, opt, len(X), _step(model), cfg, scheduler=sched, on_epoch_end=lambda e, loss: {"probe": float(e)})
    return model, state


def test_resume_equals_an_uninterrupted_run(tmp_path):
    full, full_state = _run(tmp_path / "full")
    first, state = _run(tmp_path / "split", stop_after=2)
    assert state.stopped_early and state.epoch == 2
    resumed, final = _run(tmp_path / "split", resume=True)
    for a, b in zip(full.state_dict().values(), resumed.state_dict().values()):
        assert torch.equal(a, b)
    assert [h["loss"] for h in final.history] == [h["loss"] for h in full_state.history]
    assert [h["probe"] for h in final.history] == [0.0, 1.0, 2.0, 3.0]
    with pytest.raises(ConfigError, match="already past epoch 4"):
        _run(tmp_path / "split", resume=True, stop_after=3)


def test_checkpoint_is_safetensors_and_json_and_atomic(tmp_path, monkeypatch):
    model, opt, sched = _setup()
    _step(model)(torch.arange(8), type("C", (), {"generator": torch.Generator()})()).backward()
    opt.step()
    sched.step()
    folder = save_checkpoint(tmp_path / "ck", model, opt, sched, {"epoch": 1})
    assert sorted(p.name for p in folder.iterdir()) == ["state.json", "tensors.safetensors"]
    assert json.loads((folder / "state.json").read_text())["state"] == {"epoch": 1}
    import vitq.train.checkpoint as ck

    def broken(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(ck, "save_file", broken)
    with pytest.raises(OSError):
        save_checkpoint(tmp_path / "ck", model, opt, sched, {"epoch": 2})
    monkeypatch.undo()
    other, other_opt, other_sched = _setup(seed=1)
    assert load_checkpoint(tmp_path / "ck", other, other_opt, other_sched) == {"epoch": 1}  # the previous one, intact
    assert torch.equal(other[0].weight, model[0].weight) and other_sched.last_epoch == sched.last_epoch
    assert other_opt.state_dict()["state"][0]["exp_avg"].equal(opt.state_dict()["state"][0]["exp_avg"])
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_distillation_losses():
    torch.manual_seed(0)
    t = torch.randn(6, 10)
    assert soft_distillation(t, t, temperature=2.0).abs() < 1e-6 and soft_distillation(-t, t) > 0
    s = torch.randn(6, 10, requires_grad=True)
    g1 = torch.autograd.grad(soft_cross_entropy(s, t), s)[0]
    g2 = torch.autograd.grad(soft_distillation(s, t), s)[0]
    assert torch.allclose(g1, g2, atol=1e-6)  # they differ by the teacher's entropy only
    assert hard_distillation(t * 100, t) < 0.05 and hard_distillation(-t * 100, t) > 10
    e = torch.randn(8, 4)
    assert contrastive(e, e, torch.tensor(4.0)) < contrastive(e, e.roll(1, 0), torch.tensor(4.0))
    with pytest.raises(ConfigError, match="positive"):
        TrainConfig(epochs=0, batch_size=4)
