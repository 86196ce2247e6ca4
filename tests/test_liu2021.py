"""Liu et al. 2021 (liu2021, liu2021-mp): objectives, the interval search, bias correction, mixed precision."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

import vitq
from test_reconstruction import _calib, _images, _vit
from vitq.calib.recorder import capture_inputs
from vitq.calib.search import negative_pearson, ranking_hinge
from vitq.errors import ConfigError
from vitq.methods.common import as_batches
from vitq.calib.bitalloc import choose_bits
from vitq.models.families import component_runner
from vitq.nn import quantizers

FAST = {"candidates": 12, "rounds": 1}


def test_pearson_objective_on_hand_computed_cases():
    a = torch.tensor([[1.0, 2.0, 3.0]])
    assert float(negative_pearson(a, 2 * a + 5)) == pytest.approx(-1.0)
    assert float(negative_pearson(a, a.flip(-1))) == pytest.approx(1.0)
    x, y = torch.tensor([[1.0, 0.0, -1.0]]), torch.tensor([[1.0, 1.0, 0.0]])
    # centred: (1, 0, -1) and (1/3, 1/3, -2/3); dot 1, norms sqrt(2) and sqrt(6)/3
    assert float(negative_pearson(x, y)) == pytest.approx(-3 / math.sqrt(12))


def test_ranking_hinge_on_a_hand_computed_case():
    ref = torch.tensor([0.1, 0.5, 0.4])
    assert float(ranking_hinge(ref.clone(), ref)) == 0.0
    swapped = torch.tensor([0.1, 0.4, 0.5])  # the pair (0.5, 0.4) is flipped by 0.1, in both orders
    assert float(ranking_hinge(swapped, ref)) == pytest.approx(2 * 0.1 / 9)
    # a margin also penalises pairs kept in order but closer than it: gaps 0.4 (free), 0.3 and 0.1
    assert float(ranking_hinge(ref.clone(), ref, margin=0.35)) == pytest.approx(2 * ((0.35 - 0.3) + (0.35 - 0.1)) / 9)


def test_sampled_ranking_hinge_estimates_the_mean_over_every_row():
    # 400 rows of 40 scores (640k ordered pairs): only the last quarter of the rows is disordered,
    # so a draw that missed rows (or pairs across the axis) would be far off the exact mean
    g = torch.Generator().manual_seed(1)
    ref = torch.rand(400, 40, generator=g)
    got = ref.clone()
    got[300:] = got[300:].flip(-1)
    exact = float(ranking_hinge(got, ref, pairs=400 * 40 * 40))
    sampled = [float(ranking_hinge(got, ref, pairs=1 << 16, seed=s)) for s in range(3)]
    assert exact > 0.02
    assert all(abs(s - exact) < 0.06 * exact for s in sampled)  # the draw's spread is 1.5% of the mean
    assert sampled[0] == float(ranking_hinge(got, ref, pairs=1 << 16, seed=0))  # one draw per seed


def _quantize(model, method="liu2021", bits="W4A4", **options):
    cfg = vitq.QuantConfig(method=method, bits=bits, components=("image",), seed=0, options={**FAST, **options})
    return vitq.quantize(model, cfg, calib=_calib(), progress=False)


def _layer_error(q, fp, name, calib):
    """Mean (over calibration inputs and tokens) of the quantized layer's output minus the float
    layer's (original weights and bias) on the same inputs, per channel."""
    layer, reference = q.get_submodule(name), fp.get_submodule(name)
    total, count = 0, 0
    with capture_inputs(q, layer, as_batches(calib), component_runner(q, "image")) as inputs, torch.no_grad():
        for (args, kwargs) in inputs:
            out = layer(*args, **kwargs)
            total = total + (out - reference(*args, **kwargs)).reshape(-1, out.shape[-1]).sum(0)
            count += out.numel() // out.shape[-1]
    return total / count


def test_bias_correction_removes_the_mean_output_error_on_calibration_data():
    model = _vit()
    corrected = _quantize(model)
    plain = _quantize(model, bias_correction=False)
    for name in ("vit.layers.0.mlp.fc2", "vit.layers.1.attention.o_proj"):
        after = _layer_error(corrected, model, name, _calib())
        before = _layer_error(plain, model, name, _calib())
        assert float(before.abs().max()) > 1e-4  # there was a bias to correct
        assert float(after.abs().max()) < 0.02 * float(before.abs().max()), (name, after.abs().max(), before.abs().max())


