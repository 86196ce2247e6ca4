"""Zero-shot classification with a CLIP-style model: class names through prompt templates."""

from __future__ import annotations

import torch

from ..data.preprocess import image_transform
from ..errors import ModelError
from ..models.prompting import learned_prompt, prompt_tokens, prompted_text_features, text_length_limit
from .datasets import open_images
from .features import image_embeddings, is_dual_encoder, run_images
from .metrics import normalize, topk_accuracy
from .options import EvalOptions
from .templates import resolve_templates
from .text import class_embeddings, resolve_tokenizer


def require_dual_encoder(model, task: str) -> None:
    if not is_dual_encoder(model):
        raise ModelError(
            f"{task} needs a CLIP-style model with get_image_features/get_text_features, got {type(model).__name__}",
            hint="use --task top1 for image classifiers",
        )


def zero_shot(model, data, opts: EvalOptions, reference=None) -> dict:
    require_dual_encoder(model, "zero-shot classification")
    templates = resolve_templates(opts.templates)
    tokenizer = resolve_tokenizer(model, opts.tokenizer)
    dataset = open_images(data, opts.transform or image_transform(model, preprocess=opts.preprocess), opts.limit, opts.seed, opts.skip_bad)
    prompt = learned_prompt(model)
    if prompt is not None:  # a P4Q model: its learned prompt replaces the templates
        tokens = prompt_tokens(tokenizer, dataset.class_names, prompt.n_ctx, prompt.position, text_length_limit(model, tokenizer))
        with torch.no_grad():
            weights = normalize(prompted_text_features(model, tokens).float()).cpu()
        templates = [f"learned prompt ({prompt.n_ctx} context vectors, class name at the {prompt.position})"]
    else:
        weights = class_embeddings(model, tokenizer, dataset.class_names, templates, opts.text_batch_size,
                                   opts.cache_dir, opts.progress)
    device = model  # run_images takes its device and dtype
    images = run_images(dataset, lambda x: image_embeddings(model, x), device, opts.batch_size, opts.num_workers,
                        desc="zero-shot", progress=opts.progress, checkpoint=opts.checkpointer())
    metrics = topk_accuracy(normalize(images.outputs[0]) @ weights.T, images.targets)
    return {
        "num_examples": images.count,
        "skipped_images": images.skipped,
        "metrics": metrics,
        "num_classes": len(dataset.class_names),
        "templates": list(templates),
    }
