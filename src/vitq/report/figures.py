"""The report's figures (matplotlib, headless): each function draws one PNG and returns its path.

They are the plots the papers use to show what quantization does: weight distributions (DQ-CLIP
Fig. 1), post-LayerNorm channel ranges and post-Softmax values (RepQ-ViT's motivation), the
image-text similarity matrix (DQ-CLIP Fig. 3), the shift of the embeddings (P4Q Fig. 3), post-GELU
values (DQ-CLIP Fig. 4), and accuracy against bits and size.
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import torch

from ..io_utils import atomic_write_bytes

FP_COLOUR, Q_COLOUR = "#4c72b0", "#dd8452"


def _plt():
    import matplotlib

    matplotlib.use("Agg")  # no display on servers; safe to call again
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path) -> Path:
    plt = _plt()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    return atomic_write_bytes(path, buffer.getvalue())


def _grid(n: int, cols: int, width: float = 3.2, height: float = 2.4):
    plt = _plt()
    rows = max(1, math.ceil(n / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, height * rows), squeeze=False, constrained_layout=True)
    flat = [ax for row in axes for ax in row]
    for ax in flat[n:]:
        ax.set_visible(False)
    return fig, flat


def _two_histograms(ax, values: torch.Tensor, quantized: torch.Tensor | None, bins, log_y: bool = True) -> None:
    ax.hist(values.numpy(), bins=bins, color=FP_COLOUR, alpha=0.6, label="full precision")
    if quantized is not None:
        ax.hist(quantized.numpy(), bins=bins, histtype="step", color=Q_COLOUR, linewidth=1.2, label="quantized")
    if log_y:
        ax.set_yscale("log")
    ax.tick_params(labelsize=7)


def _histogram_grid(samples: dict[str, dict], path, title: str, cols: int, bins_of, transform=lambda t: t,
                    subtitle=lambda entry: "", xlabel: str | None = None) -> Path:
    """One panel per entry: its full-precision values and the quantized values of the same elements."""
    keys = list(samples)
    fig, axes = _grid(len(keys), cols=cols)
    for ax, key in zip(axes, keys):
        entry = samples[key]
        q = entry.get("quantized")
        values, quantized = transform(entry["values"]), (transform(q) if q is not None else None)
        _two_histograms(ax, values, quantized, bins=bins_of(values, quantized))
        ax.set_title(key + subtitle(entry), fontsize=8)
        if xlabel:
            ax.set_xlabel(xlabel, fontsize=7)
    axes[0].legend(fontsize=6)
    fig.suptitle(title, fontsize=10)
    return _save(fig, path)


def _symmetric_bins(values: torch.Tensor, quantized: torch.Tensor | None):
    lim = max(float(values.abs().max()), float(quantized.abs().max()) if quantized is not None else 0.0) or 1.0
    return torch.linspace(-lim, lim, 81).numpy()


def _span_bins(values: torch.Tensor, quantized: torch.Tensor | None):
    both = values if quantized is None else torch.cat([values, quantized])
    return torch.linspace(float(both.min()), float(both.max()) + 1e-6, 81).numpy()


def weight_distributions(weights: dict[str, dict], path) -> Path:
    """Weights of each module: full precision and quantized (DQ-CLIP Fig. 1)."""
    return _histogram_grid(weights, path, "Weight distributions (log count)", 4, _symmetric_bins)


def post_ln_ranges(post_ln: dict[str, dict], path) -> Path:
    """Per-channel [min, max] of the first block's post-LayerNorm activations: the float model's
    (before reparameterization) and the quantized model's (after), channel by channel."""
    comps = list(post_ln)
    fig, axes = _grid(len(comps), cols=1, width=9.0, height=2.6)
    for ax, comp in zip(axes, comps):
        entry = post_ln[comp]
        for label, key, colour in (("before (float model)", "before", FP_COLOUR), ("after (quantized model, points off)", "after", Q_COLOUR)):
            if key not in entry:
                continue
            low, high = entry[key]
            channels = range(low.numel())
            ax.vlines(channels, low.numpy(), high.numpy(), colors=colour, alpha=0.6, linewidth=0.8, label=label)
        ax.set_title(f"{comp}: {entry['module']}", fontsize=8)
        ax.set_xlabel("channel", fontsize=7)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=6, loc="upper right")
    fig.suptitle("Per-channel ranges of post-LayerNorm activations", fontsize=10)
    return _save(fig, path)


