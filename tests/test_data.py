"""Data: image-caption pairs, preprocessing, class names, unreadable images."""

from __future__ import annotations

import zipfile

import pytest
import torch
from PIL import Image

from vitq.data import (CLIP_MEAN, CLIP_STD, CaptionPairs, ImageFolder, ProcessorTransform, ResizeCropNormalize,
                       data_path, has_data, image_transform)
from vitq.errors import DataError
from vitq.eval.classnames import IMAGENETTE, with_known_names


def needs(*parts):
    return pytest.mark.skipif(not has_data(*parts), reason=f"real data {'/'.join(parts)} not available (set VITQ_DATA)")


def solid(color, size=(40, 30), mode="RGB"):
    return Image.new(mode, size, color)


def write_captions(folder, rows, header="image,caption"):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "captions.csv").write_text(header + "\n" + "\n".join(",".join(r) for r in rows) + "\n")
    return folder


# -- captions ------------------------------------------------------------------------------------
@needs("flickr8k-1k")
def test_flickr_captions_pair_images_and_captions():
    pairs = CaptionPairs(data_path("flickr8k-1k"))
    assert len(pairs) == 1000 and len(pairs.captions) == 5000
    assert all(len(c) == 5 for c in pairs.image_captions)
    for image, caps in enumerate(pairs.image_captions[:20]):
        assert all(pairs.caption_image[j] == image for j in caps)
    image, index = pairs[3]
    assert image.mode == "RGB" and index == 3


@needs("flickr8k-1k")
def test_caption_limit_is_deterministic_and_keeps_all_captions():
    a = CaptionPairs(data_path("flickr8k-1k"), limit=12, seed=1)
    b = CaptionPairs(data_path("flickr8k-1k", "captions.csv"), limit=12, seed=1)
    c = CaptionPairs(data_path("flickr8k-1k"), limit=12, seed=2)
    assert a.images == b.images and a.captions == b.captions
    assert a.images != c.images
    assert len(a) == 12 and len(a.captions) == 60


def test_caption_csv_missing_column_is_named(tmp_path):
    folder = write_captions(tmp_path / "d", [("a.jpg", "a cat")], header="file,caption")
    solid("red").save(folder / "a.jpg")
    with pytest.raises(DataError, match="image"):
        CaptionPairs(folder)


def test_caption_csv_unknown_image_is_named(tmp_path):
    folder = write_captions(tmp_path / "d", [("a.jpg", "a cat"), ("missing.jpg", "a dog")])
    solid("red").save(folder / "a.jpg")
    with pytest.raises(DataError, match="missing.jpg"):
        CaptionPairs(folder)


def test_caption_images_beside_csv_and_in_images_folder(tmp_path):
    flat = write_captions(tmp_path / "flat", [("a.jpg", "red"), ("a.jpg", "still red"), ("b.png", "green")])
    solid("red").save(flat / "a.jpg")
    solid("green").save(flat / "b.png")
    pairs = CaptionPairs(flat / "captions.csv", transform=ResizeCropNormalize(8))
    assert pairs.images == ["a.jpg", "b.png"] and pairs.image_captions == [[0, 1], [2]]
    x, i = pairs[1]
    assert x.shape == (3, 8, 8) and i == 1


def test_caption_unreadable_image_names_path_or_is_skipped(tmp_path):
    folder = write_captions(tmp_path / "d", [("a.jpg", "fine"), ("bad.jpg", "broken")])
    (folder / "images").mkdir()
    solid("red").save(folder / "images" / "a.jpg")
    (folder / "images" / "bad.jpg").write_text("not an image")
    with pytest.raises(DataError, match="bad.jpg"):
        CaptionPairs(folder)[1]
    assert CaptionPairs(folder, skip_bad=True)[1] is None


# -- preprocessing -------------------------------------------------------------------------------
def test_resize_crop_normalise_matches_hand_values():
    t = ResizeCropNormalize(16)
    x = t(solid((255, 0, 128), size=(64, 32)))
    assert x.shape == (3, 16, 16)
    expected = [(1.0 - CLIP_MEAN[0]) / CLIP_STD[0], (0.0 - CLIP_MEAN[1]) / CLIP_STD[1], (128 / 255 - CLIP_MEAN[2]) / CLIP_STD[2]]
    assert torch.allclose(x.mean((1, 2)), torch.tensor(expected), atol=1e-4)


def test_greyscale_and_palette_images_become_three_channels():
    t = ResizeCropNormalize(8)
    assert t(solid(100, mode="L")).shape == (3, 8, 8)
    assert t(solid(3, mode="P")).shape == (3, 8, 8)


def test_transform_from_in_memory_config_uses_image_size():
    import transformers as T

    cfg = T.CLIPConfig(vision_config=dict(image_size=48, patch_size=16, hidden_size=32, num_hidden_layers=1,
                                          num_attention_heads=2, intermediate_size=64))
    model = T.CLIPVisionModelWithProjection(cfg.vision_config)
    t = image_transform(model)
    assert isinstance(t, ResizeCropNormalize) and t.size == 48 and t.mean == CLIP_MEAN


