"""QDQ ONNX export: vitq's exact scales in the graph, int8 weights, float LayerNorm/Softmax, and
agreement of ONNX Runtime with the simulated (fake-quant) model."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import needs_data, sample_inputs

import vitq
from vitq.errors import ConfigError, ModelError
from vitq.nn import QuantEmbedding, quantizers

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
from onnx import numpy_helper  # noqa: E402

from vitq.export import export_onnx, load_exported  # noqa: E402
from vitq.export.runtime import ExportedModel  # noqa: E402
from vitq.export.towers import tower_module  # noqa: E402


def _quantize(model, bits="W8A8", method="minmax", calib=None):
    calib = calib if calib is not None else [sample_inputs(seed=5, batch=4)]
    return vitq.quantize(model, vitq.QuantConfig(method=method, bits=bits), calib=calib, progress=False)


def _cosine(a, b):
    return torch.nn.functional.cosine_similarity(a.flatten(1).float(), b.flatten(1).float(), dim=-1)


def _simulated(q, tower, *args):
    with torch.no_grad():
        return tower_module(q, tower)(*args)


def assert_like_simulation(got, sim, fp, factor=0.05):
    """The export agrees with the simulation far more closely than the simulation agrees with the
    float model: a dropped, mis-scaled or saturating quantizer moves it by about the quantization
    error itself (here 6e-5 to 4e-2 in 1 - cosine), an exact export by float rounding (about 1e-7).
    One input may sit on a rounding boundary that the runtime's float ops cross (1e-5 seen on one
    of 168 real images), so the bound on the worst input is the quantization error itself."""
    err_export = 1 - _cosine(got, sim)
    err_quant = 1 - _cosine(sim, fp)
    typical = err_quant.median()
    assert typical > 1e-5, "quantization too weak for the comparison to mean anything"
    assert err_export.median() <= factor * typical and err_export.max() <= typical, (
        err_export.median().item(), err_export.max().item(), typical.item())


@pytest.fixture(scope="module")
def clip_w8a8(models, tmp_path_factory):
    q = _quantize(models["CLIPModel"])
    out = export_onnx(q, tmp_path_factory.mktemp("clip") / "onnx")
    return q, out


def _constants(graph) -> dict:
    out = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    for n in graph.node:
        if n.op_type == "Constant":
            out[n.output[0]] = numpy_helper.to_array(n.attribute[0].t)
    return out


def _qdq_params(graph, op_type: str) -> list[tuple[np.ndarray, np.ndarray]]:
    consts = _constants(graph)
    return [(consts[n.input[1]], consts[n.input[2]]) for n in graph.node if n.op_type == op_type]


def _weight_codes(graph) -> list[tuple[np.ndarray, np.ndarray]]:
    """(stored codes, zero-point) of every integer weight initializer feeding a DequantizeLinear."""
    consts = _constants(graph)
    return [(consts[n.input[0]], consts[n.input[2]]) for n in graph.node if n.op_type == "DequantizeLinear"
            and n.input[0] in consts and consts[n.input[0]].dtype in (np.int8, np.uint8) and consts[n.input[0]].ndim >= 2]


def _key(scale, zp):
    return (tuple(np.asarray(scale, np.float32).reshape(-1).tolist()), tuple(np.asarray(zp).reshape(-1).astype(int).tolist()))


def test_graph_has_vitq_scales_int8_weights_and_float_norms(clip_w8a8):
    q, out = clip_w8a8
    for tower, prefix in (("image", ("vision_model.", "visual_projection")), ("text", ("text_model.", "text_projection"))):
        graph = onnx.load(str(out / f"{tower}.onnx")).graph
        ops = {n.op_type for n in graph.node}
        assert {"QuantizeLinear", "DequantizeLinear", "LayerNormalization", "Softmax"} <= ops
        assert not {"QLinearMatMul", "MatMulInteger"} & ops  # plain QDQ: the runtime chooses its kernels
        points = [(n, p) for n, p in quantizers(q) if n.startswith(prefix) and p.active]
        weights = [p for n, p in points if p.role == "weight"]
        acts = [p for n, p in points if p.role != "weight"]
        # Activations: every Q node carries one of vitq's (scale, zero-point) pairs, exactly, and each point appears.
        expected = {_key(p.quantizer.scale.detach(), p.quantizer.zero_point) for p in acts}
        found = {_key(s, z) for s, z in _qdq_params(graph, "QuantizeLinear")}
        assert found == expected
        # Weights: one-byte integer initializers feeding DequantizeLinear with vitq's per-channel scales
        # (int8, or uint8 with the zero-point moved by 128 where this CPU's u8 x s8 kernels saturate).
        codes = _weight_codes(graph)
        tables = [(n, p) for n, p in points if p.role == "weight" and isinstance(q.get_submodule(n.rpartition(".")[0]), QuantEmbedding)]
        assert len(tables) == (tower == "text")  # the text tower's token embedding has rows on a grid
        weights = [p for n, p in points if p.role == "weight" and (n, p) not in tables]
        assert len(codes) == len(weights)
        consts = _constants(graph)
        for name, p in tables:  # the table's int8 codes are gathered, then only those rows dequantized
            gathered = [n.input[0] for n in graph.node if n.op_type == "Gather" and n.input[0] in consts
                        and consts[n.input[0]].dtype == np.int8 and consts[n.input[0]].ndim == 2]
            assert len(gathered) == 1
            table = q.get_submodule(name.rpartition(".")[0])
            assert np.array_equal(consts[gathered[0]], p.quantizer.quantize(table.weight.detach()).numpy().astype(np.int8))
            assert not [n for n in graph.node if n.op_type == "DequantizeLinear" and gathered[0] in n.input]
        shift = 128 if any(c.dtype == np.uint8 for c, _ in codes) else 0
        weight_scales = {_key(s, np.asarray(z).astype(int) - (shift if np.asarray(z).dtype == np.uint8 else 0))
                         for s, z in _qdq_params(graph, "DequantizeLinear")}
        assert {_key(p.quantizer.scale.detach(), p.quantizer.zero_point) for p in weights} <= weight_scales
        float_weights = [t for t in graph.initializer if t.data_type == onnx.TensorProto.FLOAT and len(t.dims) == 2 and min(t.dims) > 16]
        names = [t.name for t in float_weights]
        assert all("position" in n for n in names), names  # only position tables stay float


def test_onnxruntime_agrees_with_simulation(clip_w8a8, models):
    q, out = clip_w8a8
    fp = models["CLIPModel"]
    exported = ExportedModel(out)
    for seed, batch in ((1, 3), (2, 5)):  # dynamic batch
        x = sample_inputs(seed=seed, batch=batch)
        px = x["pixel_values"]
        assert_like_simulation(exported.encode_image(px), _simulated(q, "image", px), _simulated(fp, "image", px))
        text = (x["input_ids"], x["attention_mask"])
        assert_like_simulation(exported.encode_text(*text), _simulated(q, "text", *text), _simulated(fp, "text", *text))
    ids = torch.randint(3, 120, (2, 13))  # another sequence length
    ids[:, -1] = 2
    mask = torch.ones_like(ids)
    assert_like_simulation(exported.encode_text(ids, mask), _simulated(q, "text", ids, mask), _simulated(fp, "text", ids, mask))


def test_weights_are_one_byte_each(clip_w8a8):
    q, out = clip_w8a8
    quantized = sum(m.weight.numel() for n, m in q.named_modules()
                    if n.startswith(("vision_model.", "visual_projection")) and getattr(m, "weight_quantizer", None) is not None)
    graph = onnx.load(str(out / "image.onnx")).graph
    one_byte = sum(np.prod(t.dims) for t in graph.initializer
                   if t.data_type in (onnx.TensorProto.INT8, onnx.TensorProto.UINT8) and len(t.dims) >= 2)
    assert one_byte == quantized  # every quantized weight is stored once, as one-byte codes


@needs_data("cifar10")
def test_classifier_top1_agrees_on_real_images(models, tmp_path):
    from vitq.data import ImageFolder, ResizeCropNormalize, data_root

    tf = ResizeCropNormalize(size=32)
    images = ImageFolder(data_root() / "cifar10" / "test", transform=tf, limit=200)
    x = torch.stack([images[i][0] for i in range(len(images))])
    calib, test = x[:32], x[32:]
    q = _quantize(models["ViTForImageClassification"], calib=[calib])
    out = export_onnx(q, tmp_path / "onnx")
    got = ExportedModel(out).encode_image(test)
    ref = _simulated(q, "image", test)
    assert len(test) >= 100
    assert (got.argmax(-1) == ref.argmax(-1)).float().mean() >= 0.99
    assert_like_simulation(got, ref, _simulated(models["ViTForImageClassification"], "image", test))


def test_w4a4_exports_unpacked_to_int8(models, tmp_path):
    q = _quantize(models["CLIPModel"], bits="W4A4")
    out = export_onnx(q, tmp_path / "onnx", towers=["image"])
    graph = onnx.load(str(out / "image.onnx")).graph
    consts = _constants(graph)
    codes = [consts[n.input[0]] for n in graph.node if n.op_type == "DequantizeLinear" and consts.get(n.input[0], np.zeros(0)).dtype == np.int8]
    assert codes and all(c.min() >= -8 and c.max() <= 7 for c in codes)  # 4-bit codes in int8 storage
    x = sample_inputs(seed=3, batch=4)["pixel_values"]
    got = ExportedModel(out).encode_image(x)
    assert_like_simulation(got, _simulated(q, "image", x), _simulated(models["CLIPModel"], "image", x))
    from vitq.export.sizes import size_report

    vitq.save(q, tmp_path / "m")
    sizes = size_report(q, tmp_path / "m", out)
    # two 4-bit codes per byte for the linears; the token table's rows stay 8-bit
    table = q.text_model.embeddings.token_embedding
    assert isinstance(table, QuantEmbedding) and table.weight_quantizer.bits == 8
    packed = (sizes["quantized_weight_params"] - table.weight.numel()) // 2 + table.weight.numel()
    assert sizes["theoretical_bytes"] == packed + 4 * sizes["float_params"]
    assert sizes["safetensors_bytes"] >= sizes["theoretical_bytes"] and sizes["onnx_bytes"] > 0


def test_log_softmax_quantizer_exports_as_float_ops(models, tmp_path):
    """RepQ-ViT's shift-only log2 post-Softmax points become float ops (one Log and the parity's
    Ceil per point), and at W4A4, where every quantizer's effect is visible, the export computes
    the simulation."""
    model = models["ViTForImageClassification"]
    q = _quantize(model, bits="W4A4", method="repq-vit", calib=[sample_inputs(seed=5, batch=8)["pixel_values"]])
    logs = [p for _, p in quantizers(q) if p.kind == "log2_parity"]
    assert len(logs) == 2
    out = export_onnx(q, tmp_path / "onnx")
    ops = [n.op_type for n in onnx.load(str(out / "image.onnx")).graph.node]
    assert ops.count("Log") == len(logs) and ops.count("Ceil") == len(logs)
    x = sample_inputs(seed=3, batch=4)["pixel_values"]
    assert_like_simulation(ExportedModel(out).encode_image(x), _simulated(q, "image", x), _simulated(model, "image", x))
    for p in logs:  # without the log points the export would not match
        p.enabled = False
    assert (1 - _cosine(ExportedModel(out).encode_image(x), _simulated(q, "image", x))).max() > 1e-4


def test_load_with_runtime_gives_encode_interface(models, tmp_path):
    q = _quantize(models["CLIPModel"])
    vitq.save(q, tmp_path / "m")
    m = vitq.load(tmp_path / "m", runtime="onnxruntime")
    assert (tmp_path / "m" / "onnx" / "export.json").is_file()  # exported on first use, beside the safetensors
    vitq.load(tmp_path / "m")  # the saved folder still verifies against its manifest
    x = sample_inputs(seed=4)
    img = m.get_image_features(pixel_values=x["pixel_values"]).pooler_output
    txt = m.get_text_features(input_ids=x["input_ids"], attention_mask=x["attention_mask"]).pooler_output
    assert torch.equal(img, m.encode_image(x["pixel_values"])) and img.shape == (3, 16) and txt.shape == (3, 16)
    text = (x["input_ids"], x["attention_mask"])
    assert_like_simulation(txt, _simulated(q, "text", *text), _simulated(models["CLIPModel"], "text", *text))
    assert m.config.projection_dim == 16
    with pytest.raises(ConfigError, match="unknown runtime"):
        vitq.load(tmp_path / "m", runtime="tensorrt")


def test_classifier_interface_returns_logits(models, tmp_path):
    q = _quantize(models["ViTForImageClassification"], calib=[sample_inputs()["pixel_values"]])
    vitq.save(q, tmp_path / "m")
    m = load_exported(tmp_path / "m")
    x = sample_inputs(seed=4)["pixel_values"]
    logits = m(pixel_values=x).logits
    assert logits.shape == (3, 5) and not hasattr(m, "get_image_features")
    from vitq.models.families import family_of

    assert torch.equal(family_of(q).encode_image(m, x), logits)


def test_openvino_runtime_agrees(clip_w8a8, models):
    pytest.importorskip("openvino")
    q, out = clip_w8a8
    x = sample_inputs(seed=6)
    m = ExportedModel(out, runtime="openvino")
    px = x["pixel_values"]
    assert_like_simulation(m.encode_image(px), _simulated(q, "image", px), _simulated(models["CLIPModel"], "image", px))
    text = (x["input_ids"], x["attention_mask"])
    assert_like_simulation(m.encode_text(*text), _simulated(q, "text", *text), _simulated(models["CLIPModel"], "text", *text))


def test_unquantized_model_is_refused(models, tmp_path):
    with pytest.raises(ModelError, match="not quantized"):
        export_onnx(models["ViTModel"], tmp_path / "x")


def test_cli_export_and_errors(models, tmp_path, capsys):
    from vitq.cli import main

    q = _quantize(models["CLIPModel"])
    vitq.save(q, tmp_path / "m")
    assert main(["export", "--model", str(tmp_path / "m"), "--out", str(tmp_path / "e"), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "image:" in printed and "text:" in printed and "ONNX Runtime vs simulation" in printed and "size: theoretical" in printed
    assert {"image.onnx", "text.onnx", "export.json", "config.json"} <= {p.name for p in (tmp_path / "e").iterdir()}

    assert main(["export", "--model", str(tmp_path / "m"), "--format", "tflite"]) == 2
    err = capsys.readouterr().err
    assert "unknown export format 'tflite'" in err and "onnx" in err and "Traceback" not in err
    (tmp_path / "plain").mkdir()
    assert main(["export", "--model", str(tmp_path / "plain")]) == 2
    err = capsys.readouterr().err
    assert "not a vitq quantized-model folder" in err and "vitq quantize" in err and "Traceback" not in err


@pytest.mark.parametrize("cls", ["VisionTextDualEncoderModel"])
def test_other_families_export_and_agree(models, tmp_path, cls):
    q = _quantize(models[cls])
    m = ExportedModel(export_onnx(q, tmp_path / "onnx"))
    x = sample_inputs(seed=2)
    for tower in m.towers:
        args = (x["pixel_values"],) if tower == "image" else (x["input_ids"], x["attention_mask"])
        got = m.encode_image(*args) if tower == "image" else m.encode_text(*args)
        assert_like_simulation(got, _simulated(q, tower, *args), _simulated(models[cls], tower, *args))


@pytest.mark.parametrize("method", ["minmax", "repq-vit"])
def test_symmetric_attention_exports_signed_qkv(models, tmp_path, method):
    cfg = vitq.QuantConfig(method=method, bits="W8A8", options={"symmetric_attention": True})
    q = vitq.quantize(models["CLIPModel"], cfg, calib=[sample_inputs(seed=5, batch=4)], progress=False)
    out = export_onnx(q, tmp_path / "onnx", towers=["image"])
    graph = onnx.load(str(out / "image.onnx")).graph
    zps = [z for s, z in _qdq_params(graph, "QuantizeLinear")]
    qkv = [p for n, p in quantizers(q) if n.startswith("vision_model.") and p.role in ("attn_q", "attn_k", "attn_v")]
    assert sum(z.dtype == np.int8 for z in zps) == len(qkv) and all(p.quantizer.symmetric for p in qkv)
    x = sample_inputs(seed=3, batch=4)["pixel_values"]
    assert_like_simulation(ExportedModel(out).encode_image(x), _simulated(q, "image", x), _simulated(models["CLIPModel"], "image", x))


def _zoo_clip():
    from vitq import zoo

    try:
        zoo.path("clip-tiny")
    except ModelError:
        return None
    return zoo.load("clip-tiny")


@pytest.fixture(scope="module")
def zoo_clip_export(tmp_path_factory):
    """zoo:clip-tiny at W8A8 (minmax), images calibrated on 32 CIFAR-10 test images and text on 64
    Flickr8k captions, exported; with 48 more images and the ten class prompts to score."""
    from conftest import has_data

    if not (has_data("cifar10") and has_data("flickr8k-1k", "captions.csv")):
        pytest.skip("real data cifar10 and flickr8k-1k not available (set VITQ_DATA)")
    model = _zoo_clip()
    if model is None:
        pytest.skip("zoo:clip-tiny has no weights yet")
    from vitq import zoo
    from vitq.data import ImageFolder, data_root, image_transform
    from vitq.data.captions import read_caption_csv

    images = ImageFolder(data_root() / "cifar10" / "test", transform=image_transform(model), limit=80)
    x = torch.stack([images[i][0] for i in range(len(images))])
    tokenize = zoo.tokenizer("clip-tiny")
    prompts = tokenize([f"a photo of a {c.name}" for c in images.classes], padding=True, return_tensors="pt")
    captions = tokenize([c for _, c in read_caption_csv(data_root() / "flickr8k-1k" / "captions.csv")[:64]],
                        padding=True, return_tensors="pt")
    calib = [{"pixel_values": x[:32], "input_ids": captions["input_ids"], "attention_mask": captions["attention_mask"]}]
    q = _quantize(model, calib=calib)
    return q, export_onnx(q, tmp_path_factory.mktemp("zoo_clip") / "onnx"), x[32:], prompts, captions


def test_zoo_clip_export_agrees_on_real_images(zoo_clip_export):
    q, folder, x, tok, _ = zoo_clip_export
    m = ExportedModel(folder)
    img, ref = m.encode_image(x), _simulated(q, "image", x)
    txt, ref_txt = m.encode_text(tok["input_ids"], tok["attention_mask"]), _simulated(q, "text", tok["input_ids"], tok["attention_mask"])
    # The runtime's float ops (LayerNorm, GELU, accumulation order) can move a value across a rounding
    # tie of an activation quantizer. In the image tower that changes an embedding by about 1e-5;
    # in MiniLM at W8A8 one such code flips a few more in each later layer (the next test pins the
    # export down exactly), so a prompt's embedding may move by a few percent (0.966 seen at worst,
    # three of ten prompts below 0.999 in one calibration, none in another).
    assert _cosine(img, ref).mean() >= 0.999 and _cosine(img, ref).min() >= 0.99
    assert _cosine(txt, ref_txt).mean() >= 0.99 and _cosine(txt, ref_txt).min() >= 0.95
    # The zero-shot predictions then agree except near ties of the scores (0.98, 0.94 and 0.90 of 48
    # images seen; a mis-scaled kernel moves every prompt and flips far more).
    norm = lambda t: t / t.norm(dim=-1, keepdim=True)  # noqa: E731
    exported, simulated = norm(img) @ norm(txt).T, norm(ref) @ norm(ref_txt).T
    assert (exported.argmax(-1) == simulated.argmax(-1)).float().mean() >= 0.85


def test_zoo_clip_text_export_differs_only_at_rounding_ties(zoo_clip_export):
    """The exact statement behind the tolerances above: on each of 64 real captions, the runtime's
    codes equal the simulation's at every activation point up to the first point where they differ,
    and there every differing code comes from a value within float rounding of a tie (x/s = k + 1/2)."""
    import onnxruntime as ort

    from vitq.nn import TensorQuantizer

    q, folder, _, _, captions = zoo_clip_export
    graph = onnx.load(folder / "text.onnx")
    constants = _constants(graph.graph)
    points = [n for n in graph.graph.node if n.op_type == "QuantizeLinear"]
    for n in points:
        graph.graph.output.append(onnx.helper.make_empty_tensor_value_info(n.output[0]))
    session = ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])
    # Node "/text_model/encoder/layer.0/.../input_quantizer/QuantizeLinear" is the point "...layer.0....input_quantizer".
    quantizers = {name: m for name, m in q.named_modules() if isinstance(m, TensorQuantizer)}
    by_node = {}
    for n in points:
        suffix = n.name.strip("/").removesuffix("/QuantizeLinear").replace("/", ".")
        (by_node[n.name],) = [name for name in quantizers if name.endswith(suffix)]
    for i in range(len(captions["input_ids"])):
        length = int(captions["attention_mask"][i].sum())
        ids, mask = captions["input_ids"][i:i + 1, :length], captions["attention_mask"][i:i + 1, :length]
        seen = {}
        hooks = [quantizers[name].register_forward_hook(lambda mod, inp, out, name=name: seen.__setitem__(name, (inp[0], out)))
                 for name in by_node.values()]
        try:
            _simulated(q, "text", ids, mask)
        finally:
            for h in hooks:
                h.remove()
        outs = dict(zip([o.name for o in session.get_outputs()], session.run(None, {"input_ids": ids.numpy(), "attention_mask": mask.numpy()})))
        for n in points:
            scale = constants[n.input[1]].item()  # activations: one scale per tensor
            zero = constants[n.input[2]]
            x, fake = (t.double().numpy().reshape(outs[n.output[0]].shape) / scale for t in seen[by_node[n.name]])
            wrong = outs[n.output[0]].astype(np.int64) != np.rint(fake) + zero.item()  # the simulation's codes
            if wrong.any():
                distance_to_tie = np.abs(np.abs(x[wrong] - np.floor(x[wrong])) - 0.5)
                # Float order moves values by about 1e-6 of a step, so a tie is met on about half of the
                # captions (29 of 64 seen); a scale 0.2% off gives codes a quarter step from any tie.
                assert distance_to_tie.max() < 1e-4, (i, n.name, distance_to_tie.max())
                break


def test_export_verifies_and_reports_integer_kernels(models, tmp_path):
    """export.json carries the check: every quantized linear (the classifier head on the CLS token
    included) runs on an integer kernel, and the runtime agrees with the simulation."""
    q = _quantize(models["ViTForImageClassification"], calib=[sample_inputs()["pixel_values"]])
    out = export_onnx(q, tmp_path / "onnx")
    checked = __import__("json").loads((out / "export.json").read_text())["check"]["image"]
    linears = [n for n, m in q.named_modules() if isinstance(m, torch.nn.Linear) and m.weight_quantizer is not None]
    assert "classifier" in linears
    assert checked["float_linears"] == [] and checked["weight_only_linears"] == []
    assert checked["integer_kernels"] >= len(linears) and checked["cosine_min"] >= 0.999


def test_export_that_disagrees_is_refused_and_not_marked(models, tmp_path, monkeypatch):
    """A graph whose numbers are off (here: every weight scale doubled after folding) fails the check,
    and the folder gets no export.json and no graph."""
    from vitq.export import graph_passes

    real = graph_passes.optimize_qdq_graph

    def broken(model, weight_dtype="auto"):
        stats = real(model, weight_dtype)
        for t in model.graph.initializer:
            if t.name.endswith("weight_quantizer.scale"):
                t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t) * 2, t.name))
        return stats

    monkeypatch.setattr(graph_passes, "optimize_qdq_graph", broken)
    q = _quantize(models["ViTForImageClassification"], calib=[sample_inputs()["pixel_values"]])
    with pytest.raises(ModelError, match="does not compute what the simulated model computes"):
        export_onnx(q, tmp_path / "onnx")
    assert not any((tmp_path / "onnx").iterdir())
    monkeypatch.setattr(graph_passes, "optimize_qdq_graph", real)
    assert (export_onnx(q, tmp_path / "onnx") / "export.json").is_file()


def test_per_channel_activation_is_refused_with_the_layer_name(models, tmp_path):
    q = vitq.quantize(models["ViTForImageClassification"], vitq.QuantConfig(method="repq-vit", bits="W8A8", options={"post_ln": "channel"}),
                      calib=[sample_inputs(seed=5, batch=8)["pixel_values"]], progress=False)
    with pytest.raises(ModelError, match=r"vit\.layers\.0\.layernorm_before\.output_quantizer quantizes an activation with one scale per channel") as err:
        export_onnx(q, tmp_path / "onnx")
    assert "--exclude" in err.value.hint
    assert not (tmp_path / "onnx" / "export.json").exists()


@pytest.mark.parametrize("saturates", [True, False])
def test_weight_storage_follows_the_cpu(models, tmp_path, monkeypatch, saturates):
    """8-bit signed weights are stored as uint8 (+128) where u8 x s8 kernels saturate, as int8 elsewhere;
    either way the dequantized weights are vitq's."""
    from vitq.export import cpu

    monkeypatch.setattr(cpu, "u8s8_saturates", lambda: saturates)
    q = _quantize(models["ViTForImageClassification"], calib=[sample_inputs()["pixel_values"]])
    out = export_onnx(q, tmp_path / "onnx", check=0)
    graph = onnx.load(str(out / "image.onnx")).graph
    codes = _weight_codes(graph)
    assert {c.dtype for c, _ in codes} == {np.dtype(np.uint8) if saturates else np.dtype(np.int8)}
    by_layer = {n: m for n, m in q.named_modules() if getattr(m, "weight_quantizer", None) is not None}
    fc1 = by_layer["vit.layers.0.mlp.fc1"]
    stored = next(c for c, _ in codes if c.shape == fc1.weight.T.shape)
    expected = fc1.weight_quantizer.quantizer.quantize(fc1.weight.detach()).T.numpy()
    assert np.array_equal(stored.astype(np.int32) - (128 if saturates else 0), expected)
    meta = __import__("json").loads((out / "export.json").read_text())
    assert (meta["towers"]["image"]["wide_int8_weights"] == 0) == saturates


