"""Fidelity of a (quantized) model to its full-precision reference, on the same inputs.

Reports the cosine similarity of their outputs (image embeddings for CLIP-style models, logits for
classifiers), how often their top-1 decisions agree, each model's own accuracy where the data has
labels, and, for CLIP-style models, both image-text similarity matrices (saved as a heat-map PNG,
as in DQ-CLIP's Fig. 3).
"""

from __future__ import annotations

import io
from pathlib import Path

import torch

from ..data.preprocess import image_transform
from ..errors import ConfigError, DataError
from ..io_utils import atomic_write_bytes
from . import distributed
from .classification import label_mapping
from .datasets import is_caption_source, open_captions, open_images
from .features import as_tensor, image_embeddings, is_dual_encoder, run_images
from .metrics import agreement, cosine_stats, normalize, retrieval_recall, topk_accuracy
from .options import EvalOptions
from .retrieval import encode_captions, kept_captions
from .templates import resolve_templates
from .text import class_embeddings, resolve_tokenizer

MATRIX_SIZE = 16  # images × texts shown in the similarity plot


def fidelity(model, data, opts: EvalOptions, reference=None) -> dict:
    if reference is None:
        raise ConfigError("fidelity compares a model with its full-precision reference", hint="pass --reference MODEL")
    if is_dual_encoder(model) != is_dual_encoder(reference):
        raise ConfigError(f"cannot compare a {type(model).__name__} with a {type(reference).__name__}",
                          hint="the reference must be the same kind of model (the one that was quantized)")
    # Both models see the reference's preprocessing: the quantized model was calibrated on it.
    transform = opts.transform or image_transform(reference, preprocess=opts.preprocess)
    if is_dual_encoder(model):
        if is_caption_source(data):
            return _dual_on_captions(model, reference, data, transform, opts)
        return _dual_on_classes(model, reference, data, transform, opts)
    return _classifier(model, reference, data, transform, opts)


def _pair(fn, model, reference):
    return lambda x: (fn(model, x), fn(reference, x))


def _dual_on_classes(model, reference, data, transform, opts: EvalOptions) -> dict:
    dataset = open_images(data, transform, opts.limit, opts.seed, opts.skip_bad)
    templates = resolve_templates(opts.templates)
    weights = []
    for m in (model, reference):
        weights.append(class_embeddings(m, resolve_tokenizer(m, opts.tokenizer), dataset.class_names, templates,
                                        opts.text_batch_size, opts.cache_dir, opts.progress))
    images = run_images(dataset, _pair(image_embeddings, model, reference), model, opts.batch_size,
                        opts.num_workers, desc="fidelity", progress=opts.progress, checkpoint=opts.checkpointer())
    emb_q, emb_r = images.outputs
    scores_q, scores_r = normalize(emb_q) @ weights[0].T, normalize(emb_r) @ weights[1].T
    text_cos = cosine_stats(weights[0], weights[1])
    metrics = {**cosine_stats(emb_q, emb_r), "agreement": agreement(scores_q, scores_r),
               "text_cosine": text_cos["cosine"], "text_cosine_min": text_cos["cosine_min"],
               **topk_accuracy(scores_q, images.targets)}
    # One image of each of the first classes, against those classes' text embeddings.
    first = {}
    for i, label in enumerate(images.targets.tolist()):
        first.setdefault(label, i)
    rows = [first[c] for c in sorted(first)][:MATRIX_SIZE]
    cols = sorted(first)[:MATRIX_SIZE]
    sim_q = normalize(emb_q[rows]) @ weights[0][cols].T
    sim_r = normalize(emb_r[rows]) @ weights[1][cols].T
    labels = [dataset.class_names[c] for c in cols]
    return _result(images, metrics, topk_accuracy(scores_r, images.targets), sim_q, sim_r, labels, opts)


