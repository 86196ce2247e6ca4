"""QuantConfig and bit specs (``W8A8``, ``W4A4``, P4Q's ``4-4-8``), parsed in one place."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field

from .errors import ConfigError
from .quant.uniform import MAX_BITS, MIN_BITS

COMPONENTS = ("image", "text")
FULL_PRECISION_BITS = 32  # A32 in a bit spec: activations (or attention) stay in full precision


@dataclass(frozen=True)
class BitSpec:
    """Bit widths of weights, activations and attention (q, k, v, post-Softmax)."""

    w: int
    a: int
    attn: int

    def __str__(self) -> str:
        return f"W{self.w}A{self.a}" if self.attn == self.a else f"{self.w}-{self.a}-{self.attn}"


_WA = re.compile(r"^W(\d+)A(\d+)(?:ATT?N?(\d+))?$", re.IGNORECASE)
_DASHED = re.compile(r"^(\d+)-(\d+)(?:-(\d+))?$")


def parse_bits(spec: str | BitSpec) -> BitSpec:
    """``W8A8`` → (8, 8, 8); ``W4A4`` → (4, 4, 4); ``4-4-8`` → weights 4, activations 4, attention 8."""
    if isinstance(spec, BitSpec):
        bits = spec
    else:
        text = str(spec).strip()
        m = _WA.match(text) or _DASHED.match(text)
        if m is None:
            raise ConfigError(
                f"cannot read bit spec {spec!r}",
                hint="write it as W8A8, W4A4 (weights, activations) or 4-4-8 (weights-activations-attention)",
            )
        w, a = int(m.group(1)), int(m.group(2))
        bits = BitSpec(w, a, int(m.group(3)) if m.group(3) else a)
    for what, b in (("weight", bits.w), ("activation", bits.a), ("attention", bits.attn)):
        if what != "weight" and b == FULL_PRECISION_BITS:
            continue  # W8A32: weights only, activations in full precision
        if not MIN_BITS <= b <= MAX_BITS:
            raise ConfigError(
                f"{what} bit width {b} in {spec!s} is out of range",
                hint=f"vitq quantizes to {MIN_BITS} to {MAX_BITS} bits (activations: or A32, full precision); keep a layer in full precision with an exclusion pattern instead",
            )
    return bits


ATTENTION_ROLES = ("attn_q", "attn_k", "softmax", "attn_v", "attn_scores")
WEIGHT_ROLES = ("weight", "embedding")  # a bit plan's W applies to both


class BitPlan:
    """Per-layer bit widths: ordered ``fnmatch`` patterns of layer names, each with a bit spec; the
    last pattern that matches a layer wins, and a layer no pattern matches keeps the method's bits.

    A point belongs to a layer: a weight or input point to its linear, an attention-matmul point to
    the attention module, a LayerNorm output point to the first linear it feeds (so a pattern for
    ``*.layers.3.self_attn*`` covers the whole MSA module, as mixed-precision searches want). Weight
    points take the spec's weight bits, attention points its attention bits, the others its
    activation bits.
    """

    def __init__(self, rules=None):
        items = rules.items() if isinstance(rules, dict) else (rules or ())
        self.rules: tuple[tuple[str, BitSpec], ...] = tuple((str(p), parse_bits(b)) for p, b in items)

    def __bool__(self) -> bool:
        return bool(self.rules)

    def spec_for(self, layer: str) -> BitSpec | None:
        from fnmatch import fnmatch

        found = None
        for pattern, spec in self.rules:
            if fnmatch(layer, pattern):
                found = spec
        return found

    def bits_for(self, layer: str, role: str) -> int | None:
        """The bits of ``role`` in ``layer`` under this plan, or None where the plan says nothing."""
        spec = self.spec_for(layer)
        if spec is None:
            return None
        if role in WEIGHT_ROLES:
            return spec.w
        return spec.attn if role in ATTENTION_ROLES else spec.a

    def to_dict(self) -> dict[str, str]:
        return {p: str(b) for p, b in self.rules}


def parse_components(components) -> tuple[str, ...]:
    """``"image,text"``, ``"both"``/``"combined"``, or a sequence → a tuple of component names."""
    if isinstance(components, str):
        items = [c.strip().lower() for c in components.split(",") if c.strip()]
    else:
        items = [str(c).strip().lower() for c in components]
    out = []
    for c in items:
        if c in ("both", "combined", "all"):
            out.extend(COMPONENTS)
        elif c in COMPONENTS or c == "unet":  # unet: a diffusion model's one component
            out.append(c)
        else:
            raise ConfigError(f"unknown component {c!r}", hint="use image, text, or both (image,text)")
    if not out:
        raise ConfigError("no component selected", hint="use image, text, or both (image,text)")
    return tuple(dict.fromkeys(out))


@dataclass
class QuantConfig:
    """What to quantize and how.

    ``bits`` takes a spec (``"W4A4"``, ``"4-4-8"``); or give ``w_bits``/``a_bits``/``attn_bits``.
    ``exclude`` holds fnmatch patterns of module names kept in full precision.
    ``bit_plan`` maps fnmatch patterns of layer names to bit specs (:class:`BitPlan`), e.g.
    ``{"vision_model.encoder.layers.0.*": "W8A8"}``: those layers get other bits than ``bits``.
    ``options`` holds method-specific settings (e.g. ``percentile``, ``momentum``).
    """

    method: str = "minmax"
    bits: str | None = None
    w_bits: int = 8
    a_bits: int = 8
    attn_bits: int | None = None
    components: tuple[str, ...] = COMPONENTS
    exclude: tuple[str, ...] = ()
    num_calib: int = 32
    batch_size: int = 16
    seed: int = 0
    options: dict = field(default_factory=dict)
    bit_plan: dict = field(default_factory=dict)

    def __post_init__(self):
        spec = parse_bits(self.bits) if self.bits is not None else parse_bits(
            BitSpec(self.w_bits, self.a_bits, self.attn_bits if self.attn_bits is not None else self.a_bits)
        )
        self.w_bits, self.a_bits, self.attn_bits = spec.w, spec.a, spec.attn
        self.bits = str(spec)
        self.components = parse_components(self.components)
        self.exclude = tuple(self.exclude)
        self.bit_plan = BitPlan(self.bit_plan).to_dict()  # checks every spec; keeps the order
        if self.num_calib <= 0 or self.batch_size <= 0:
            raise ConfigError("num_calib and batch_size must be positive")

    @property
    def spec(self) -> BitSpec:
        return BitSpec(self.w_bits, self.a_bits, self.attn_bits)

    @property
    def plan(self) -> BitPlan:
        return BitPlan(self.bit_plan)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["components"] = list(self.components)
        d["exclude"] = list(self.exclude)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "QuantConfig":
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        known["components"] = tuple(known.get("components", COMPONENTS))
        known["exclude"] = tuple(known.get("exclude", ()))
        return cls(**known)
