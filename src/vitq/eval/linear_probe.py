"""Linear probe: logistic regression on frozen image features, as in the CLIP paper.

The regularisation strength C is chosen by a log-spaced sweep scored on a held-out share of the
training data, then the probe is refit on all training data and scored once on the test data.
Features are standardised with statistics of the training data only.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch

from ..data.preprocess import image_transform
from ..errors import ConfigError, DataError
from . import distributed
from .datasets import describe, open_images
from .features import image_embeddings, is_dual_encoder, logits_and_features, run_images
from .options import EvalOptions

DEFAULT_C_VALUES = tuple(10.0 ** e for e in range(-4, 5))  # 1e-4 … 1e4


def frozen_features(model):
    """``x → features``: the projected image embedding of a CLIP-style model, else what a classifier's head sees."""
    if is_dual_encoder(model):
        return lambda x: image_embeddings(model, x)
    return lambda x: logits_and_features(model, x)[1]


def _logistic(c: float, seed: int):
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(C=c, solver="lbfgs", max_iter=1000, random_state=seed)


def quantized_classifier(probe, scaler, bits: int) -> tuple[np.ndarray, np.ndarray]:
    """The fitted probe as one linear layer on raw features (the standardisation folded in), its
    weights quantized per class with symmetric MinMax at ``bits`` (P4Q's Quantized Linear Probe)."""
    from ..quant import UniformQuantizer

    weight = probe.coef_ / scaler.scale_[None]
    bias = probe.intercept_ - weight @ scaler.mean_
    if weight.shape[0] == 1:  # two classes: scikit-learn keeps one row, the margin of class 1
        weight, bias = np.concatenate([-weight / 2, weight / 2]), np.concatenate([-bias / 2, bias / 2])
    w = torch.from_numpy(weight).float()
    q = UniformQuantizer(bits, symmetric=True, axis=0)
    amax = w.abs().amax(1)
    q.set_range(-amax, amax)
    with torch.no_grad():
        return q(w).numpy(), bias


def fit_probe(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray,
              c_values=DEFAULT_C_VALUES, val_fraction: float = 0.2, seed: int = 0, bits: int | None = None) -> dict:
    """Choose C on a held-out split of the training data, refit on all of it, score top-1 on the test
    data; with ``bits``, score the classifier with its weights quantized (:func:`quantized_classifier`)."""
    from sklearn.model_selection import train_test_split
    from sklearn.preprocessing import StandardScaler

    if len(np.unique(train_y)) < 2:
        raise DataError("a linear probe needs training images of at least two classes")
    counts = np.bincount(train_y)
    n_classes, n_val = int((counts > 0).sum()), int(np.ceil(val_fraction * len(train_y)))
    # Stratify when every class can appear on both sides; a very small training set is split at random.
    can_stratify = counts[counts > 0].min() >= 2 and n_classes <= n_val <= len(train_y) - n_classes
    stratify = train_y if can_stratify else None
    fit_x, val_x, fit_y, val_y = train_test_split(train_x, train_y, test_size=val_fraction, random_state=seed, stratify=stratify)
    scaler = StandardScaler().fit(fit_x)
    sweep = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ConvergenceWarning at extreme C says nothing the sweep score does not
        for c in c_values:
            probe = _logistic(c, seed).fit(scaler.transform(fit_x), fit_y)
            sweep[float(c)] = float(probe.score(scaler.transform(val_x), val_y))
        best_c = max(sweep, key=lambda c: (sweep[c], -abs(np.log10(c))))  # ties: the more moderate C
        scaler = StandardScaler().fit(train_x)
        probe = _logistic(best_c, seed).fit(scaler.transform(train_x), train_y)
    if bits is None:
        predicted = probe.predict(scaler.transform(test_x))
    else:
        weight, bias = quantized_classifier(probe, scaler, bits)
        predicted = probe.classes_[np.argmax(test_x @ weight.T + bias, axis=1)]
    top1 = float((predicted == test_y).mean())
    return {"top1": top1, "C": best_c, "val_top1_by_C": sweep, "bits": bits}


def linear_probe(model, data, opts: EvalOptions, reference=None) -> dict:
    if opts.train_data is None:
        raise ConfigError("the linear probe needs training images", hint="pass --train-data PATH (a folder or zip of class folders)")
    transform = opts.transform or image_transform(model, preprocess=opts.preprocess)
    train_limit = opts.train_limit or opts.limit
    train = open_images(opts.train_data, transform, train_limit, opts.seed, opts.skip_bad)
    test = open_images(data, transform, opts.limit, opts.seed, opts.skip_bad)
    # Labels follow the training set's folders; a test class the probe never saw cannot be scored.
    train_index = {c.folder: i for i, c in enumerate(train.classes)}
    unseen = [c.folder for c in test.classes if c.folder not in train_index]
    if unseen:
        raise DataError(f"{len(unseen)} test classes have no training images: {', '.join(unseen[:5])}",
                        hint="use training and test data with the same class folders")
    to_train_label = torch.tensor([train_index[c.folder] for c in test.classes])
    fn, device = frozen_features(model), model
    tr = run_images(train, fn, device, opts.batch_size, opts.num_workers, desc="probe train", progress=opts.progress, checkpoint=opts.checkpointer())
    te = run_images(test, fn, device, opts.batch_size, opts.num_workers, desc="probe test", progress=opts.progress, checkpoint=opts.checkpointer())
    fitted = None
    if distributed.is_main():  # one fit, shared: every rank returns the same numbers
        fitted = fit_probe(tr.outputs[0].numpy(), tr.targets.numpy(), te.outputs[0].numpy(),
                           to_train_label[te.targets].numpy(), opts.c_values or DEFAULT_C_VALUES,
                           opts.val_fraction, opts.seed, opts.probe_bits)
    fitted = distributed.from_main(fitted)
    return {
        "num_examples": te.count,
        "num_train_examples": tr.count,
        "skipped_images": te.skipped + tr.skipped,
        "metrics": {"top1": fitted["top1"]},
        "train_data": describe(opts.train_data),
        "C": fitted["C"],
        "val_top1_by_C": fitted["val_top1_by_C"],
        "classifier_bits": fitted["bits"],
    }