def test_transform_uses_processor_saved_with_model(tmp_path):
    import transformers as T

    T.CLIPImageProcessor(size={"shortest_edge": 20}, crop_size={"height": 20, "width": 20}).save_pretrained(tmp_path)
    t = image_transform(tmp_path)
    assert isinstance(t, ProcessorTransform)
    assert t(solid("blue", size=(50, 30))).shape == (3, 20, 20)


# -- class folders -------------------------------------------------------------------------------
@needs("imagenette-val-500")
def test_imagenette_wnids_get_readable_names():
    ds = ImageFolder(data_path("imagenette-val-500"), limit=10)
    names = [c.name for c in with_known_names(ds.classes)]
    assert names[0] == "tench" and "French horn" in names and set(names) == set(IMAGENETTE.values())


@needs("tiny-imagenet-200")
def test_tiny_imagenet_zip_and_folder_share_classes():
    folder = ImageFolder(data_path("tiny-imagenet-200", "val"), limit=200)
    archive = ImageFolder(data_path("tiny-imagenet-200", "train-200-per-class.zip"), limit=200,
                          transform=ResizeCropNormalize(32))
    assert folder.folders == archive.folders and folder.classes[0].name == "goldfish"
    x, label = archive[0]
    assert x.shape == (3, 32, 32) and label == 0


def corrupt_files(folder):
    """Three unreadable kinds: a truncated JPEG, a zero-byte file, a text file named .jpg."""
    folder.mkdir(parents=True, exist_ok=True)
    good = solid((200, 10, 10), size=(64, 64))
    good.save(folder / "good.jpg")
    data = (folder / "good.jpg").read_bytes()
    (folder / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "text.jpg").write_text("hello, I am not a JPEG")
    return ["empty.jpg", "text.jpg", "truncated.jpg"]


@pytest.mark.parametrize("bad", ["empty.jpg", "text.jpg", "truncated.jpg"])
def test_each_corrupt_kind_names_its_path(tmp_path, bad):
    corrupt_files(tmp_path / "cls")
    ds = ImageFolder(tmp_path)
    index = [i for i, (member, _) in enumerate(ds.samples) if member.endswith(bad)][0]
    with pytest.raises(DataError, match=bad):
        ds[index]


def test_corrupt_member_of_zip_names_archive_and_member(tmp_path):
    corrupt_files(tmp_path / "src")
    archive = tmp_path / "data.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for f in sorted((tmp_path / "src").iterdir()):
            zf.write(f, f"train/cls/{f.name}")
    ds = ImageFolder(archive)
    with pytest.raises(DataError, match=r"data\.zip:train/cls/empty\.jpg"):
        ds[0]
    assert ImageFolder(archive, skip_bad=True)[0] is None


def _class_counts(batches):
    from collections import Counter

    return Counter(name for _, name in batches.items)


def _synthetic_classes(root, classes=12, per_class=6):
    for c in range(classes):
        d = root / f"class{c:02d}"
        d.mkdir(parents=True)
        for i in range(per_class):
            solid((10 * c, 5 * i, 100), size=(8, 8)).save(d / f"{i}.png")
    return root


def test_calibration_images_are_drawn_across_all_classes(tmp_path):
    """Fewer images than classes: a random set of classes (not the first ones in sorted order), one
    image each, the same for the same seed; more: every class gets its share and the rest go to
    random classes."""
    from vitq.data.calibration import calibration_batches

    root = _synthetic_classes(tmp_path / "data")
    tf = ResizeCropNormalize(8)
    picks = {seed: _class_counts(calibration_batches(root, 4, 4, tf, seed=seed)) for seed in (0, 1, 2)}
    for counts in picks.values():
        assert sum(counts.values()) == 4 and set(counts.values()) == {1}
    assert len({frozenset(c) for c in picks.values()}) > 1  # the seed chooses the classes
    assert any(set(c) != {"class00", "class01", "class02", "class03"} for c in picks.values())
    assert _class_counts(calibration_batches(root, 4, 4, tf, seed=1)) == picks[1]
    counts = _class_counts(calibration_batches(root, 30, 8, tf, seed=0))
    assert sum(counts.values()) == 30 and len(counts) == 12 and sorted(set(counts.values())) == [2, 3]
    assert sum(1 for v in counts.values() if v == 3) == 6


@needs("tiny-imagenet-200")
def test_thirty_two_calibration_images_span_tiny_imagenet():
    from vitq.data.calibration import calibration_batches

    zip_path = data_path("tiny-imagenet-200", "train-200-per-class.zip")
    counts = _class_counts(calibration_batches(zip_path, 32, 32, ResizeCropNormalize(16), seed=0))
    first = ImageFolder(zip_path).classes[:32]
    assert len(counts) == 32 and set(counts) != {c.name for c in first}
