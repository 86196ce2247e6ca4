"""Training for everything vitq learns: the loop (seeded order, progress, safetensors checkpoints
with resume, data parallel under torchrun), checkpoints, distillation losses, and block reconstruction (BRECQ/QDrop)."""

from .checkpoint import load_checkpoint, save_checkpoint
from .losses import contrastive, feature_distillation, hard_distillation, soft_cross_entropy, soft_distillation
from .optim import MultiOptimizer
from .loop import StepContext, TrainConfig, TrainState, epoch_generator, train
from .reconstruction import ReconConfig, ReconResult, reconstruct

__all__ = ["train", "TrainConfig", "TrainState", "StepContext", "epoch_generator", "save_checkpoint", "load_checkpoint",
           "soft_distillation", "soft_cross_entropy", "hard_distillation", "feature_distillation", "contrastive",
           "ReconConfig", "ReconResult", "reconstruct", "MultiOptimizer"]
