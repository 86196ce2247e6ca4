"""Block reconstruction: AdaRound, the engine (vitq.train.reconstruction) and the recon method."""

from __future__ import annotations

import pytest
import torch
import transformers as T

import vitq
from conftest import TINY, sample_inputs
from vitq.errors import ConfigError
from vitq.nn import QuantLinear, quantizers
from vitq.quant import UniformQuantizer, int_range
from vitq.quant.adaround import AdaRoundQuantizer, rectified_sigmoid, rounding_regularizer
from vitq.train.reconstruction import _mix, reconstruction_error


def _vit(seed=0, layers=2):
    torch.manual_seed(seed)
    cfg = T.ViTConfig(image_size=32, patch_size=8, num_labels=5, **dict(TINY, num_hidden_layers=layers))
    model = T.ViTForImageClassification(cfg).eval()
    torch.nn.init.normal_(model.classifier.weight, std=model.classifier.in_features ** -0.5)
    return model


def _images(seed, n=16):
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def _calib(seed=1, batches=4):
    return [_images(seed + i) for i in range(batches)]


def _weight_quantizer(w, bits=3, symmetric=False):
    q = UniformQuantizer(bits, symmetric=symmetric, axis=0)
    q.set_range(w.amin(1), w.amax(1))
    return q


@pytest.mark.parametrize("symmetric", [False, True])
def test_hardened_rounding_gives_integer_codes_in_range_that_the_quantizer_reproduces(symmetric):
    w = torch.randn(12, 20)
    base = _weight_quantizer(w, bits=3, symmetric=symmetric)
    ada = AdaRoundQuantizer(base, w)
    with torch.no_grad():
        ada.alpha.normal_(0, 3)  # any learned state
    codes = ada.codes(w)
    lo, hi = int_range(3, symmetric)
    assert codes.dtype == torch.int32 and codes.min() >= lo and codes.max() <= hi
    hard = ada.hardened_weight(w)
    assert torch.equal(base.quantize(hard), codes)  # the plain quantizer keeps the learned codes
    # the learned rounding differs from nearest rounding somewhere (so the test sees the rounding)
    assert not torch.equal(codes, base.quantize(w))
    # and codes are floor or floor + 1 of W/s, never further
    floor = torch.floor(w / base.scale.view(-1, 1)) + base.zero_point.view(-1, 1)
    inside = (floor >= lo) & (floor + 1 <= hi)
    assert ((codes - floor)[inside].abs() <= 1).all()


def test_soft_rounding_starts_at_the_float_weight_and_regulariser_vanishes_at_0_and_1():
    w = torch.randn(8, 16) * 0.1
    base = _weight_quantizer(w, bits=4)
    ada = AdaRoundQuantizer(base, w)
    grid = w / base.scale.view(-1, 1) + base.zero_point.view(-1, 1)
    inside = (grid > 0) & (grid < 15)  # the zero-point's rounding clips the extremes by < 1/2 step
    assert inside.float().mean() > 0.8
    torch.testing.assert_close(ada(w)[inside], w[inside], atol=1e-5, rtol=0)  # h(V) = fractional part
    assert float(rounding_regularizer(torch.full((5,), 20.0), b=2.0)) == pytest.approx(0.0, abs=1e-6)
    assert float(rounding_regularizer(torch.full((5,), -20.0), b=2.0)) == pytest.approx(0.0, abs=1e-6)
    assert float(rounding_regularizer(torch.tensor([-0.0]), b=2.0)) > 0.5  # h = 0.5 costs most
    assert float(rectified_sigmoid(torch.tensor(50.0))) == 1.0


def test_qdrop_mix_takes_quantized_elements_with_the_given_probability():
    q, fp = torch.ones(200, 50), torch.zeros(200, 50)
    g = torch.Generator().manual_seed(0)
    assert torch.equal(_mix((q,), (fp,), 0.0, g)[0], fp)
    mixed = _mix(((q,), {"x": q, "mask": torch.ones(3, dtype=torch.long)}), ((fp,), {"x": fp, "mask": torch.ones(3, dtype=torch.long)}), 0.5, g)
    assert abs(float(mixed[0][0].mean()) - 0.5) < 0.02 and abs(float(mixed[1]["x"].mean()) - 0.5) < 0.02
    assert torch.equal(mixed[1]["mask"], torch.ones(3, dtype=torch.long))


