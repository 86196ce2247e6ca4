"""Numbers only: quantizers, range estimators (observers) and straight-through rounding."""

from .log import LogQuantizer
from .observers import (
    OBSERVERS, EMAObserver, MinMaxObserver, Observer, OMSEObserver, PercentileObserver, PercentileSearchObserver, make_observer,
)
from .rounding import floor_ste, round_ste
from .uniform import MAX_BITS, MIN_BITS, UniformQuantizer, fake_quantize, int_range, params_from_range

__all__ = [
    "LogQuantizer", "UniformQuantizer", "fake_quantize", "int_range", "params_from_range", "MIN_BITS", "MAX_BITS",
    "Observer", "MinMaxObserver", "EMAObserver", "PercentileObserver", "OMSEObserver", "PercentileSearchObserver", "OBSERVERS", "make_observer",
    "round_ste", "floor_ste",
]
