"""What the CPU's integer dot products can do, for choosing how int8 weights are stored.

ONNX Runtime (MLAS) and OpenVINO (oneDNN) multiply uint8 activations by int8 weights. On x86
CPUs without VNNI they use ``vpmaddubsw``, which adds two u8×s8 products into a *saturating*
int16: 255·127 + 255·127 > 32767, so a layer with 8-bit weights can silently lose accuracy
(ONNX Runtime's quantization guide names the problem). VNNI (``vpdpbusd``) accumulates in int32
and is exact. Weights whose codes stay in [-64, 64] (7 bits or fewer) never saturate: two products
add up to at most 255·128 = 32640.
"""

from __future__ import annotations

import functools
import platform
from pathlib import Path

# Flags (Linux /proc/cpuinfo names) of the x86 extensions with an int32-accumulating u8·s8 dot product.
VNNI_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")
SAFE_CODE = 64  # |code| <= 64: no pair of u8·s8 products can overflow int16


def _cpuinfo_flags() -> set[str] | None:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.partition(":")[2].split())
    return None


@functools.lru_cache(maxsize=1)
def u8s8_saturates() -> bool:
    """True where uint8×int8 integer kernels may saturate (x86 without VNNI, or x86 we cannot read)."""
    if platform.machine().lower() not in ("x86_64", "amd64", "i386", "i686", "x86"):
        return False  # ARM's sdot/udot and other ISAs accumulate in int32
    flags = _cpuinfo_flags()
    if flags is None:
        return True  # unknown x86: assume the safe storage is needed
    return not any(f in flags for f in VNNI_FLAGS)


def describe() -> dict:
    flags = _cpuinfo_flags() or set()
    return {"machine": platform.machine(), "vnni": sorted(f for f in VNNI_FLAGS if f in flags),
            "u8s8_saturates": u8s8_saturates()}
