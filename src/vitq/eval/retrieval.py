"""Image-text retrieval: recall@1/5/10 image→text and text→image on image-caption pairs."""

from __future__ import annotations

import torch

from ..data.preprocess import image_transform
from .datasets import open_captions
from .features import image_embeddings, run_images, run_texts, text_embeddings, text_max_length
from .metrics import normalize, retrieval_recall
from .options import EvalOptions
from .text import resolve_tokenizer
from .zeroshot import require_dual_encoder


def kept_captions(dataset, image_indices: torch.Tensor) -> tuple[list[str], list[int]]:
    """The captions of the images that were read, and for each its image's position among those."""
    texts, owner = [], []
    for position, image in enumerate(image_indices.tolist()):
        for j in dataset.image_captions[image]:
            texts.append(dataset.captions[j])
            owner.append(position)
    return texts, owner


def encode_captions(model, tokenizer, texts, opts: EvalOptions, desc: str = "captions") -> torch.Tensor:
    max_length = text_max_length(model, tokenizer)
    return run_texts(texts, lambda batch: text_embeddings(model, tokenizer, batch, max_length),
                     batch_size=opts.text_batch_size, desc=desc, progress=opts.progress)


def retrieval(model, data, opts: EvalOptions, reference=None) -> dict:
    require_dual_encoder(model, "image-text retrieval")
    tokenizer = resolve_tokenizer(model, opts.tokenizer)
    dataset = open_captions(data, opts.transform or image_transform(model, preprocess=opts.preprocess), opts.limit, opts.seed, opts.skip_bad)
    images = run_images(dataset, lambda x: image_embeddings(model, x), model, opts.batch_size,
                        opts.num_workers, desc="retrieval images", progress=opts.progress, checkpoint=opts.checkpointer())
    texts, owner = kept_captions(dataset, images.targets)
    similarity = normalize(images.outputs[0]) @ normalize(encode_captions(model, tokenizer, texts, opts)).T
    return {
        "num_examples": images.count,
        "num_captions": len(texts),
        "skipped_images": images.skipped,
        "metrics": retrieval_recall(similarity, owner),
    }