def test_reconstruction_error_is_brecqs_lp_loss():
    a, b = torch.randn(4, 5, 6), torch.randn(4, 5, 6)
    assert float(reconstruction_error(a, b)) == pytest.approx(float((a - b).pow(2).sum(1).mean()), rel=1e-6)
    w = torch.rand(4, 5, 6)
    assert float(reconstruction_error(a, b, w)) == pytest.approx(float(((a - b).pow(2) * w).sum(1).mean()), rel=1e-6)


def _quantize(model, method="recon", bits="W4A4", **options):
    cfg = vitq.QuantConfig(method=method, bits=bits, components=("image",), seed=0, options=options)
    return vitq.quantize(model, cfg, calib=_calib(), progress=False)


def test_zero_learning_rate_and_no_regulariser_leave_the_calibrated_model_unchanged():
    model = _vit()
    x = _images(99, 8)
    base = _quantize(model, method="repq-vit")
    same = _quantize(model, iters=5, round_lr=0.0, act_lr=0.0, round_weight=0.0)
    with torch.no_grad():
        torch.testing.assert_close(same(pixel_values=x).logits, base(pixel_values=x).logits, rtol=1e-5, atol=1e-5)
    moved = _quantize(model, iters=5, round_lr=1e-2, act_lr=1e-2, round_weight=0.0)
    with torch.no_grad():
        assert not torch.allclose(moved(pixel_values=x).logits, base(pixel_values=x).logits, rtol=1e-5, atol=1e-5)


def _block_error(q, fp, x, block=0) -> float:
    """MSE of quantized block ``block`` against the float block, both on the float model's block
    inputs for images ``x`` (the block's own error, upstream error left out)."""
    seen = {}
    handle = fp.vit.layers[block].register_forward_hook(
        lambda mod, args, out: seen.update(x=args[0], y=out[0] if isinstance(out, tuple) else out))
    with torch.no_grad():
        fp(pixel_values=x)
        handle.remove()
        out = q.vit.layers[block](seen["x"])
    return float(((out[0] if isinstance(out, tuple) else out) - seen["y"]).pow(2).mean())


def test_reconstructed_block_has_lower_error_on_held_out_inputs():
    model = _vit(layers=2)
    held_out = _images(1234, 32)
    base = _quantize(model, method="repq-vit", bits="W3A3")
    # fewer steps than the presets, so larger learning rates than the papers'
    rec = _quantize(model, bits="W3A3", iters=150, round_lr=1e-2, act_lr=1e-3)
    for block in (0, 1):
        before, after = _block_error(base, model, held_out, block), _block_error(rec, model, held_out, block)
        assert after < 0.85 * before, (block, before, after)
    units = rec.vitq_info["recon"]["units"]
    assert [u["name"] for u in units][:2] == ["vit.embeddings.patch_embeddings.projection", "vit.layers.0"]
    assert units[-1]["name"] == "classifier" and all(u["mse_after"] < u["mse_before"] for u in units)


def test_resume_equals_an_uninterrupted_run(tmp_path):
    model = _vit()
    full = _quantize(model, iters=20, drop_prob=0.5)
    ckpt = tmp_path / "ckpt"
    part = _quantize(model, iters=20, drop_prob=0.5, checkpoint_dir=str(ckpt), stop_after=2)
    assert part.vitq_info["recon"]["stopped_early"] and len(part.vitq_info["recon"]["units"]) == 2
    resumed = _quantize(model, iters=20, drop_prob=0.5, checkpoint_dir=str(ckpt), resume=True)
    assert resumed.vitq_info["recon"]["resumed"] == 2 and not resumed.vitq_info["recon"]["stopped_early"]
    a, b = full.state_dict(), resumed.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(ConfigError, match="another reconstruction"):
        _quantize(model, iters=21, drop_prob=0.5, checkpoint_dir=str(ckpt), resume=True)


