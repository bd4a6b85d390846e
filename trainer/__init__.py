"""A thin training loop that resumes mid-epoch bit-exactly from one checkpoint file."""

from trainer.callbacks import Callback
from trainer.checkpoints import load_checkpoint, save_checkpoint
from trainer.checkpoints.errors import (
    CheckpointError,
    CheckpointLockedError,
    CheckpointWriteError,
    SnapshotChangedError,
)
from trainer.checkpoints.manager import CheckpointManager
from trainer.config import (
    Aggregation,
    AmpDtype,
    CheckpointConfig,
    GenericTrainerConfig,
    LoggerName,
    MonitorMode,
    NonFiniteLoss,
    PerformanceConfig,
    PreemptionConfig,
    SchedulerInterval,
    ValidationConfig,
    ValidationFrequency,
)
from trainer.devices import move_to_device, rank_and_world_size, resolve_device
from trainer.loggers import CSVLogger, Logger, TensorBoardLogger
from trainer.loop import GenericTrainer
from trainer.precision import MixedPrecision, Precision, make_precision
from trainer.preemption import InterruptFlag, PreemptionFlag
from trainer.result import FitResult, FitStatus
from trainer.resume import ResumePhase, ResumeState, SaveReason

__all__ = [
    "Aggregation",
    "AmpDtype",
    "CSVLogger",
    "Callback",
    "CheckpointConfig",
    "CheckpointError",
    "CheckpointLockedError",
    "CheckpointManager",
    "CheckpointWriteError",
    "FitResult",
    "FitStatus",
    "GenericTrainer",
    "GenericTrainerConfig",
    "InterruptFlag",
    "Logger",
    "LoggerName",
    "MixedPrecision",
    "MonitorMode",
    "NonFiniteLoss",
    "PerformanceConfig",
    "Precision",
    "PreemptionConfig",
    "PreemptionFlag",
    "ResumePhase",
    "ResumeState",
    "SaveReason",
    "SchedulerInterval",
    "SnapshotChangedError",
    "TensorBoardLogger",
    "ValidationConfig",
    "ValidationFrequency",
    "load_checkpoint",
    "make_precision",
    "move_to_device",
    "rank_and_world_size",
    "resolve_device",
    "save_checkpoint",
]
