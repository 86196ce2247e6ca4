"""Devices, dtypes and in-place quantization: a bf16 model calibrates and stays bf16, the method
says which dtypes it takes, the CLI's --dtype/--device reach the model, and inplace copies nothing."""

import copy

import pytest
import torch
from conftest import sample_inputs
from test_adapters import encode_all

import vitq
from vitq.errors import ConfigError, ModelError
from vitq.models.loading import load_model, model_dtype
from vitq.nn import QuantLinear


def _cos(a, b):
    return torch.nn.functional.cosine_similarity(a.float().flatten(1), b.float().flatten(1)).min().item()


def test_load_model_in_bf16():
    m = load_model("zoo:clip-tiny", dtype="bfloat16")
    assert {p.dtype for p in m.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in load_model("zoo:clip-tiny").parameters()} == {torch.float32}
    assert model_dtype("bf16") is torch.bfloat16
    with pytest.raises(ModelError, match="(?s)unknown model dtype 'int8'.*float32, bfloat16"):
        model_dtype("int8")


@pytest.mark.parametrize("method", ["minmax", "repq-vit"])
def test_bf16_model_quantizes_and_stays_bf16(models, inputs, tmp_path, method):
    fp = models["CLIPModel"]
    calib = [sample_inputs(seed=5, batch=4)]  # float32 batches: moved to the model's dtype
    q32 = vitq.quantize(fp, method=method, bits="W8A8", calib=calib, progress=False)
    q16 = vitq.quantize(copy.deepcopy(fp).to(torch.bfloat16), method=method, bits="W8A8", calib=calib, progress=False)
    assert {p.dtype for n, p in q16.named_parameters() if "quantizer" not in n} == {torch.bfloat16}
    bf_inputs = dict(inputs, pixel_values=inputs["pixel_values"].bfloat16())
    outs16, outs32 = encode_all(q16, bf_inputs), encode_all(q32, inputs)
    for a, b in zip(outs16, outs32):
        assert a.dtype == torch.bfloat16
        # bf16 keeps 8 mantissa bits: its W8A8 model is the float32 one up to that rounding
        assert _cos(a, b) > 0.99
    vitq.save(q16, tmp_path / "m")
    back = vitq.load(tmp_path / "m")
    for a, b in zip(outs16, encode_all(back, bf_inputs)):
        assert torch.equal(a, b)


def test_method_refuses_a_dtype_it_cannot_take(models):
    bf = copy.deepcopy(models["CLIPModel"]).to(torch.bfloat16)
    with pytest.raises(ConfigError, match="dynamic method needs a model in float32, this one is bfloat16"):
        vitq.quantize(bf, method="dynamic", progress=False)


def test_inplace_quantizes_the_model_itself(models):
    fp = copy.deepcopy(models["ViTModel"])
    calib = [sample_inputs(seed=5, batch=4)]
    q = vitq.quantize(fp, bits="W8A8", calib=calib, progress=False)
    assert q is not fp and not any(isinstance(m, QuantLinear) for m in fp.modules())
    same = vitq.quantize(fp, bits="W8A8", calib=calib, progress=False, inplace=True)
    assert same is fp and any(isinstance(m, QuantLinear) for m in fp.modules())
    x = sample_inputs(seed=9)["pixel_values"]
    with torch.no_grad():
        assert torch.equal(q(pixel_values=x).last_hidden_state, same(pixel_values=x).last_hidden_state)


def test_device_argument_moves_the_model(models):
    fp = copy.deepcopy(models["ViTModel"])
    q = vitq.quantize(fp, bits="W8A8", calib=[sample_inputs(seed=5, batch=4)], progress=False, device="cpu")
    assert all(p.device.type == "cpu" for p in q.parameters())
    with pytest.raises(RuntimeError):
        vitq.quantize(fp, bits="W8A8", calib=[sample_inputs(seed=5, batch=4)], progress=False, device="no-such-device")


def test_cli_dtype(tmp_path, capsys):
    from vitq.cli import main

    rc = main(["quantize", "--model", "zoo:clip-tiny", "--method", "dynamic", "--dtype", "bfloat16", "--out", str(tmp_path / "d")])
    assert rc != 0 and "needs a model in float32, not bfloat16" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()

