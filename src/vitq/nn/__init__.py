"""Fake-quant modules and whole-model helpers."""

from .modules import WEIGHT_QUANT_LAYERS, QuantConv2d, QuantEmbedding, QuantLayerNorm, QuantLinear, QuantMatMul
from .prompt import AdaptedProjection, LearnedPrompt, QAdapter
from .split import SplitQuantConv2d
from .state import calibrate_weights, points_disabled, finish_calibration, quant_state, quant_tensors, quantizers, set_mode, summarize_points
from .tensor_quantizer import KINDS, MODES, TensorQuantizer

__all__ = [
    "points_disabled", "LearnedPrompt", "QAdapter", "AdaptedProjection",
    "QuantConv2d", "QuantEmbedding", "WEIGHT_QUANT_LAYERS", "SplitQuantConv2d", "QuantLayerNorm", "QuantLinear", "QuantMatMul", "TensorQuantizer", "KINDS", "MODES",
    "calibrate_weights", "finish_calibration", "quant_state", "quant_tensors", "quantizers", "set_mode", "summarize_points",
]
