"""A thin training loop that resumes mid-epoch bit-exactly from one checkpoint file."""

from trainer.callbacks import Callback
from trainer.checkpoints import load_checkpoint, save_checkpoint
from trainer.config import (
    Aggregation,
    AmpDtype,
    CheckpointConfig,
    GenericTrainerConfig,
    MonitorMode,
    PerformanceConfig,
    PreemptionConfig,
    SchedulerInterval,
    ValidationConfig,
    ValidationFrequency,
)
from trainer.errors import CheckpointError, CheckpointLockedError, CheckpointWriteError
from trainer.loop import FitResult, GenericTrainer
from trainer.manager import CheckpointManager
from trainer.precision import MixedPrecision, Precision, make_precision
from trainer.preemption import PreemptionFlag
from trainer.resume import ResumePhase, ResumeState

__all__ = [
    "Aggregation",
    "AmpDtype",
    "Callback",
    "CheckpointConfig",
    "CheckpointError",
    "CheckpointLockedError",
    "CheckpointManager",
    "CheckpointWriteError",
    "FitResult",
    "GenericTrainer",
    "GenericTrainerConfig",
    "MixedPrecision",
    "MonitorMode",
    "PerformanceConfig",
    "Precision",
    "PreemptionConfig",
    "PreemptionFlag",
    "ResumePhase",
    "ResumeState",
    "SchedulerInterval",
    "ValidationConfig",
    "ValidationFrequency",
    "load_checkpoint",
    "make_precision",
    "save_checkpoint",
]
