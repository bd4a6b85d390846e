"""A thin training loop that resumes mid-epoch bit-exactly from one checkpoint file."""

from trainer.callbacks import Callback
from trainer.checkpoints import CheckpointError, load_checkpoint, save_checkpoint
from trainer.config import (
    CheckpointConfig,
    GenericTrainerConfig,
    PerformanceConfig,
    PreemptionConfig,
    SchedulerInterval,
    ValidationConfig,
)
from trainer.loop import FitResult, GenericTrainer
from trainer.manager import CheckpointManager
from trainer.precision import MixedPrecision, Precision, make_precision
from trainer.resume import ResumeState

__all__ = [
    "Callback",
    "CheckpointConfig",
    "CheckpointError",
    "CheckpointManager",
    "FitResult",
    "GenericTrainer",
    "GenericTrainerConfig",
    "MixedPrecision",
    "PerformanceConfig",
    "Precision",
    "PreemptionConfig",
    "ResumeState",
    "SchedulerInterval",
    "ValidationConfig",
    "load_checkpoint",
    "make_precision",
    "save_checkpoint",
]