def test_dynamic_model_export_says_it_runs_in_pytorch(models, tmp_path):
    pytest.importorskip("torchao")
    q = vitq.quantize(models["CLIPModel"], vitq.QuantConfig(method="dynamic"), progress=False)
    with pytest.raises(ModelError, match="run time, on PyTorch") as err:
        export_onnx(q, tmp_path / "onnx")
    assert "minmax" in err.value.hint


def test_zoo_clip_repq_w4a4_exports_to_integer_kernels(tmp_path):
    """The README's path: zoo:clip-tiny (MiniLM text tower, post-LN) with repq-vit W4A4, saved and
    exported; ONNX Runtime runs both graphs with default optimizations, every linear on an integer
    kernel, and the export says which float multiply-adds the reparameterization added."""
    model = _zoo_clip()
    if model is None:
        pytest.skip("zoo:clip-tiny has no weights yet")
    from vitq import zoo
    from vitq.data.texts import sentences

    tok = zoo.tokenizer("clip-tiny")(sentences(16), padding=True, return_tensors="pt")
    pixels = torch.randn(16, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    calib = [{"pixel_values": pixels, "input_ids": tok["input_ids"], "attention_mask": tok["attention_mask"]}]
    q = _quantize(model, bits="W4A4", method="repq-vit", calib=calib)
    vitq.save(q, tmp_path / "m")
    from vitq.cli import main

    assert main(["export", "--model", str(tmp_path / "m"), "--quiet"]) == 0
    meta = __import__("json").loads((tmp_path / "m" / "onnx" / "export.json").read_text())
    for tower in ("image", "text"):
        assert meta["check"][tower]["float_linears"] == [] and meta["check"][tower]["integer_kernels"] > 0
    text_layers = 6
    assert meta["input_affines"] == 4 * text_layers  # q, k, v and fc1 of every post-LN MiniLM layer
    assert any("multiply-adds" in n for n in meta["notes"])
    graph = onnx.load(str(tmp_path / "m" / "onnx" / "text.onnx")).graph
    zps = _qdq_params(graph, "QuantizeLinear")
    assert all(np.asarray(z).size == 1 for _, z in zps)  # every activation point is per-tensor


def test_bf16_calibrated_model_exports_in_float32(models, tmp_path):
    """A model calibrated in bf16 exports float32 graphs that match its float32 simulation."""
    import copy

    q16 = _quantize(copy.deepcopy(models["CLIPModel"]).to(torch.bfloat16))
    out = export_onnx(q16, tmp_path / "onnx")
    x = sample_inputs(seed=3, batch=4)["pixel_values"]
    got = ExportedModel(out).encode_image(x)
    ref = _simulated(copy.deepcopy(q16).float(), "image", x)
    assert got.dtype == torch.float32 and _cosine(got, ref).min() > 0.999


def test_graph_outputs_have_the_usual_names_and_metadata(clip_w8a8, models, tmp_path):
    import json

    import onnx

    _, out = clip_w8a8
    image, text = onnx.load(str(out / "image.onnx")), onnx.load(str(out / "text.onnx"))
    assert [o.name for o in image.graph.output] == ["image_embeds"] and [o.name for o in text.graph.output] == ["text_embeds"]
    props = {p.key: p.value for p in image.metadata_props}
    assert props["method"] == "minmax" and props["bits"] == "W8A8" and props["tower"] == "image" and props["image_size"] == "32"
    assert props["vitq_version"] == vitq.__version__
    assert len(json.loads(props["image_mean"])) == 3 and len(json.loads(props["image_std"])) == 3
    q = _quantize(models["ViTForImageClassification"], calib=[sample_inputs()["pixel_values"]])
    cls_out = export_onnx(q, tmp_path / "cls", check=0)
    assert [o.name for o in onnx.load(str(cls_out / "image.onnx")).graph.output] == ["logits"]


def test_cli_export_writes_openvino_ir_that_agrees(models, tmp_path, capsys):
    pytest.importorskip("openvino")
    from vitq.cli import main

    q = _quantize(models["ViTForImageClassification"], calib=[sample_inputs()["pixel_values"]])
    vitq.save(q, tmp_path / "m")
    assert main(["export", "--model", str(tmp_path / "m"), "--format", "openvino", "--check", "2", "--quiet"]) == 0
    out = tmp_path / "m" / "onnx"
    assert (out / "image.xml").is_file() and (out / "image.bin").is_file() and (out / "image.onnx").is_file()
    assert "OpenVINO IR" in capsys.readouterr().out
    assert not [p for p in out.iterdir() if p.name.startswith(".")]
    import openvino as ov

    x = sample_inputs(seed=3)["pixel_values"]
    got = ov.Core().compile_model(str(out / "image.xml"), "CPU")({"pixel_values": x.numpy()})[0]
    with torch.no_grad():
        sim = q(pixel_values=x).logits
    assert float(_cosine(torch.from_numpy(np.asarray(got)), sim).min()) > 0.99
