"""Methods as their papers define them: typed options, seeds, estimators end to end, and the
calibration order (parallel on float activations, or sequential on quantized inputs)."""

import pytest
import torch
from conftest import sample_inputs

import vitq
from vitq.errors import ConfigError
from vitq.methods import get_method, method_infos
from vitq.nn import quantizers, set_mode

CALIB = [sample_inputs(seed=s, batch=4)["pixel_values"] for s in (11, 12, 13)]


def quantize(model, method="minmax", bits="W8A8", calib=CALIB, **kw):
    return vitq.quantize(model, vitq.QuantConfig(method=method, bits=bits, **kw), calib=calib, progress=False)


def points(model, role=None):
    return {n: q for n, q in quantizers(model) if role is None or q.role == role}


@pytest.mark.parametrize("method", ["minmax", "ema", "percentile", "omse", "repq-vit", "dynamic"])
def test_unknown_option_is_an_error_listing_the_known_ones(models, method):
    with pytest.raises(ConfigError, match="unknown option colour") as err:
        quantize(models["ViTModel"], method, options={"colour": "red"})
    known = [n for n, _, _ in get_method(method).options.describe()]
    assert known and all(n in err.value.hint for n in known)


def test_option_values_are_typed_and_checked(models):
    opts = get_method("percentile").parse_options({"percentile": "99.9", "sequential": "true"})
    assert opts.percentile == 99.9 and opts.sequential is True
    with pytest.raises(ConfigError, match="percentile must be"):
        get_method("percentile").parse_options({"percentile": 10})
    with pytest.raises(ConfigError, match="must be a number"):
        get_method("ema").parse_options({"momentum": "fast"})
    with pytest.raises(ConfigError, match="yes/no"):
        get_method("minmax").parse_options({"sequential": "maybe"})
    assert get_method("repq-vit").parse_options({"percentiles": "99,99.9"}).percentiles == (99.0, 99.9)
    assert {i.name for i in method_infos()} >= {"minmax", "repq-vit", "dynamic"}


def _collect_inputs(model, module_name, calib):
    """The float inputs a module receives on the calibration batches."""
    seen = []
    module = model.get_submodule(module_name)
    handle = module.register_forward_pre_hook(lambda m, args: seen.append(args[0].detach().clone()))
    with torch.no_grad():
        for x in calib:
            model(pixel_values=x)
    handle.remove()
    return seen


def test_ema_end_to_end_is_the_moving_average_of_batch_ranges(models):
    model = models["ViTForImageClassification"]
    q = quantize(model, "ema", bits="W8A8")
    xs = _collect_inputs(model, "vit.layers.1.mlp.fc2", CALIB)
    lo, hi = xs[0].min(), xs[0].max()
    for x in xs[1:]:
        lo, hi = lo + 0.01 * (x.min() - lo), hi + 0.01 * (x.max() - hi)
    uq = q.get_submodule("vit.layers.1.mlp.fc2").input_quantizer.quantizer
    lo, hi = min(lo.item(), 0.0), max(hi.item(), 0.0)
    assert uq.scale.item() == pytest.approx((hi - lo) / 255, rel=1e-5)


def test_percentile_end_to_end_follows_its_options(models):
    model = models["ViTForImageClassification"]
    q = quantize(model, "percentile", options={"percentile": 99.0, "momentum": 0.5})
    xs = _collect_inputs(model, "vit.layers.1.mlp.fc2", CALIB)

    def pct(x, p):
        flat = x.reshape(-1)
        return flat.kthvalue(int(round(p * (flat.numel() - 1))) + 1).values.item()

    lo, hi = pct(xs[0], 0.01), pct(xs[0], 0.99)
    for x in xs[1:]:
        lo, hi = lo + 0.5 * (pct(x, 0.01) - lo), hi + 0.5 * (pct(x, 0.99) - hi)
    uq = q.get_submodule("vit.layers.1.mlp.fc2").input_quantizer.quantizer
    assert uq.scale.item() == pytest.approx((max(hi, 0) - min(lo, 0)) / 255, rel=1e-5)


def test_baseline_weights_use_min_max(models):
    """FQ-ViT's OBSERVER_W is minmax for every activation estimator, OMSE included."""
    q = quantize(models["ViTForImageClassification"], "omse", bits="W4A4")
    fc1 = q.get_submodule("vit.layers.0.mlp.fc1")
    amax = fc1.weight.detach().abs().amax(dim=1)
    assert torch.allclose(fc1.weight_quantizer.quantizer.scale, 2 * amax / 15, rtol=1e-6)


def _big_calib(n=3):
    return [torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(100 + i)) for i in range(n)]


