"""Checkpoints: format v1 (one file per save), the file I/O, and the folder's manager.

* :mod:`~trainer.checkpoints.format`: the payload layout (key constants, :class:`CheckpointPayload`),
  :func:`build_payload` and :func:`apply_payload`; :mod:`~trainer.checkpoints.legacy` migrates
  files written before ``format_version`` existed.
* :mod:`~trainer.checkpoints.io`: :func:`write_checkpoint` (atomic, checksummed) and
  :func:`read_checkpoint` (``weights_only=True``, verified), :func:`save_checkpoint` and
  :func:`load_checkpoint` for a trainer.
* :class:`CheckpointManager` (:mod:`~trainer.checkpoints.manager`): a folder's paths, rotation,
  ``latest`` and ``best``, the writer lock; it delegates the format and the I/O to the above.

The format is documented in ``FORMAT.md`` beside this package's modules.
"""

from trainer.checkpoints.errors import (
    CheckpointError,
    CheckpointLockedError,
    CheckpointWriteError,
    SnapshotChangedError,
)
from trainer.checkpoints.format import (
    FORMAT_VERSION,
    KEY_CHOICE_RNG,
    KEY_CONFIG_SNAPSHOT,
    KEY_DATALOADER_MANAGER,
    KEY_EPOCH,
    KEY_FORMAT_VERSION,
    KEY_GLOBAL_STEP,
    KEY_METRICS_HISTORY,
    KEY_MODEL,
    KEY_MULTI_DATALOADER_ONLY,
    KEY_OPTIMIZERS,
    KEY_RESUME,
    KEY_RNG,
    KEY_SAVE_TIMESTAMP,
    KEY_SCALER,
    KEY_SCHEDULERS,
    MANAGER_CHOICE_RNG_KEY,
    V1_KEYS,
    CheckpointPayload,
    apply_payload,
    build_payload,
)
from trainer.checkpoints.io import (
    TrainerLike,
    check_plain_types,
    load_checkpoint,
    read_checkpoint,
    save_checkpoint,
    write_checkpoint,
)
from trainer.checkpoints.legacy import migrate_legacy_payload
from trainer.checkpoints.manager import CheckpointManager

__all__ = [
    "FORMAT_VERSION",
    "KEY_CHOICE_RNG",
    "KEY_CONFIG_SNAPSHOT",
    "KEY_DATALOADER_MANAGER",
    "KEY_EPOCH",
    "KEY_FORMAT_VERSION",
    "KEY_GLOBAL_STEP",
    "KEY_METRICS_HISTORY",
    "KEY_MODEL",
    "KEY_MULTI_DATALOADER_ONLY",
    "KEY_OPTIMIZERS",
    "KEY_RESUME",
    "KEY_RNG",
    "KEY_SAVE_TIMESTAMP",
    "KEY_SCALER",
    "KEY_SCHEDULERS",
    "MANAGER_CHOICE_RNG_KEY",
    "V1_KEYS",
    "CheckpointError",
    "CheckpointLockedError",
    "CheckpointManager",
    "CheckpointPayload",
    "CheckpointWriteError",
    "SnapshotChangedError",
    "TrainerLike",
    "apply_payload",
    "build_payload",
    "check_plain_types",
    "load_checkpoint",
    "migrate_legacy_payload",
    "read_checkpoint",
    "save_checkpoint",
    "write_checkpoint",
]
