"""Stochastic depth for the reference-model ViT (scripts/drop_path.py)."""

from __future__ import annotations

import copy
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import drop_path as dp  # noqa: E402
import zoo_training as zt  # noqa: E402


def _vit(depth: int = 4):
    from transformers import ViTModel

    torch.manual_seed(0)
    args = SimpleNamespace(patch=8, width=32, depth=depth, heads=2)
    return ViTModel(zt.vit_config(args), add_pooling_layer=False)


def test_rates_grow_linearly_and_eval_output_is_unchanged():
    plain = _vit().eval()
    dropped = copy.deepcopy(plain)
    rates = dp.add_drop_path(dropped.layers, 0.3)
    assert rates == pytest.approx([0.0, 0.1, 0.2, 0.3])
    assert [layer.dropout.rate for layer in dropped.layers] == pytest.approx(rates)
    assert dropped.state_dict().keys() == plain.state_dict().keys()  # checkpoints are the plain ViT's
    x = torch.randn(3, 3, 64, 64)
    dropped.eval()
    torch.testing.assert_close(dropped(pixel_values=x).last_hidden_state, plain(pixel_values=x).last_hidden_state,
                               rtol=0, atol=0)


def test_rate_zero_swaps_nothing():
    model = _vit()
    assert dp.add_drop_path(model.layers, 0.0) == [0.0] * 4
    assert all(isinstance(layer.dropout, torch.nn.Dropout) for layer in model.layers)


def test_each_sample_keeps_or_drops_its_whole_branch_at_the_rate():
    module = dp.DropPath(0.25).train()
    module.generator = torch.Generator().manual_seed(0)
    x = torch.rand(4000, 5, 7) + 1.0
    out = module(x)
    kept = (out != 0).all(dim=(1, 2))
    dropped = (out == 0).all(dim=(1, 2))
    assert bool((kept | dropped).all())  # whole samples, never single elements
    torch.testing.assert_close(out[kept], x[kept] / 0.75)
    assert abs(dropped.float().mean().item() - 0.25) < 0.03
    assert abs(out.mean().item() - x.mean().item()) < 0.03  # the expectation is kept


def test_draws_follow_the_generator():
    module = dp.DropPath(0.5).train()
    x = torch.ones(64, 3)
    outs = []
    for seed in (1, 1, 2):
        module.generator = torch.Generator().manual_seed(seed)
        outs.append(module(x))
    torch.testing.assert_close(outs[0], outs[1])
    assert not torch.equal(outs[0], outs[2])


def test_training_without_a_generator_or_with_bad_settings_is_refused():
    model = _vit()
    dp.add_drop_path(model.layers, 0.2)
    model.train()
    with pytest.raises(RuntimeError, match="use_generator"):
        model(pixel_values=torch.randn(2, 3, 64, 64))
    dp.use_generator(model, torch.Generator().manual_seed(0))
    assert model(pixel_values=torch.randn(2, 3, 64, 64)).last_hidden_state.shape == (2, 65, 32)
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        dp.DropPath(1.0)
    live = _vit()
    live.layers[0].dropout.p = 0.1
    with pytest.raises(ValueError, match="hidden_dropout_prob=0"):
        dp.add_drop_path(live.layers, 0.1)