def test_seed_reaches_the_observers(models):
    """Search observers sample their data with the config's seed: another seed, other scales."""
    model = models["ViTForImageClassification"]
    opts = {"max_samples": 2048}
    scales = {}
    for seed in (0, 0, 1):
        q = quantize(model, "omse", bits="W4A4", calib=_big_calib(), seed=seed, options=opts)
        scales.setdefault(seed, []).append(torch.cat([p.quantizer.scale.reshape(-1) for p in points(q, "post_gelu").values()]))
    assert torch.equal(scales[0][0], scales[0][1])
    assert not torch.equal(scales[0][0], scales[1][0])


def test_options_reach_repq_observers(models):
    model = models["ViTForImageClassification"]
    q = quantize(model, "repq-vit", bits="W4A4", options={"percentiles": (90.0,), "sequential": False})
    point = q.get_submodule("vit.layers.1.mlp.fc2").input_quantizer
    assert point.observer_options["percentiles"] == (90.0,)
    xs = torch.cat([x.reshape(-1) for x in _collect_inputs(model, "vit.layers.1.mlp.fc2", CALIB)])
    k = lambda p: xs.kthvalue(int(round(p * (xs.numel() - 1))) + 1).values.item()  # noqa: E731
    lo, hi = min(k(1 - 0.90), 0.0), max(k(0.90), 0.0)
    assert point.quantizer.scale.item() == pytest.approx((hi - lo) / 15, rel=1e-5)


def test_weight_search_sees_every_value(models):
    """Rows longer than the per-channel sample budget (here 2,048 of 4,096, as for a base-size fc2
    with 3,072 inputs) are searched whole."""
    import transformers as T

    torch.manual_seed(0)
    cfg = T.ViTConfig(image_size=16, patch_size=8, hidden_size=128, num_hidden_layers=1, num_attention_heads=2,
                      intermediate_size=4096, num_labels=3)
    model = T.ViTForImageClassification(cfg).eval()
    q = vitq.quantize(model, vitq.QuantConfig(method="repq-vit", bits="W4A4", options={"sequential": False}),
                      calib=[torch.randn(2, 3, 16, 16)], progress=False)
    fc2 = q.get_submodule("vit.layers.0.mlp.fc2")
    w = model.vit.layers[0].mlp.fc2.weight.detach()  # the float weight (fc2 is not reparameterized)
    from vitq.quant import UniformQuantizer
    from vitq.quant.observers import PercentileSearchObserver

    full = PercentileSearchObserver(axis=0, max_samples=None)
    full.update(w)
    ref = UniformQuantizer(4, symmetric=False, axis=0)
    ref.set_range(*full.compute(ref))
    assert w.shape[1] == 4096 and torch.equal(fc2.weight_quantizer.quantizer.scale, ref.scale)


def test_sequential_calibration_sees_quantized_inputs(models):
    """Sequentially, fc2's input point is calibrated on what reaches it with every earlier point
    quantized: its min/max range is that of the quantized model's fc2 input. In parallel it is the
    float model's."""
    model = models["ViTForImageClassification"]
    name = "vit.layers.1.mlp.fc2"
    seq = quantize(model, "minmax", bits="W4A4", options={"sequential": True})
    par = quantize(model, "minmax", bits="W4A4")
    for q, reference in ((seq, seq), (par, model)):
        point = q.get_submodule(name).input_quantizer
        point.enabled = False  # read the input the point sees, with everything upstream as calibrated
        xs = torch.cat([x.reshape(-1) for x in _collect_inputs(reference, name, CALIB)])
        point.enabled = True
        assert point.quantizer.scale.item() == pytest.approx((xs.max().item() - min(xs.min().item(), 0.0)) / 15, rel=1e-5)
    assert seq.get_submodule(name).input_quantizer.quantizer.scale.item() != pytest.approx(
        par.get_submodule(name).input_quantizer.quantizer.scale.item(), rel=1e-3)
    assert seq.vitq_info["calibration"] == "sequential" and par.vitq_info["calibration"] == "parallel"


def test_sequential_repq_is_the_default_and_keeps_the_float_function(models, inputs):
    from test_adapters import encode_all

    model = models["CLIPModel"]
    q = vitq.quantize(model, vitq.QuantConfig(method="repq-vit", bits="W4A4"), calib=[sample_inputs(seed=7, batch=8)], progress=False)
    assert q.vitq_info["calibration"] == "sequential"
    assert all(p.quantizer.calibrated for p in points(q).values() if p.kind == "uniform")
    set_mode(q, "fp")
    for a, b in zip(encode_all(model, inputs), encode_all(q, inputs)):
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-5)


