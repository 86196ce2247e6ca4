"""Q-Diffusion and the diffusers UNet adapter: split quantizer, timestep-aware calibration set,
attention processor, A32 specs, generation metrics, and the method end to end on tiny random UNets
(an unconditional UNet2DModel and a Stable-Diffusion-like UNet2DConditionModel)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

diffusers = pytest.importorskip("diffusers")

import vitq  # noqa: E402
from vitq.config import parse_bits  # noqa: E402
from vitq.data.diffusion import sample, timestep_calibration  # noqa: E402
from vitq.errors import ConfigError  # noqa: E402
from vitq.eval.cost import compute_cost, model_size  # noqa: E402
from vitq.eval.generation import frechet_distance, inception_score, psnr, ssim  # noqa: E402
from vitq.models.families import family_of  # noqa: E402
from vitq.models.unet import prepare_unet, skip_splits  # noqa: E402
from vitq.nn import QuantConv2d, SplitQuantConv2d, TensorQuantizer, points_disabled, quantizers  # noqa: E402


def tiny_unet(seed: int = 0):
    torch.manual_seed(seed)
    return diffusers.UNet2DModel(sample_size=8, in_channels=3, out_channels=3, block_out_channels=(16, 32), layers_per_block=1,
                                 down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
                                 norm_num_groups=8, attention_head_dim=8).eval()


def tiny_cond_unet(seed: int = 0):
    torch.manual_seed(seed)
    return diffusers.UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, block_out_channels=(16, 32), layers_per_block=1,
                                          down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                          up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
                                          cross_attention_dim=16, attention_head_dim=4, norm_num_groups=8).eval()


def scheduler():
    return diffusers.DDIMScheduler(num_train_timesteps=1000)


# -- split quantizer -------------------------------------------------------------------------------
def _points(bits=4):
    w = TensorQuantizer(bits=bits, symmetric=True, axis=0, role="weight")
    x = TensorQuantizer(bits=bits, symmetric=False, axis=None, role="input")
    return w, x


def _calibrated(layer, inputs):
    for _, q in quantizers(layer):
        q.set_mode("calib")
    layer.calibrate_weight()
    layer(inputs)
    for _, q in quantizers(layer):
        q.finish_calibration()
        q.set_mode("quant")
    return layer


def test_split_equals_unsplit_when_halves_share_a_scale():
    torch.manual_seed(0)
    conv = nn.Conv2d(12, 6, 1)
    x = torch.randn(4, 12, 5, 5)
    plain = _calibrated(QuantConv2d.from_float(copy.deepcopy(conv), *_points()), x)
    w1, x1 = _points()
    w2, x2 = _points()
    split = SplitQuantConv2d.from_float(copy.deepcopy(conv), w1, x1, 7, w2, x2)
    for q in (w1, w2, x1, x2):
        q.set_mode("quant")
    for q in (w1, w2):
        q.quantizer.set_params(plain.weight_quantizer.quantizer.scale.clone(), plain.weight_quantizer.quantizer.zero_point.clone())
    for q in (x1, x2):
        q.quantizer.set_params(plain.input_quantizer.quantizer.scale.clone(), plain.input_quantizer.quantizer.zero_point.clone())
    assert torch.equal(split(x), plain(x))


def test_split_quantizes_parts_of_different_ranges_better():
    # The skip half is 100x larger (the paper's bimodal shortcut input) and its weights 100x smaller,
    # so both halves contribute alike to the output: one scale for both loses the small input half
    # and the small weight half; separate scales keep both.
    torch.manual_seed(0)
    conv = nn.Conv2d(16, 8, 1)
    with torch.no_grad():
        conv.weight[:, 8:] /= 100
    x = torch.cat([torch.randn(64, 8, 4, 4), 100 * torch.randn(64, 8, 4, 4)], dim=1)
    ref = conv(x)
    plain = _calibrated(QuantConv2d.from_float(copy.deepcopy(conv), *_points(4)), x)
    w1, x1 = _points(4)
    w2, x2 = _points(4)
    split = _calibrated(SplitQuantConv2d.from_float(copy.deepcopy(conv), w1, x1, 8, w2, x2), x)
    err_plain = (plain(x) - ref).pow(2).mean()
    err_split = (split(x) - ref).pow(2).mean()
    assert err_split < 0.5 * err_plain
    # each half really has its own input scale
    assert x2.quantizer.scale.item() > 20 * x1.quantizer.scale.item()


def test_skip_splits_follow_the_up_path():
    unet = tiny_unet()
    splits = skip_splits(unet)
    # up_blocks.0 reads the middle block (32 channels) then its own output; up_blocks.1 starts from 32.
    assert splits == {"up_blocks.0.resnets.0.conv_shortcut": 32, "up_blocks.0.resnets.1.conv_shortcut": 32,
                      "up_blocks.1.resnets.0.conv_shortcut": 32, "up_blocks.1.resnets.1.conv_shortcut": 16}
    seen = {}
    def record(name):
        def hook(module, args):
            seen[name] = args[0].shape[1]
        return hook

    hooks = [unet.get_submodule(n).register_forward_pre_hook(record(n)) for n in splits]
    with torch.no_grad():
        unet(torch.randn(1, 3, 8, 8), 10)
    for h in hooks:
        h.remove()
    for name, split in splits.items():  # the concatenation really is [h (split channels), skip]
        assert seen[name] == unet.get_submodule(name).in_channels > split


# -- adapter, processor ----------------------------------------------------------------------------
@pytest.mark.parametrize("make", [tiny_unet, tiny_cond_unet])
def test_quantizable_attention_matches_diffusers_when_points_are_off(make):
    unet = make()
    ref = copy.deepcopy(unet)
    inputs = family_of(unet).example_inputs(unet, batch=2)
    inputs["sample"] = torch.randn_like(inputs["sample"])
    if "encoder_hidden_states" in inputs:
        inputs["encoder_hidden_states"] = torch.randn_like(inputs["encoder_hidden_states"])
    prepare_unet(unet, {"weight": dict(bits=8, symmetric=True, axis=0), "input": dict(bits=8), "attn_q": dict(bits=8),
                        "attn_k": dict(bits=8), "softmax": dict(bits=8), "attn_v": dict(bits=8)})
    with torch.no_grad(), points_disabled(unet):
        out = unet(**inputs).sample
    with torch.no_grad():
        expected = ref(**inputs).sample
    assert torch.allclose(out, expected, atol=1e-5, rtol=1e-4)


def test_cond_unet_adapter_finds_blocks_and_cross_attention():
    unet = tiny_cond_unet()
    adapter = family_of(unet)
    assert adapter.kind == "unet"
    blocks = adapter.blocks("unet")
    assert any(b.endswith("transformer_blocks.0") for b in blocks)
    resnets = [n for n, m in unet.named_modules() if type(m).__name__ == "ResnetBlock2D"]
    assert sorted(b for b in blocks if ".resnets." in b) == sorted(resnets) and len(resnets) == 8  # down 2, mid 2, up 2x2
    batches = [{"sample": torch.randn(4, 4, 8, 8), "timestep": torch.randint(0, 1000, (4,)),
                "encoder_hidden_states": torch.randn(4, 6, 16)} for _ in range(2)]
    cfg = vitq.QuantConfig(method="q-diffusion", bits="W8A8", options={"iters": 4, "act_iters": 2})
    q = vitq.quantize(unet, cfg, calib=batches, progress=False)
    cross = [m for n, m in q.named_modules() if n.endswith("attn2")]
    assert cross and all(m.vitq_qk.b_quantizer.active and m.vitq_pv.a_quantizer.active for m in cross)
    with torch.no_grad():
        out, ref = q(**batches[0]).sample, unet(**batches[0]).sample
    cos = nn.functional.cosine_similarity(out.flatten(), ref.flatten(), dim=0)
    assert cos > 0.99
    assert q.vitq_info["q_diffusion"]["units"]


# -- timestep-aware calibration --------------------------------------------------------------------
def test_calibration_covers_the_timesteps_it_claims():
    unet, sched = tiny_unet(), scheduler()
    cal = timestep_calibration(unet, sched, steps=20, interval=5, per_step=6, pool=9, batch_size=4, seed=3, progress=False)
    sched.set_timesteps(20)
    expected = [int(sched.timesteps[i]) for i in (0, 5, 10, 15)]
    assert cal.timesteps == expected
    assert cal.per_timestep == {t: 6 for t in expected}
    xs = torch.cat([b["sample"] for b in cal.batches])
    ts = torch.cat([b["timestep"] for b in cal.batches])
    assert xs.shape == (24, 3, 8, 8) and sorted(set(ts.tolist())) == sorted(expected)
    # every input is the full-precision sampler's x_t at its timestep, from one of the pool's trajectories
    noise = torch.randn(9, 3, 8, 8, generator=torch.Generator().manual_seed(3))
    trajectory = {}
    sample(unet, sched, noise, 20, on_step=lambda i, t, x, start: trajectory.setdefault(t, x.clone()))
    for x, t in zip(xs, ts.tolist()):
        assert (trajectory[t] - x).flatten(1).abs().max(1).values.min() < 1e-6
    last = timestep_calibration(unet, sched, steps=20, interval=5, per_step=6, batch_size=4, seed=3, progress=False, where="last")
    assert last.timesteps == [int(sched.timesteps[-1])] and last.size == 24


def test_calibration_rejects_bad_settings():
    with pytest.raises(ConfigError, match="unknown calibration timesteps"):
        timestep_calibration(tiny_unet(), scheduler(), where="middle")
    with pytest.raises(ConfigError, match="interval"):
        vitq.QuantConfig(method="q-diffusion", options={"interval": 0})
        vitq.methods.get_method("q-diffusion").parse_options({"interval": 0})


# -- bit specs, costs, method errors ---------------------------------------------------------------
def test_a32_keeps_activations_in_full_precision():
    assert str(parse_bits("W4A32")) == "W4A32"
    unet = tiny_unet()
    q = vitq.quantize(unet, vitq.QuantConfig(method="minmax", bits="W4A32"), calib=[{"sample": torch.randn(2, 3, 8, 8), "timestep": torch.tensor([1, 500])}],
                      progress=False)
    roles = {p.role for _, p in quantizers(q)}
    assert roles == {"weight"}
    assert model_size(q)["bytes"] < model_size(unet)["bytes"] / 7
    with pytest.raises(ConfigError):
        parse_bits("W32A8")


def test_unet_costs_count_quantized_layers():
    unet = tiny_unet()
    q = vitq.quantize(unet, vitq.QuantConfig(method="minmax", bits="W4A8"),
                      calib=[{"sample": torch.randn(2, 3, 8, 8), "timestep": torch.tensor([1, 500])}], progress=False)
    fp_cost, q_cost = compute_cost(unet), compute_cost(q)
    assert fp_cost["flops"] == q_cost["flops"] > 0
    assert q_cost["bops"] < fp_cost["bops"] / 20


def test_methods_say_which_architectures_they_support():
    with pytest.raises(ConfigError, match="does not support a unet model"):
        vitq.quantize(tiny_unet(), vitq.QuantConfig(method="repq-vit", bits="W8A8"), calib=[], progress=False)


# -- the method ------------------------------------------------------------------------------------
def test_q_diffusion_end_to_end_hardens_split_rounding_and_beats_linear_on_held_out_inputs():
    unet, sched = tiny_unet(), scheduler()
    cal = timestep_calibration(unet, sched, steps=10, interval=2, per_step=8, batch_size=8, seed=0, progress=False)
    # fewer steps than the presets, so a larger rounding learning rate than the paper's
    cfg = vitq.QuantConfig(method="q-diffusion", bits="W4A8", options={"iters": 150, "act_iters": 50, "round_lr": 1e-2})
    q = vitq.quantize(unet, cfg, calib=cal.batches, progress=False)
    info = q.vitq_info["q_diffusion"]
    assert set(info["split_shortcuts"]) == set(skip_splits(unet))
    split = q.get_submodule("up_blocks.1.resnets.1.conv_shortcut")
    assert isinstance(split, SplitQuantConv2d)
    for attr, index in split.weight_parts():  # rounding learned per half, written back on each half's grid
        wq = getattr(split, attr)
        assert torch.equal(wq.quantizer(split.weight[index]), split.weight[index])
    assert sum(u["mse_after"] for u in info["units"]) < sum(u["mse_before"] for u in info["units"])
    # on inputs of other trajectories (another seed, every timestep), q-diffusion predicts the noise
    # closer to full precision than linear quantization calibrated on the same set
    same_ends = {"conv_in": "W8A8", "conv_out": "W8A8"}  # q-diffusion keeps them at 8 bits
    lin = vitq.quantize(unet, vitq.QuantConfig(method="minmax", bits="W4A8", bit_plan=same_ends), calib=cal.batches, progress=False)
    held = timestep_calibration(unet, sched, steps=10, interval=1, per_step=8, batch_size=40, seed=9, progress=False).batches[0]

    def error(model):
        with torch.no_grad():
            ref = unet(held["sample"], held["timestep"]).sample
            return float((model(held["sample"], held["timestep"]).sample - ref).pow(2).sum() / ref.pow(2).sum())

    assert error(q) < 0.85 * error(lin)  # measured 0.69x; without reconstruction 1.06x


# -- metrics ---------------------------------------------------------------------------------------
def test_generation_metrics():
    torch.manual_seed(0)
    a = torch.randn(4000, 6)
    assert abs(frechet_distance(a, a)) < 1e-6
    shift = torch.tensor([1.0, 2.0, 0, 0, 0, 0])
    assert abs(frechet_distance(a, a + shift) - 5.0) < 1e-4
    assert abs(frechet_distance(a, 2 * a) - 6.0) < 0.3  # Tr(S + 4S - 2*2S) = Tr(S) ~ 6
    assert abs(inception_score(torch.full((10, 5), 0.2)) - 1.0) < 1e-9
    assert abs(inception_score(torch.eye(5)) - 5.0) < 1e-6
    x = torch.rand(3, 3, 16, 16) * 2 - 1
    assert torch.allclose(ssim(x, x), torch.ones(3))
    assert (ssim(x, x + 0.2 * torch.randn_like(x)) < 0.95).all()
    noisy = (x + 0.1).clamp(-1, 1)
    expected = 10 * torch.log10(1 / ((noisy - x) / 2).pow(2).flatten(1).mean(1))
    assert torch.allclose(psnr(noisy, x), expected)


# -- save, load, CLI, export -----------------------------------------------------------------------
def test_saved_quantized_unet_reloads_exactly(tmp_path):
    unet = tiny_cond_unet()
    batches = [{"sample": torch.randn(4, 4, 8, 8), "timestep": torch.randint(0, 1000, (4,)), "encoder_hidden_states": torch.randn(4, 6, 16)}]
    q = vitq.quantize(unet, vitq.QuantConfig(method="q-diffusion", bits="W4A8", options={"iters": 3, "act_iters": 2}),
                      calib=batches, progress=False)
    vitq.save(q, tmp_path / "q")
    loaded = vitq.load(tmp_path / "q")
    assert isinstance(loaded.get_submodule("up_blocks.1.resnets.0.conv_shortcut"), SplitQuantConv2d)
    with torch.no_grad():
        assert torch.equal(loaded(**batches[0]).sample, q(**batches[0]).sample)
    with pytest.raises(vitq.errors.ModelError, match="not implemented"):
        from vitq.export.onnx_qdq import export_onnx

        export_onnx(loaded, tmp_path / "onnx")


def test_baselines_do_not_split_shortcuts():
    calib = [{"sample": torch.randn(2, 3, 8, 8), "timestep": torch.tensor([1, 500])}]
    lin = vitq.quantize(tiny_unet(), vitq.QuantConfig(method="minmax", bits="W8A8"), calib=calib, progress=False)
    assert not any(isinstance(m, SplitQuantConv2d) for m in lin.modules())
    off = vitq.quantize(tiny_unet(), vitq.QuantConfig(method="q-diffusion", bits="W8A8", options={"reconstruct": False, "split_shortcuts": False}),
                        calib=calib, progress=False)
    assert not any(isinstance(m, SplitQuantConv2d) for m in off.modules())


def test_cli_quantizes_a_unet_without_calibration_images(tmp_path, monkeypatch):
    from vitq.cli import main

    folder = tmp_path / "unet"
    tiny_unet().save_pretrained(folder)
    scheduler().save_pretrained(folder)
    assert main(["quantize", "--model", str(folder), "--method", "minmax", "-b", "W8A8", "--num-calib", "20",
                 "--out", str(tmp_path / "q"), "--quiet"]) == 0
    loaded = vitq.load(tmp_path / "q")
    assert loaded.vitq_info["method"] == "minmax" and (tmp_path / "q" / "scheduler_config.json").is_file()
    assert main(["quantize", "--model", str(folder), "--method", "repq-vit", "-b", "W8A8", "--out", str(tmp_path / "r"), "--quiet"]) != 0


def test_first_and_last_layers_stay_at_8_bits_unless_asked():
    calib = [{"sample": torch.randn(2, 3, 8, 8), "timestep": torch.tensor([1, 500])}]
    opts = {"reconstruct": False}
    q = vitq.quantize(tiny_unet(), vitq.QuantConfig(method="q-diffusion", bits="W4A8", options=opts), calib=calib, progress=False)
    assert q.conv_in.weight_quantizer.bits == q.conv_out.weight_quantizer.bits == 8
    assert q.conv_out.input_quantizer.bits == 8 and q.up_blocks[0].resnets[0].conv1.weight_quantizer.bits == 4
    assert q.vitq_info["q_diffusion"]["eight_bit_layers"] == ["conv_in", "conv_out"]
    mine = vitq.quantize(tiny_unet(), vitq.QuantConfig(method="q-diffusion", bits="W4A32", options=opts, bit_plan={"conv_out": "W6A32"}),
                         calib=calib, progress=False)
    assert mine.conv_in.weight_quantizer.bits == 8 and mine.conv_out.weight_quantizer.bits == 6
    assert mine.conv_in.input_quantizer is None  # A32 stays weights-only
    every = vitq.quantize(tiny_unet(), vitq.QuantConfig(method="q-diffusion", bits="W4A8", options={**opts, "first_last_8bit": False}),
                          calib=calib, progress=False)
    assert every.conv_in.weight_quantizer.bits == every.conv_out.weight_quantizer.bits == 4


def test_conditional_calibration_needs_and_uses_the_conditioning():
    unet = tiny_cond_unet()
    with pytest.raises(ConfigError, match="conditional"):
        timestep_calibration(unet, scheduler(), steps=4, interval=2, per_step=2, progress=False)
    context = torch.randn(3, 6, 16)
    cal = timestep_calibration(unet, scheduler(), steps=4, interval=2, per_step=2, pool=3, batch_size=4, progress=False,
                               conditioning={"encoder_hidden_states": context})
    for batch in cal.batches:  # every input carries a row of the pool's conditioning
        assert batch["encoder_hidden_states"].shape[0] == batch["sample"].shape[0]
        assert all(any(torch.equal(row, c) for c in context) for row in batch["encoder_hidden_states"])
