"""What quantization did to a model, layer by layer, on real inputs.

Each batch runs twice through the quantized model. First with every point off: there each layer
runs once more with only its own points on, which gives its *own* error on exactly the input full
precision would give it (the question "which layer broke my model?"). Then with the points as they
are: each layer's output against the float model's (or, where no float model is given or the layer
has no twin there, the points-off pass's) gives the error *accumulated* up to that layer. Only running sums are kept per layer, so memory does not
grow with the number of batches.

The same passes sample the values the figures show (post-LayerNorm channel ranges, post-Softmax and
post-GELU values, weights), and keep each component's outputs for the similarity and shift plots.
When the float model the quantized one came from is given, it runs too: its outputs are the
full-precision reference, and its LayerNorm outputs are the "before reparameterization" ranges.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ..calib.recorder import first_tensor
from ..models.adapter import adapter_of
from ..nn import TensorQuantizer, points_disabled
from ..nn.state import kind_of

SAMPLES = 20000  # values kept per histogram


@dataclass
class ErrorSum:
    """Running sums for the signal-to-quantization-noise ratio and the per-example cosine."""

    signal: float = 0.0
    noise: float = 0.0
    cosine_sum: float = 0.0
    count: int = 0

    def add(self, reference: torch.Tensor, got: torch.Tensor) -> None:
        ref, out = reference.detach().float(), got.detach().float()
        self.signal += float(ref.pow(2).sum())
        self.noise += float((out - ref).pow(2).sum())
        flat_ref, flat_out = ref.reshape(ref.shape[0], -1), out.reshape(out.shape[0], -1)
        self.cosine_sum += float(F.cosine_similarity(flat_ref, flat_out, dim=1, eps=1e-12).sum())
        self.count += flat_ref.shape[0]

    @property
    def sqnr_db(self) -> float:
        """10·log10(Σ ref² / Σ (out − ref)²); infinite when the outputs are identical."""
        if self.noise == 0.0:
            return math.inf
        return 10.0 * math.log10(max(self.signal, 1e-30) / self.noise)

    @property
    def cosine(self) -> float:
        return self.cosine_sum / max(self.count, 1)


class Sampler:
    """A fixed-size random sample of the values seen, the same for the same seed; ``paired`` keeps
    the same positions of a second tensor (the quantized values of the same elements)."""

    def __init__(self, per_batch: int, seed: int = 0):
        self.per_batch = per_batch
        self.generator = torch.Generator().manual_seed(seed)
        self.values: list[torch.Tensor] = []
        self.paired: list[torch.Tensor] = []

    def add(self, x: torch.Tensor, paired: torch.Tensor | None = None) -> None:
        flat = x.detach().float().reshape(-1)
        idx = torch.randint(0, flat.numel(), (min(self.per_batch, flat.numel()),), generator=self.generator)
        self.values.append(flat[idx])
        if paired is not None:
            self.paired.append(paired.detach().float().reshape(-1)[idx])

    def result(self) -> dict:
        out = {"values": torch.cat(self.values) if self.values else torch.empty(0)}
        if self.paired:
            out["quantized"] = torch.cat(self.paired)
        return out


class ChannelRange:
    """Per-channel (last dimension) minimum and maximum over every token of every batch."""

    def __init__(self):
        self.low: torch.Tensor | None = None
        self.high: torch.Tensor | None = None

    def add(self, x: torch.Tensor) -> None:
        flat = x.detach().float().reshape(-1, x.shape[-1])
        low, high = flat.min(0).values, flat.max(0).values
        self.low = low if self.low is None else torch.minimum(self.low, low)
        self.high = high if self.high is None else torch.maximum(self.high, high)


@dataclass
class Analysis:
    layers: list[dict]
    components: list[str]
    outputs: dict[str, dict[str, torch.Tensor]]  # component -> {"quantized", "fp", "reference"?}
    texts: list[str]
    post_ln: dict[str, dict]  # component -> {"module", "after": (low, high), "before": (low, high)?}
    softmax: dict[str, dict]  # "<component> block i" -> {"values", "quantized"}
    gelu: dict[str, dict]
    weights: dict[str, dict]  # "<component> block i <role>" -> {"values", "quantized"}
    num_images: int = 0
    notes: list[str] = field(default_factory=list)


def quantized_layers(model: nn.Module) -> dict[str, list[TensorQuantizer]]:
    """Each module that owns quantization points (a linear, a matmul, a LayerNorm with an output
    point, a block with a residual point), with its points."""
    out = {}
    for name, module in model.named_modules():
        own = [c for c in module.children() if isinstance(c, TensorQuantizer)]
        if own and name:
            out[name] = own
    return out


@contextlib.contextmanager
def _own_points_on(points: list[TensorQuantizer], enabled: dict[int, bool]):
    """These points as they were in the quantized model; their state now comes back afterwards."""
    before = [p.enabled for p in points]
    for p in points:
        p.enabled = enabled[id(p)]
    try:
        yield
    finally:
        for p, e in zip(points, before):
            p.enabled = e


def _describe(points: list[TensorQuantizer], enabled: dict[int, bool]) -> dict:
    on = [p for p in points if enabled[id(p)]]
    described = [p.describe() for p in on]
    lows = [d["scale_min"] for d in described if d.get("scale_min") is not None]
    highs = [d["scale_max"] for d in described if d.get("scale_max") is not None]
    parts = [f"{p.role or 'point'}: {kind_of(p)} {p.bits}b" for p in on]
    return {"bits": "/".join(str(p.bits) for p in on) or "off", "quantizer": "; ".join(parts) or "off",
            "scale_min": min(lows) if lows else None, "scale_max": max(highs) if highs else None}


def _blocks_to_show(blocks: list[str]) -> list[tuple[int, str]]:
    """First, middle and last block (fewer when the tower is shorter)."""
    picks = sorted({0, len(blocks) // 2, len(blocks) - 1}) if blocks else []
    return [(i, blocks[i]) for i in picks]


def _batch_texts(batch: dict, tokenizer) -> list[str]:
    if tokenizer is None or "input_ids" not in batch:
        return []
    return tokenizer.batch_decode(batch["input_ids"], skip_special_tokens=True)


def _comparable(model: nn.Module, reference: nn.Module, layers: dict) -> dict[str, nn.Module]:
    """The float model's modules that compute the same function as the quantized model's layer of
    the same name: every linear (a reparameterization moves a scale between a LayerNorm and the
    linears after it, which leaves their outputs unchanged), not a LayerNorm whose affine moved."""
    ref_modules = dict(reference.named_modules())
    out = {}
    for name in layers:
        ref = ref_modules.get(name)
        if ref is None:
            continue
        mine = model.get_submodule(name)
        if isinstance(ref, nn.LayerNorm) and not (torch.equal(ref.weight, mine.weight) and torch.equal(ref.bias, mine.bias)):
            continue
        out[name] = ref
    return out


@torch.no_grad()
def analyze(model: nn.Module, batches, reference: nn.Module | None = None, components=None, tokenizer=None,
            seed: int = 0, progress: bool = True) -> Analysis:
    """Run ``batches`` (dicts of model inputs, as the calibration helpers make them) through
    ``model`` as described in the module docstring.

    A saved model holds its weights on their quantization grid, so switching its points off does
    not bring the float weights back: with ``reference`` (the float model it came from), the
    accumulated error and the outputs are measured against that model instead, layer by layer
    wherever the two compute the same function."""
    from tqdm.auto import tqdm

    adapter = adapter_of(model)
    components = [c for c in (components or adapter.components) if c in adapter.components]
    layers = quantized_layers(model)
    enabled = {id(p): p.enabled for points in layers.values() for p in points}
    per_batch = max(SAMPLES // max(len(batches), 1), 64)
    local = {n: ErrorSum() for n in layers}
    accumulated = {n: ErrorSum() for n in layers}
    seen: dict[str, torch.Tensor] = {}  # this batch's full-precision output of each layer
    against = {n: "points off" for n in layers}
    state = {"busy": False, "pass": "fp"}

    def layer_hook(name):
        def hook(module, args, kwargs, output):
            if state["busy"]:
                return None
            out = first_tensor(output)
            if not torch.is_tensor(out):
                return None
            if state["pass"] == "fp":
                seen.setdefault(name, out.detach())  # the float model's, when it ran first
                state["busy"] = True
                try:
                    with _own_points_on(layers[name], enabled):
                        local[name].add(out, first_tensor(module(*args, **kwargs)))
                finally:
                    state["busy"] = False
            elif name in seen and seen[name].shape == out.shape:
                accumulated[name].add(seen[name], out)
            return None

        return hook

    def reference_hook(name):
        def hook(module, args, output):
            out = first_tensor(output)
            if torch.is_tensor(out):
                seen[name] = out.detach()
            return None

        return hook

    taps = _Taps(model, adapter, components, per_batch, seed)
    handles = [model.get_submodule(n).register_forward_hook(layer_hook(n), with_kwargs=True) for n in layers]
    reference_taps = None
    if reference is not None:
        reference_taps = _Taps(reference, adapter_of(reference), components, per_batch, seed, only_ln=True)
        for name, module in _comparable(model, reference, layers).items():
            handles.append(module.register_forward_hook(reference_hook(name)))
            against[name] = "float model"
    outputs = {c: {"quantized": [], "fp": [], "reference": []} for c in components}
    texts: list[str] = []
    count = 0
    try:
        for batch in tqdm(batches, desc="report", disable=not progress):
            count += int(batch["pixel_values"].shape[0]) if "pixel_values" in batch else 0
            texts.extend(_batch_texts(batch, tokenizer))
            for comp in components:
                seen.clear()
                if reference is not None:
                    with reference_taps.active(True):
                        ref = adapter_of(reference).run(reference, comp, batch)
                    if ref is None:
                        continue
                    outputs[comp]["reference"].append(first_tensor(ref).detach().float())
                state["pass"] = "fp"
                with points_disabled(model), taps.active(True):
                    out = adapter.run(model, comp, batch)
                if out is None:
                    continue
                outputs[comp]["fp"].append(first_tensor(out).detach().float())
                state["pass"] = "quant"
                outputs[comp]["quantized"].append(first_tensor(adapter.run(model, comp, batch)).detach().float())
    finally:
        for h in handles:
            h.remove()
        taps.close()
        if reference_taps is not None:
            reference_taps.close()
        seen.clear()

    rows = []
    for name, points in layers.items():
        if not any(enabled[id(p)] for p in points) or local[name].count == 0:
            continue
        acc = accumulated[name]
        rows.append({"layer": name, "component": adapter.component_of(name) or "-", **_describe(points, enabled),
                     "sqnr_db": local[name].sqnr_db, "cosine": local[name].cosine,
                     "accumulated_sqnr_db": acc.sqnr_db if acc.count else None,
                     "accumulated_cosine": acc.cosine if acc.count else None, "accumulated_against": against[name]})
    rows.sort(key=lambda r: r["sqnr_db"])  # worst first
    post_ln = taps.post_ln_result()
    if reference_taps is not None:
        for comp, entry in reference_taps.post_ln_result().items():
            if comp in post_ln:
                post_ln[comp]["before"] = entry["after"]
    kept = {c: {k: torch.cat(v) for k, v in d.items() if v} for c, d in outputs.items() if d["fp"]}
    return Analysis(layers=rows, components=[c for c in components if c in kept], outputs=kept, texts=texts,
                    post_ln=post_ln, softmax=taps.sampled("softmax"), gelu=taps.sampled("gelu"),
                    weights=weight_samples(model, adapter, components, seed, reference), num_images=count)


class _Taps:
    """Forward hooks that sample what the figures show, active only inside :meth:`active`."""

    def __init__(self, model, adapter, components, per_batch: int, seed: int, only_ln: bool = False):
        self.on = False
        self.handles = []
        self.ranges: dict[str, tuple[str, ChannelRange]] = {}
        self.samplers: dict[str, dict[str, Sampler]] = {"softmax": {}, "gelu": {}}
        modules = dict(model.named_modules())
        for comp in components:
            blocks = adapter.blocks(comp)
            if not blocks:
                continue
            roles = adapter.block_roles(blocks[0])
            if roles.ln_attn:  # pre-LN: the LayerNorm's output; post-LN (BERT): the first linear's input
                self._range(comp, modules, f"{blocks[0]}.{roles.ln_attn}", output=True)
            elif roles.qkv_linears:
                self._range(comp, modules, f"{blocks[0]}.{roles.qkv_linears[0]}", output=False)
            if only_ln:
                continue
            for i, block in _blocks_to_show(blocks):
                r = adapter.block_roles(block)
                matmul = next((n for n, m in modules.items() if n.startswith(f"{block}.") and
                               getattr(getattr(m, "a_quantizer", None), "role", None) == "softmax"), None)
                if matmul:
                    self._sample("softmax", f"{comp} block {i}", modules[matmul], "a_quantizer", seed + i)
                fc2 = modules.get(f"{block}.{r.fc2}")
                if fc2 is not None:
                    self._sample("gelu", f"{comp} block {i}", fc2, "input_quantizer", seed + 100 + i)
        self.per_batch = per_batch

    def _range(self, comp, modules, name, output: bool):
        module = modules.get(name)
        if module is None:
            return
        rng = ChannelRange()
        self.ranges[comp] = (name, rng)
        def post(m, args, out):  # hooks must return None, or they replace what the module returns
            if self.on:
                rng.add(first_tensor(out))

        def pre(m, args):
            if self.on:
                rng.add(args[0])

        self.handles.append(module.register_forward_hook(post) if output else module.register_forward_pre_hook(pre))

    def _sample(self, kind, key, module, point_attr, seed):
        sampler = self.samplers[kind][key] = Sampler(0, seed)

        def pre(m, args):
            if not self.on:
                return
            sampler.per_batch = self.per_batch
            x = args[0]
            point = getattr(m, point_attr, None)
            if point is not None and getattr(m, "input_affine", None) is None:
                with _own_points_on([point], {id(point): True}):
                    sampler.add(x, point(x))
            else:
                sampler.add(x)

        self.handles.append(module.register_forward_pre_hook(pre))

    @contextlib.contextmanager
    def active(self, on: bool):
        self.on = on
        try:
            yield
        finally:
            self.on = False

    def post_ln_result(self) -> dict:
        return {comp: {"module": name, "after": (rng.low, rng.high)} for comp, (name, rng) in self.ranges.items()
                if rng.low is not None}

    def sampled(self, kind) -> dict:
        return {k: s.result() for k, s in self.samplers[kind].items() if s.values}

    def close(self):
        for h in self.handles:
            h.remove()
        self.handles.clear()


def weight_samples(model, adapter, components, seed: int = 0, reference=None) -> dict:
    """Weights of qkv, the attention output projection, fc1 and fc2 in the first, middle and last
    blocks: full precision (the float model's, when given: a saved model holds its weights already
    on the quantization grid) and the same elements after the weight quantizer."""
    out = {}
    gen = torch.Generator().manual_seed(seed)
    modules = dict(model.named_modules())
    float_modules = dict(reference.named_modules()) if reference is not None else {}
    for comp in components:
        for i, block in _blocks_to_show(adapter.blocks(comp)):
            roles = adapter.block_roles(block)
            for label, paths in (("qkv", roles.qkv_linears), ("proj", [roles.out]), ("fc1", [roles.fc1]), ("fc2", [roles.fc2])):
                mods = [modules.get(f"{block}.{p}") for p in paths if p]
                mods = [m for m in mods if m is not None and hasattr(m, "weight")]
                if not mods:
                    continue
                floats = [float_modules.get(f"{block}.{p}") for p in paths if p]
                if not all(getattr(f, "weight", None) is not None and f.weight.shape == m.weight.shape for f, m in zip(floats, mods)):
                    floats = mods
                values = torch.cat([f.weight.detach().float().reshape(-1) for f in floats])
                quant = torch.cat([_quantized_weight(m).reshape(-1) for m in mods])
                idx = torch.randint(0, values.numel(), (min(SAMPLES, values.numel()),), generator=gen)
                entry = {"values": values[idx]}
                if not torch.equal(quant, values):
                    entry["quantized"] = quant[idx]
                out[f"{comp} block {i} {label}"] = entry
    return out


def _quantized_weight(module) -> torch.Tensor:
    fn = getattr(module, "quantized_weight", None)
    return (fn() if callable(fn) else module.weight).detach().float()