def test_bit_plans_and_log_softmax_points_keep_working():
    model = _vit()
    cfg = vitq.QuantConfig(method="recon", bits="W4A4", components=("image",), seed=0, bit_plan={"*.layers.1.*": "W3A4"},
                           options={"iters": 10})
    q = vitq.quantize(model, cfg, calib=_calib(), progress=False)
    softmax = [p for _, p in quantizers(q) if p.role == "softmax"]
    assert softmax and all(p.kind == "log2_parity" for p in softmax)  # RepQ-ViT's, kept as calibrated
    fc = q.vit.layers[1].mlp.fc1
    assert isinstance(fc, QuantLinear) and fc.weight_quantizer.bits == 3
    codes = fc.weight_quantizer.quantizer.quantize(fc.weight)
    assert codes.min() >= 0 and codes.max() <= 7
    # the stored weight is exactly on the grid: quantizing it again changes nothing
    assert torch.equal(fc.weight_quantizer.quantizer(fc.weight.detach()), fc.weight.detach())
    assert not any(p.learnable for _, p in quantizers(q))  # step sizes are buffers again


def test_fisher_loss_and_a_dual_encoder_run(models):
    model = models["CLIPModel"]
    batch = sample_inputs(seed=4, batch=6)
    calib = [batch, sample_inputs(seed=5, batch=6)]
    cfg = vitq.QuantConfig(method="recon", bits="W4A4", seed=0, options={"iters": 5, "loss": "fisher"})
    q = vitq.quantize(model, cfg, calib=calib, progress=False)
    units = q.vitq_info["recon"]["units"]
    assert {u["component"] for u in units} == {"image", "text"} and q.vitq_info["recon"]["loss"] == "fisher"


def test_task_gradients_are_those_of_the_task_loss():
    from vitq.models.families import component_runner
    from vitq.nn import points_disabled
    from vitq.train.reconstruction import kl_task, unit_gradients

    q = _quantize(_vit(), method="minmax", bits="W4A4")
    block = q.vit.layers[1]
    x = _images(7, 4)
    grads = unit_gradients(q, block, [{"pixel_values": x}], component_runner(q, "image"), kl_task, [], cap_mb=64)
    g = grads[0]
    assert g.shape == (4, 17, 32) and g.abs().sum() > 0
    # the same gradient by autograd on the block output directly
    held = {}

    def hook(mod, a, out):
        held["t"] = out.detach().requires_grad_(True)
        return held["t"]

    handle = block.register_forward_hook(hook)
    with torch.enable_grad():
        logits = q(pixel_values=x).logits
    handle.remove()
    with points_disabled(q), torch.no_grad():
        fp = q(pixel_values=x).logits
    (expected,) = torch.autograd.grad(kl_task({}, logits, fp), [held["t"]])
    torch.testing.assert_close(g, expected)


def test_result_saves_loads_and_exports_in_agreement(tmp_path):
    pytest.importorskip("onnxruntime")
    from vitq.export import export_onnx
    from vitq.export.runtime import ExportedModel

    model = _vit()
    q = _quantize(model, bits="W4A4", iters=20)
    vitq.save(q, tmp_path / "m")
    back = vitq.load(tmp_path / "m")
    x = _images(5, 8)
    with torch.no_grad():
        ref = q(pixel_values=x).logits
        torch.testing.assert_close(back(pixel_values=x).logits, ref)
    assert back.vitq_info["method"] == "recon" and back.vitq_info["recon"]["units"]
    out = export_onnx(q, tmp_path / "onnx")  # verifies against the simulation itself, or refuses
    got = ExportedModel(out).encode_image(x)
    cos = torch.nn.functional.cosine_similarity(torch.as_tensor(got).float(), ref, dim=-1)
    assert float(cos.min()) > 0.99


