"""The shared calibration engine: recording module inputs and outputs on calibration data (bounded
memory, spilling to disk), and calibrating quantization points in forward order."""

from .recorder import Stream, StopForward, capture_inputs, replay
from .sequential import calibrate_parallel, calibrate_sequential, points_in_order

__all__ = ["Stream", "StopForward", "capture_inputs", "replay", "calibrate_parallel", "calibrate_sequential", "points_in_order"]