def test_fqvit_scope_adds_its_points_and_they_quantize(models, inputs, tmp_path):
    """--option scope=fqvit also quantizes FQ-ViT's pre-Softmax scores, linear outputs, residual sums
    and embeddings; each really rounds onto its grid, the float function is kept with the points off,
    and the model saves and reloads (output hooks included)."""
    from test_adapters import encode_all

    model = models["ViTForImageClassification"]
    q = quantize(model, "minmax", options={"scope": "fqvit"})
    layers = len(model.vit.layers)
    counts = {role: e["count"] for role, e in q.vitq_info["quantized"].items()}
    assert counts["attn_scores"] == layers and counts["embed"] == 1
    assert counts["linear_out"] == 2 * layers + 1  # out-proj and fc2 of every block, the patch embedding
    assert counts["residual"] == 2 * layers  # second LayerNorm's input and the block output
    assert "attn_scores" not in quantize(model, "minmax").vitq_info["quantized"]
    block = q.vit.layers[1]
    seen = {}

    def grab(module, args, out):
        seen["out"] = out[0] if isinstance(out, tuple) else out

    handle = block.register_forward_hook(grab)
    with torch.no_grad():
        q(pixel_values=inputs["pixel_values"])
    handle.remove()
    uq = block.vitq_output.quantizer
    codes = seen["out"] / uq.scale + uq.zero_point
    assert torch.allclose(codes, codes.round(), atol=1e-3)  # the block output sits on its 8-bit grid
    vitq.save(q, tmp_path / "m")
    back = vitq.load(tmp_path / "m")
    for a, b in zip(encode_all(q, inputs), encode_all(back, inputs)):
        assert torch.equal(a, b)
    set_mode(q, "fp")  # (a saved folder keeps integer weights, so only the in-memory model has the float ones)
    for a, b in zip(encode_all(model, inputs), encode_all(q, inputs)):
        assert torch.allclose(a, b, atol=1e-5)


def test_bit_plan_reaches_points_saving_size_bops_and_export(models, tmp_path):
    """A per-layer plan: the first block at W8A8 inside a W4A4 model. Its points (the LayerNorm point
    that feeds its q/k/v, its attention matmuls, its linears) get 8 bits; the others keep 4; the
    plan survives save/load, counts in size and BOPs, and exports."""
    from vitq.eval.cost import compute_cost, model_size
    from vitq.export import export_onnx

    model = models["ViTForImageClassification"]
    plan = {"vit.layers.0.*": "W8A8"}
    q = quantize(model, "minmax", bits="W4A4", bit_plan=plan)
    plain = quantize(model, "minmax", bits="W4A4")
    for name, p in quantizers(q):
        expected = 8 if name.startswith("vit.layers.0.") else 4
        assert p.bits == expected, name
    assert q.vitq_info["config"]["bit_plan"] == plan
    back = vitq.load(vitq.save(q, tmp_path / "m"))
    assert {n: p.bits for n, p in quantizers(back)} == {n: p.bits for n, p in quantizers(q)}
    w0 = sum(m.weight.numel() for n, m in q.named_modules() if n.startswith("vit.layers.0.") and hasattr(m, "weight_quantizer"))
    assert model_size(q)["bytes"] - model_size(plain)["bytes"] == w0 * (8 - 4) / 8
    cost, cost_plain = compute_cost(q), compute_cost(plain)
    assert cost["bops"] > cost_plain["bops"] and "W8A8" in cost["flops_by_bits"]
    assert "W4A32" not in cost_plain["flops_by_bits"]  # q/k/v count at the bits of the LayerNorm point feeding them
    out = export_onnx(q, tmp_path / "onnx")
    assert __import__("json").loads((out / "export.json").read_text())["quantizer_bits"] == [4, 8]
    with pytest.raises(ConfigError, match="out of range"):
        vitq.QuantConfig(bit_plan={"*": "W9A9"})


def test_registered_method_runs_with_its_metadata(models):
    """A method's metadata is data: a result that is not a MethodResult is refused, a method runs
    without gradients unless it registers trains=True, and vitq_info comes from its result."""
    import torch

    from vitq.methods import _REGISTRY, MethodResult, register

    seen = {}

    def fn(model, calib, cfg, opts, progress=True):
        seen[cfg.method] = torch.is_grad_enabled()
        return model, (MethodResult("vit", ["image"], details={"probe": {"ok": 1}}) if cfg.method != "probe-dict" else {})

    try:
        for name, trains in (("probe-nograd", False), ("probe-trains", True), ("probe-dict", False)):
            register(name, needs_calibration=False, trains=trains, summary="probe")(fn)
        q = vitq.quantize(models["ViTModel"], method="probe-nograd", progress=False)
        assert seen["probe-nograd"] is False and q.vitq_info["probe"] == {"ok": 1} and q.vitq_info["family"] == "vit"
        vitq.quantize(models["ViTModel"], method="probe-trains", progress=False)
        assert seen["probe-trains"] is True
        with pytest.raises(TypeError, match="returned dict, not a MethodResult"):
            vitq.quantize(models["ViTModel"], method="probe-dict", progress=False)
    finally:
        for name in ("probe-nograd", "probe-trains", "probe-dict"):
            _REGISTRY.pop(name, None)