def _dual_on_captions(model, reference, data, transform, opts: EvalOptions) -> dict:
    dataset = open_captions(data, transform, opts.limit, opts.seed, opts.skip_bad)
    images = run_images(dataset, _pair(image_embeddings, model, reference), model, opts.batch_size,
                        opts.num_workers, desc="fidelity", progress=opts.progress, checkpoint=opts.checkpointer())
    texts, owner = kept_captions(dataset, images.targets)
    txt = [encode_captions(m, resolve_tokenizer(m, opts.tokenizer), texts, opts, desc=f"captions ({who})")
           for m, who in ((model, "model"), (reference, "reference"))]
    emb_q, emb_r = images.outputs
    full_q = normalize(emb_q) @ normalize(txt[0]).T
    full_r = normalize(emb_r) @ normalize(txt[1]).T
    text_cos = cosine_stats(txt[0], txt[1])
    metrics = {**cosine_stats(emb_q, emb_r), "agreement": agreement(full_q, full_r),
               "text_cosine": text_cos["cosine"], "text_cosine_min": text_cos["cosine_min"],
               **retrieval_recall(full_q, owner)}
    # The first images against their own first captions: the diagonal holds the true pairs.
    n = min(MATRIX_SIZE, images.count)
    cols = [owner.index(i) for i in range(n)]
    labels = [texts[j] if len(texts[j]) <= 40 else texts[j][:37] + "..." for j in cols]
    return _result(images, metrics, retrieval_recall(full_r, owner), full_q[:n][:, cols], full_r[:n][:, cols],
                   labels, opts, num_captions=len(texts))


def _classifier(model, reference, data, transform, opts: EvalOptions) -> dict:
    dataset = open_images(data, transform, opts.limit, opts.seed, opts.skip_bad)
    logits = lambda m, x: as_tensor(m(pixel_values=x))  # noqa: E731
    images = run_images(dataset, _pair(logits, model, reference), model, opts.batch_size,
                        opts.num_workers, desc="fidelity", progress=opts.progress, checkpoint=opts.checkpointer())
    out_q, out_r = images.outputs
    metrics = {**cosine_stats(out_q, out_r), "agreement": agreement(out_q, out_r)}
    reference_metrics = {}
    try:  # accuracy only where the data's classes can be matched to the model's labels
        mapping, _ = label_mapping(dataset.classes, model.config, opts.label_map)
        targets = torch.tensor(mapping)[images.targets]
        metrics.update(topk_accuracy(out_q, targets))
        reference_metrics = topk_accuracy(out_r, targets)
    except DataError:
        pass
    return {"num_examples": images.count, "skipped_images": images.skipped, "metrics": metrics,
            "reference_metrics": reference_metrics}


def _result(images, metrics, reference_metrics, sim_q, sim_r, labels, opts: EvalOptions, **extra) -> dict:
    result = {
        "num_examples": images.count,
        "skipped_images": images.skipped,
        "metrics": metrics,
        "reference_metrics": reference_metrics,
        **extra,
        "similarity": {"texts": labels, "model": _rounded(sim_q), "reference": _rounded(sim_r)},
    }
    if opts.plot is not None and distributed.is_main():
        result["plot"] = str(save_similarity_plot(sim_q, sim_r, labels, opts.plot))
    return result


def _rounded(matrix: torch.Tensor) -> list[list[float]]:
    return [[round(v, 4) for v in row] for row in matrix.tolist()]


def save_similarity_plot(sim_model: torch.Tensor, sim_reference: torch.Tensor, texts: list[str], path) -> Path:
    """Heat maps of the reference's, the model's, and their difference's image-text cosine similarities."""
    import matplotlib

    matplotlib.use("Agg")  # no display on servers; safe to call again
    import matplotlib.pyplot as plt

    panels = [("full precision", sim_reference), ("quantized", sim_model), ("quantized − full precision", sim_model - sim_reference)]
    n_rows, n_cols = sim_model.shape
    fig, axes = plt.subplots(1, 3, figsize=(4 + 3.2 * 3, 2.5 + 0.25 * n_rows), constrained_layout=True)
    vmin = float(min(sim_model.min(), sim_reference.min()))
    vmax = float(max(sim_model.max(), sim_reference.max()))
    span = float((sim_model - sim_reference).abs().max()) or 1e-6
    for k, (ax, (title, matrix)) in enumerate(zip(axes, panels)):
        diff = k == 2
        im = ax.imshow(matrix.numpy(), cmap="RdBu_r" if diff else "viridis",
                       vmin=-span if diff else vmin, vmax=span if diff else vmax)
        ax.set_title(title, fontsize=9)
        ax.set_xticks(range(n_cols))
        ax.set_xticklabels(texts, rotation=90, fontsize=6)
        ax.set_yticks(range(n_rows))
        ax.set_yticklabels([f"image {i}" for i in range(n_rows)], fontsize=6)
        fig.colorbar(im, ax=ax, shrink=0.8)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120)
    plt.close(fig)
    return atomic_write_bytes(path, buffer.getvalue())
