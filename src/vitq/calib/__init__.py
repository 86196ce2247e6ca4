"""The shared calibration engine: recording module inputs and outputs on calibration data (bounded
memory, spilling to disk; full precision and quantized side by side), calibrating quantization
points in forward order, and searching a point's parameters by an objective on the layer output."""

from .recorder import Stream, StopForward, capture_inputs, record, record_side_by_side, replay
from .search import OBJECTIVES, OutputSearch
from .sequential import calibrate_parallel, calibrate_sequential, points_in_order

__all__ = ["Stream", "StopForward", "capture_inputs", "record", "record_side_by_side", "replay", "OBJECTIVES", "OutputSearch",
           "calibrate_parallel", "calibrate_sequential", "points_in_order"]