def test_bad_options_are_refused():
    model = _vit()
    with pytest.raises(ConfigError, match="loss"):
        _quantize(model, loss="l1")
    with pytest.raises(ConfigError, match="cannot start from"):
        _quantize(model, base="dq-clip")
    with pytest.raises(ConfigError, match="checkpoint_dir"):
        _quantize(model, resume=True)
    with pytest.raises(ConfigError, match="drop_prob"):
        _quantize(model, drop_prob=1.5)


def test_outlier_variant_keeps_the_function_and_creates_outlier_channels():
    from vitq.models.outliers import inject_outlier_channels

    model = _vit(layers=2)
    x = _images(3, 4)
    with torch.no_grad():
        ref = model(pixel_values=x).logits
    ln = model.vit.layers[0].layernorm_before
    before = ln.weight.detach().abs().clone()
    scaled = inject_outlier_channels(model, seed=0)
    assert set(scaled.values()) == {round(32 / 3)} and len(scaled) == 4
    ratio = ln.weight.detach().abs() / before
    assert float(ratio.max()) >= 4 - 1e-4 and float((ratio > 1.5).float().mean()) == pytest.approx(11 / 32)
    with torch.no_grad():
        torch.testing.assert_close(model(pixel_values=x).logits, ref, rtol=1e-4, atol=1e-5)


def test_points_disabled_switches_off_all_but_kept_and_restores():
    from vitq.nn import points_disabled

    q = _quantize(_vit(), method="minmax")
    points = [p for _, p in quantizers(q)]
    points[0].enabled = False  # a point already off stays off afterwards
    keep = points[1:3]
    with points_disabled(q, keep=keep):
        assert [p.enabled for p in points] == [False] + [p in keep for p in points[1:]]
    assert [p.enabled for p in points] == [False] + [True] * (len(points) - 1)
    with pytest.raises(RuntimeError), points_disabled(only=points[1:2]):
        assert not points[1].enabled
        raise RuntimeError
    assert points[1].enabled


def _outputs(model, name, batches) -> list[torch.Tensor]:
    seen = []
    handle = model.get_submodule(name).register_forward_hook(lambda mod, args, out: seen.append(out[0] if isinstance(out, tuple) else out))
    with torch.no_grad():
        for x in batches:
            model(pixel_values=x)
    handle.remove()
    return seen


def test_targets_are_the_full_precision_model_even_after_upstream_weights_are_hardened():
    # With no learning, each unit's weights are hardened to nearest rounding (the same function as
    # the calibrated model); the error reported for the second block must be against the float
    # model's block output, not against a model whose first block already holds hardened weights.
    model = _vit(layers=2)
    base = _quantize(model, method="repq-vit", bits="W3A3")
    rec = _quantize(model, bits="W3A3", iters=2, round_lr=0.0, act_lr=0.0, round_weight=0.0)
    quantized, full = _outputs(base, "vit.layers.1", _calib()), _outputs(model, "vit.layers.1", _calib())
    expected = sum(float((q - f).pow(2).mean()) for q, f in zip(quantized, full)) / len(full)
    report = next(u for u in rec.vitq_info["recon"]["units"] if u["name"] == "vit.layers.1")
    assert report["mse_before"] == pytest.approx(expected, rel=1e-3, abs=1e-6)


def test_float_weights_put_the_full_precision_model_back_for_a_while():
    from vitq.train.reconstruction import FloatWeights

    model = _vit()
    q = _quantize(model, method="repq-vit", bits="W3A3")
    keep = FloatWeights(q)
    x = _images(7, 4)
    with torch.no_grad():
        for m in q.modules():  # harden every weight, as reconstruction does
            if isinstance(m, QuantLinear) and m.weight_quantizer is not None:
                m.weight.copy_(m.weight_quantizer.quantizer(m.weight))
        hardened = q(pixel_values=x).logits
        with keep.full_precision(q):
            torch.testing.assert_close(q(pixel_values=x).logits, model(pixel_values=x).logits, rtol=1e-5, atol=1e-5)
        assert torch.equal(q(pixel_values=x).logits, hardened)
