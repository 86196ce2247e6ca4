"""Numbers only: quantizers, range estimators (observers) and straight-through rounding."""

from .log import LOG_KINDS, Log2Quantizer, LogQuantizer, LogSqrt2Quantizer, ParityLog2Quantizer
from .observers import (
    OBSERVERS, EMAObserver, MinMaxObserver, Observer, OMSEObserver, PercentileObserver, PercentileSearchObserver, make_observer,
)
from .rounding import floor_ste, round_ste
from .uniform import MAX_BITS, MIN_BITS, UniformQuantizer, fake_quantize, int_range, params_from_range

# Every quantizer kind by name, as the QuantState writes it.
QUANTIZER_KINDS = {"uniform": UniformQuantizer, **LOG_KINDS}

__all__ = [
    "LogQuantizer", "Log2Quantizer", "LogSqrt2Quantizer", "ParityLog2Quantizer", "QUANTIZER_KINDS", "UniformQuantizer", "fake_quantize", "int_range", "params_from_range", "MIN_BITS", "MAX_BITS",
    "Observer", "MinMaxObserver", "EMAObserver", "PercentileObserver", "OMSEObserver", "PercentileSearchObserver", "OBSERVERS", "make_observer",
    "round_ste", "floor_ste",
]
