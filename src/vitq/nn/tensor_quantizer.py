"""A quantization point in a network: a quantizer, the observer that calibrates it, and a mode.

Modes: ``fp`` (pass-through), ``calib`` (the observer sees the data, values pass unchanged) and
``quant`` (fake-quantize). Each point can also be switched off on its own with ``enabled = False``.
Its fields (bits, kind, symmetry, axis, observer, learnable, role) are given to the constructor and
written by :meth:`describe`; :meth:`from_description` rebuilds the same point.
"""

from __future__ import annotations

import torch
from torch import nn

from ..quant import QUANTIZER_KINDS, UniformQuantizer, make_observer
from ..quant.observers import observer_options

MODES = ("fp", "calib", "quant")
KINDS = tuple(QUANTIZER_KINDS)


class TensorQuantizer(nn.Module):
    def __init__(
        self,
        bits: int = 8,
        kind: str = "uniform",
        symmetric: bool = False,
        axis: int | None = None,
        observer: str = "minmax",
        observer_options: dict | None = None,
        learnable: bool = False,
        role: str | None = None,
    ):
        super().__init__()
        if kind not in KINDS:
            raise ValueError(f"unknown quantizer kind {kind!r}: use one of {KINDS}")
        if kind == "uniform":
            self.quantizer = UniformQuantizer(bits, symmetric=symmetric, axis=axis, learnable=learnable)
        else:
            self.quantizer = QUANTIZER_KINDS[kind](bits)
        self.role = role  # what the point quantizes: weight, post_ln, softmax, ... (models.prepare.ROLES)
        self.observer_name = observer
        self.observer_options = dict(observer_options or {})
        self.observer = None
        self.mode = "fp"
        self.enabled = True

    # -- description -------------------------------------------------------------------------
    @property
    def bits(self) -> int:
        return self.quantizer.bits

    @property
    def kind(self) -> str:
        return self.quantizer.kind

    @property
    def axis(self):
        return self.quantizer.axis

    @property
    def learnable(self) -> bool:
        return bool(getattr(self.quantizer, "learnable", False))

    @property
    def active(self) -> bool:
        """True when this point really quantizes in the forward pass."""
        return self.enabled and self.mode == "quant"

    def describe(self) -> dict:
        scale = self.quantizer.scale.detach().reshape(-1)
        return {
            "kind": self.kind,
            "bits": self.bits,
            "symmetric": bool(self.quantizer.symmetric),
            "axis": self.axis,
            "observer": self.observer_name,
            "enabled": self.enabled,
            "scale_min": float(scale.min()) if scale.numel() else None,
            "scale_max": float(scale.max()) if scale.numel() else None,
            "channels": int(scale.numel()) if self.axis is not None else 1,
            "role": self.role,
            "learnable": self.learnable,
        }

    @classmethod
    def from_description(cls, desc: dict) -> "TensorQuantizer":
        """Rebuild a point from :meth:`describe` (its tensors come from the state dict afterwards)."""
        q = cls(bits=desc["bits"], kind=desc["kind"], symmetric=desc["symmetric"], axis=desc["axis"],
                observer=desc.get("observer", "minmax"), learnable=desc.get("learnable", False), role=desc.get("role"))
        q.enabled = desc.get("enabled", True)
        channels = desc.get("channels", 1) if desc["kind"] == "uniform" else 1
        if desc["kind"] == "uniform":  # allocate so load_state_dict finds the right shapes
            q.quantizer.set_params(torch.ones(channels), torch.zeros(channels))
        q.mode = "quant"
        return q

    def extra_repr(self) -> str:
        state = "off" if not self.enabled else self.mode
        role = f"role={self.role}, " if self.role else ""
        return f"{role}mode={state}, observer={self.observer_name}"

    # -- calibration -------------------------------------------------------------------------
    def set_mode(self, mode: str) -> None:
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}: use one of {MODES}")
        if mode == "calib" and self.observer is None:
            self.observer = make_observer(self.observer_name, axis=self.axis, **self.observer_options)
        self.mode = mode

    def observe(self, x: torch.Tensor, keep_all: bool = False) -> None:
        """Feed the observer; ``keep_all`` (weights: small, seen once) lets a search observer score
        its candidates on every value instead of a sample."""
        if self.observer is None:
            options = dict(self.observer_options)
            if keep_all and "max_samples" in observer_options(self.observer_name):
                options["max_samples"] = None
            self.observer = make_observer(self.observer_name, axis=self.axis, **options)
        self.observer.update(x)

    def finish_calibration(self) -> None:
        """Turn what the observer saw into a scale and zero-point, and drop the observer."""
        if self.observer is not None and self.observer.batches > 0:
            lo, hi = self.observer.compute(self.quantizer)
            self.quantizer.set_range(lo, hi)
        self.observer = None

    @torch.no_grad()
    def calibrate_on(self, tensors) -> None:
        """Forget what was observed, observe ``tensors`` (an iterable), fix the scale and quantize from
        now on: a point whose input changes while something trains (P4Q's prompt and adapter)."""
        self.observer = None
        self.set_mode("calib")
        for x in tensors:
            self.observe(x)
        self.finish_calibration()
        self.set_mode("quant")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.enabled or self.mode == "fp":
            return x
        if self.mode == "calib":
            self.observe(x)
            return x
        y = self.quantizer(x)  # scales stay float32; a bf16 model gets its dtype back
        return y if y.dtype == x.dtype else y.to(x.dtype)