def _log2(values: torch.Tensor) -> torch.Tensor:
    return torch.log2(values.clamp_min(2.0 ** -24))


def _zero_share(entry: dict) -> str:
    q = entry.get("quantized")
    return "" if q is None else f" ({100 * float((q == 0).float().mean()):.0f}% quantized to 0)"


def softmax_values(softmax: dict[str, dict], path) -> Path:
    """Post-Softmax values on a log2 axis (where a log quantizer spaces its levels), float and after the quantizer."""
    bins = torch.linspace(-24, 0, 97).numpy()
    return _histogram_grid(softmax, path, "Post-Softmax values (log count)", 3, lambda v, q: bins, transform=_log2,
                           subtitle=_zero_share, xlabel="log2(attention probability)")


def gelu_values(gelu: dict[str, dict], path) -> Path:
    """Post-GELU activations (the input of fc2): float and after the quantizer."""
    return _histogram_grid(gelu, path, "Post-GELU activations (log count)", 3, _span_bins)


def embedding_shift(outputs: dict[str, dict[str, torch.Tensor]], path) -> Path:
    """Full-precision and quantized embeddings projected on the full-precision principal plane;
    a line joins each example's two points."""
    comps = list(outputs)
    fig, axes = _grid(len(comps), cols=2, width=4.2, height=3.8)
    for ax, comp in zip(axes, comps):
        fp, q = outputs[comp]["fp"], outputs[comp]["quantized"]
        fp, q = torch.nn.functional.normalize(fp, dim=-1), torch.nn.functional.normalize(q, dim=-1)
        mean = fp.mean(0, keepdim=True)
        _, _, v = torch.linalg.svd(fp - mean, full_matrices=False)
        basis = v[:2].T
        a, b = ((fp - mean) @ basis).numpy(), ((q - mean) @ basis).numpy()
        for i in range(len(a)):
            ax.plot([a[i, 0], b[i, 0]], [a[i, 1], b[i, 1]], color="#999999", linewidth=0.5, zorder=1)
        ax.scatter(a[:, 0], a[:, 1], s=10, color=FP_COLOUR, label="full precision", zorder=2)
        ax.scatter(b[:, 0], b[:, 1], s=10, color=Q_COLOUR, marker="x", label="quantized", zorder=3)
        ax.set_title(f"{comp} outputs (normalised; principal plane of full precision)", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=6)
    fig.suptitle("Shift of the outputs", fontsize=10)
    return _save(fig, path)


def accuracy_against(rows: list[dict], path, metric_label: str) -> Path:
    """Accuracy against weight bits and against model size, one line per method (± SE bars)."""
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), constrained_layout=True)
    methods = sorted({r["method"] for r in rows})
    for method in methods:
        mine = [r for r in rows if r["method"] == method]
        for ax, key in zip(axes, ("w_bits", "size_mb")):
            pts = sorted((r[key], 100 * r["value"], 100 * (r["se"] or 0)) for r in mine if r.get(key) is not None)
            if not pts:
                continue
            xs, ys, es = zip(*pts)
            ax.errorbar(xs, ys, yerr=es, marker="o", markersize=4, capsize=2, linewidth=1, label=method)
    axes[0].set_xlabel("weight bits", fontsize=8)
    axes[1].set_xlabel("model size (MB, parameters × bits / 8)", fontsize=8)
    for ax in axes:
        ax.set_ylabel(metric_label, fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle("Accuracy against bits and size", fontsize=10)
    return _save(fig, path)
