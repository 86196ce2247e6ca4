"""The shared engine: the recorder (bounded memory, spills, fp and quantized side by side) and the
per-point search by an objective on the layer output."""

import pytest
import torch
from conftest import sample_inputs

import vitq
from vitq.calib import OutputSearch, Stream, capture_inputs, record, record_side_by_side
from vitq.calib.search import negative_pearson, ranking_hinge
from vitq.models.families import component_runner


def test_stream_spills_past_its_cap_and_cleans_up():
    items = [(torch.randn(64, 64), {"mask": torch.ones(3), "flag": True, "n": None}) for _ in range(6)]
    with Stream.of(items, cap_mb=64 * 64 * 4 * 2.5 / 2**20) as s:
        assert len(s) == 6 and s.spilled == 4 and s.bytes_in_memory <= 2.5 * 64 * 64 * 4
        folder = s._dir
        for (a, extra), (b, back) in zip(items, s):
            assert torch.equal(a, b) and torch.equal(extra["mask"], back["mask"]) and back["flag"] is True and back["n"] is None
        assert list(s)[3][0].shape == (64, 64)  # re-iterable
    assert not folder.exists()


def test_record_inputs_and_outputs_fp_and_quantized_side_by_side(models):
    model = models["ViTForImageClassification"]
    calib = [sample_inputs(seed=s)["pixel_values"] for s in (1, 2)]
    q = vitq.quantize(model, vitq.QuantConfig(bits="W4A4"), calib=calib, progress=False)
    batches = [{"pixel_values": x} for x in calib]
    run = component_runner(q, "image")
    rec = record_side_by_side(q, ["vit.layers.1", "vit.layers.0.mlp.fc2"], batches, run, what=("input", "output"))
    block = rec["vit.layers.1"]
    assert len(block["fp"]["output"]) == len(block["quant"]["output"]) == 2
    # the fp recording is the float model's, the quantized one the quantized model's
    with torch.no_grad():
        fp_out = record(model, ["vit.layers.1"], batches, component_runner(model, "image"))["vit.layers.1"]["output"]
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(block["fp"]["output"], fp_out))
    assert not torch.allclose(block["fp"]["output"][0], block["quant"]["output"][0], atol=1e-3)
    # replaying the recorded quantized input gives the recorded quantized output
    (args, kwargs) = block["quant"]["input"][0]
    with torch.no_grad():
        again = q.vit.layers[1](*args, **kwargs)
    assert torch.allclose(again if torch.is_tensor(again) else again[0], block["quant"]["output"][0])
    assert all(p.mode == "quant" and p.enabled for _, p in vitq.nn.quantizers(q))  # modes restored


def test_output_search_finds_the_scale_best_for_the_layer_output():
    """Grid search of an input point's range by the linear's output error: the brute-force best on
    the same data; Pearson and ranking objectives plug in the same way."""
    from vitq.nn import QuantLinear, TensorQuantizer

    torch.manual_seed(0)
    linear = torch.nn.Linear(16, 8)
    x = torch.randn(4, 32, 16) * torch.linspace(0.1, 3, 16)
    x[0, 0, 0] = 40.0  # an outlier: the minmax range is poor for the output
    point = TensorQuantizer(bits=4, symmetric=False, role="input")
    layer = QuantLinear.from_float(linear, None, point)
    point.mode = "quant"
    inputs = Stream.of([((xb,), {}) for xb in x.split(2)])
    with torch.no_grad():
        targets = [linear(xb) for xb in x.split(2)]
    hi = [x.max().item() * f for f in (1.0, 0.5, 0.25, 0.12, 0.06)]

    def apply(top):
        point.quantizer.set_range(torch.tensor(x.min().item()), torch.tensor(top))

    search = OutputSearch(layer, inputs, targets, "mse")
    best, score = search.grid(hi, apply)
    brute = {}
    for top in hi:
        apply(top)
        with torch.no_grad():
            brute[top] = sum(((layer(xb) - t) ** 2).mean().item() for xb, t in zip(x.split(2), targets))
    assert best == min(brute, key=brute.get) and best != hi[0] and score == pytest.approx(brute[best], rel=1e-5)
    assert OutputSearch(layer, inputs, targets, negative_pearson).score() < -0.5
    ref = torch.randn(3, 10)
    assert ranking_hinge(ref * 2, ref, margin=0.0) == 0 and ranking_hinge(-ref, ref, margin=0.0) > 0
    with pytest.raises(vitq.VitqError, match="unknown search objective"):
        OutputSearch(layer, inputs, targets, "kl")


def test_capture_stops_at_the_module(models):
    model = models["ViTForImageClassification"]
    calls = []
    handle = model.classifier.register_forward_hook(lambda *a: calls.append(1))
    batches = [{"pixel_values": sample_inputs()["pixel_values"]}]
    with capture_inputs(model, model.vit.layers[0], batches, component_runner(model, "image")) as s:
        assert len(s) == 1 and s[0][0][0].shape[-1] == 32
    handle.remove()
    assert calls == []  # the forward ended at the block