def test_bias_correction_averages_the_error_over_real_tokens_only():
    from vitq.calib.recorder import Stream
    from vitq.calib.units import Probe, linears_probe
    from vitq.methods.liu2021 import _correct_biases

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3))
    layer = model[0]
    x = torch.randn(2, 5, 4)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 0]])
    with torch.no_grad():
        out = layer(x)
    # the "full-precision" target is off by 0.5 on real tokens and by 40 on padding
    target = out - torch.where(mask.bool().unsqueeze(-1), torch.tensor(0.5), torch.tensor(40.0))
    inputs, targets = Stream(), Stream()
    inputs.append(((x,), {}))
    targets.append((target,))
    bias = layer.bias.detach().clone()
    unit = {"probe": Probe(layer, linears_probe(layer, [layer])), "linears": ["0"], "token_masks": [mask]}
    _correct_biases(model, unit, inputs, targets)
    assert torch.allclose(layer.bias.detach(), bias - 0.5, atol=1e-6)


def test_search_improves_on_the_max_initialisation_and_uses_symmetric_per_tensor_points():
    model = _vit()
    x = _images(77, 32)
    searched = _quantize(model, bias_correction=False)
    maxed = _quantize(model, similarity=False, bias_correction=False)
    with torch.no_grad():
        ref = model(pixel_values=x).logits
        cos = lambda q: float(torch.nn.functional.cosine_similarity(q(pixel_values=x).logits, ref).mean())  # noqa: E731
        assert cos(searched) > cos(maxed)
    for name, p in quantizers(searched):
        assert p.axis is None and p.kind == "uniform"
        assert p.quantizer.symmetric == (p.role not in ("softmax", "post_ln")), name
    scales = {n: float(p.quantizer.scale) for n, p in quantizers(searched)}
    assert any(abs(scales[n] - float(p.quantizer.scale)) > 1e-9 for n, p in quantizers(maxed))


def test_choose_bits_is_the_exact_optimum_within_the_budget():
    g = torch.Generator().manual_seed(0)
    sizes = [2, 4, 2, 6, 4]
    choices = (4, 6, 8)
    costs = [{b: float(torch.rand((), generator=g)) * 2.0 ** (-b) * s for b in choices} for s in sizes]
    target = 5.5
    picked = choose_bits(costs, sizes, target)
    assert sum(s * b for s, b in zip(sizes, picked)) <= target * sum(sizes)
    best = min((sum(c[b] for c, b in zip(costs, combo)), combo) for combo in itertools.product(choices, repeat=len(sizes))
               if sum(s * b for s, b in zip(sizes, combo)) <= target * sum(sizes))
    assert tuple(picked) == best[1]
    with pytest.raises(ConfigError, match="no bit choice fits"):
        choose_bits(costs, sizes, 3.0)


def test_mixed_precision_respects_its_budget_and_its_plan_survives_save_load_and_export(tmp_path):
    model = _vit()
    q = _quantize(model, method="liu2021-mp", target_bits=6.0, bit_choices=(4, 8))
    mp = q.vitq_info["liu2021"]["mixed_precision"]
    assert mp["average_bits"] <= 6.0 and set(mp["modules"].values()) <= {4, 8} and len(mp["modules"]) == 4
    assert len(set(mp["modules"].values())) == 2  # the budget buys some 8-bit modules, not all
    fc1 = q.vit.layers[0].mlp.fc1
    bits = mp["modules"]["vit.layers.0:mlp"]
    assert fc1.weight_quantizer.bits == bits and q.vit.layers[0].mlp.fc2.input_quantizer.bits == bits
    qk = q.vit.layers[1].attention.vitq_qk
    assert qk.a_quantizer.bits == mp["modules"]["vit.layers.1:msa"]
    vitq.save(q, tmp_path / "m")
    back = vitq.load(tmp_path / "m")
    assert {n: p.bits for n, p in quantizers(back)} == {n: p.bits for n, p in quantizers(q)}
    assert back.vitq_info["liu2021"]["mixed_precision"]["modules"] == mp["modules"]
    pytest.importorskip("onnxruntime")
    from vitq.export import export_onnx

    export_onnx(q, tmp_path / "onnx")  # verifies agreement with the simulation, or refuses


def test_bad_options_are_refused():
    with pytest.raises(ConfigError, match="alpha"):
        _quantize(_vit(), alpha=2.0)
    with pytest.raises(ConfigError, match="outside the bit choices"):
        _quantize(_vit(), method="liu2021-mp", target_bits=3.0)
