"""Checkpoint format v1: the payload layout, atomic writes, safe reads and legacy migration.

One checkpoint is one file holding one dict with exactly the keys in :data:`V1_KEYS` (see
``spec/CHECKPOINT_FORMAT_V1.md``). It holds only plain types and tensors, is written atomically
(:func:`write_checkpoint`) and read with ``torch.load(weights_only=True)`` (:func:`read_checkpoint`).

Every file carries a CRC-32 of all its bytes (:mod:`trainer.integrity`), verified on every read; a
file without one (older, or from plain ``torch.save``) loads with a WARNING once. New files get
``0o666 & ~umask`` (0o644 under umask 022) like any file, or exactly ``file_mode`` when given.

Example:
    >>> save_checkpoint(Path("run/step.ckpt"), trainer)   # doctest: +SKIP
    >>> load_checkpoint(Path("run/step.ckpt"), trainer)   # doctest: +SKIP
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import torch

from trainer.atomic import atomic_write
from trainer.errors import (
    CheckpointError,
    CheckpointLockedError,
    CheckpointWriteError,
    translate_write_errors,
)
from trainer.integrity import IntegrityStatus, load_verified, note_unverified, save_with_checksum
from trainer.precision import Precision, _load_scaler_state
from trainer.resume import ResumeState
from trainer.rng import restore_rng_states

if TYPE_CHECKING:
    from trainer.manager import CheckpointManager

__all__ = [
    "FORMAT_VERSION",
    "V1_KEYS",
    "CheckpointError",
    "CheckpointLockedError",
    "CheckpointManager",
    "CheckpointWriteError",
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

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1

KEY_FORMAT_VERSION = "format_version"
KEY_MULTI_DATALOADER_ONLY = "is_multi_dataloader_only"
KEY_SAVE_TIMESTAMP = "save_timestamp"
KEY_EPOCH = "epoch"
KEY_GLOBAL_STEP = "global_step"
KEY_MODEL = "model_state_dict"
KEY_OPTIMIZERS = "optimizer_state_dicts"
KEY_SCHEDULERS = "scheduler_state_dicts"
KEY_SCALER = "amp_scaler_state"
KEY_RNG = "rng_states"
KEY_DATALOADER_MANAGER = "dataloader_manager_state"
KEY_CHOICE_RNG = "choice_rng_state"
KEY_RESUME = "resume_state"
KEY_METRICS_HISTORY = "metrics_history"
KEY_CONFIG_SNAPSHOT = "config_snapshot"

V1_KEYS = (
    KEY_FORMAT_VERSION,
    KEY_MULTI_DATALOADER_ONLY,
    KEY_SAVE_TIMESTAMP,
    KEY_EPOCH,
    KEY_GLOBAL_STEP,
    KEY_MODEL,
    KEY_OPTIMIZERS,
    KEY_SCHEDULERS,
    KEY_SCALER,
    KEY_RNG,
    KEY_DATALOADER_MANAGER,
    KEY_CHOICE_RNG,
    KEY_RESUME,
    KEY_METRICS_HISTORY,
    KEY_CONFIG_SNAPSHOT,
)

#: Key of the manager's choice RNG inside ``dataloader_manager_state``; the top-level
#: ``choice_rng_state`` is copied from it (one source, no second capture).
MANAGER_CHOICE_RNG_KEY = "choice_rng"


class TrainerLike(Protocol):
    """What :func:`save_checkpoint` / :func:`load_checkpoint` need from a trainer."""

    def checkpoint_payload(self) -> dict[str, Any]: ...

    def restore_from_payload(self, payload: dict[str, Any]) -> Any: ...


def _as_list(objs: Any) -> list[Any]:
    if objs is None:
        return []
    if isinstance(objs, (list, tuple)):
        return list(objs)
    return [objs]


def build_payload(
    *,
    model: torch.nn.Module,
    optimizers: Sequence[torch.optim.Optimizer] | torch.optim.Optimizer | None,
    schedulers: Sequence[Any] | Any | None,
    scaler_state: Mapping[str, Any] | None,
    rng_states: Mapping[str, Any] | None,
    dataloader_manager_state: Mapping[str, Any] | None,
    resume_state: ResumeState | Mapping[str, Any],
    epoch: int,
    global_step: int,
    metrics_history: Mapping[str, Any] | None = None,
    config_snapshot: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Return the v1 payload: a dict with exactly the keys of :data:`V1_KEYS`.

    ``choice_rng_state`` is taken from ``dataloader_manager_state["choice_rng"]`` (None without a
    data manager state).
    """
    if isinstance(resume_state, ResumeState):
        resume = resume_state.to_dict()
    else:
        resume = ResumeState.from_dict(resume_state).to_dict()
    manager_state = None if dataloader_manager_state is None else dict(dataloader_manager_state)
    choice = None if manager_state is None else manager_state.get(MANAGER_CHOICE_RNG_KEY)
    return {
        KEY_FORMAT_VERSION: FORMAT_VERSION,
        KEY_MULTI_DATALOADER_ONLY: True,
        KEY_SAVE_TIMESTAMP: time.time(),
        KEY_EPOCH: int(epoch),
        KEY_GLOBAL_STEP: int(global_step),
        KEY_MODEL: model.state_dict(),
        KEY_OPTIMIZERS: [o.state_dict() for o in _as_list(optimizers)],
        KEY_SCHEDULERS: [s.state_dict() for s in _as_list(schedulers)],
        KEY_SCALER: None if scaler_state is None else dict(scaler_state),
        KEY_RNG: None if rng_states is None else dict(rng_states),
        KEY_DATALOADER_MANAGER: manager_state,
        KEY_CHOICE_RNG: choice,
        KEY_RESUME: resume,
        KEY_METRICS_HISTORY: None if metrics_history is None else dict(metrics_history),
        KEY_CONFIG_SNAPSHOT: None if config_snapshot is None else dict(config_snapshot),
    }


def _check_count(kind: str, saved: Sequence[Any], given: Sequence[Any]) -> None:
    if len(saved) != len(given):
        raise ValueError(
            f"The checkpoint holds {len(saved)} {kind} state(s) but {len(given)} {kind}(s) were "
            f"given; pass the same {kind}s, in the same order, as the run that saved it"
        )


def apply_payload(
    payload: Mapping[str, Any],
    *,
    model: torch.nn.Module,
    optimizers: Sequence[torch.optim.Optimizer] | torch.optim.Optimizer | None,
    schedulers: Sequence[Any] | Any | None,
    precision_or_scaler: Precision | torch.amp.GradScaler | None = None,
    dataloader_manager: Any = None,
    restore_rng: bool = True,
    strict: bool = True,
) -> ResumeState:
    """Restore model, optimizers, schedulers, scaler, data position and RNGs from a v1 payload.

    Counts are checked before anything is changed. RNGs are restored last.

    Args:
        payload: A dict from :func:`read_checkpoint` or :func:`build_payload`.
        model: Loaded with ``strict=True``.
        optimizers: As many as the payload holds, same order.
        schedulers: As many as the payload holds, same order.
        precision_or_scaler: A :class:`Precision`, a ``GradScaler`` or None.
        dataloader_manager: Anything with ``load_state_dict``; gets ``dataloader_manager_state``.
        restore_rng: Restore Python, numpy and torch RNGs from ``rng_states``.
        strict: Raise when the payload holds a scaler state and there is no scaler to take it.

    Returns:
        The payload's :class:`ResumeState`.

    Raises:
        ValueError: Counts differ, the scaler state has nowhere to go, or ``resume_state`` or
            ``rng_states`` is malformed.
    """
    optimizers, schedulers = _as_list(optimizers), _as_list(schedulers)
    _check_count("optimizer", payload[KEY_OPTIMIZERS], optimizers)
    _check_count("scheduler", payload[KEY_SCHEDULERS], schedulers)
    resume = ResumeState.from_dict(payload[KEY_RESUME])
    model.load_state_dict(payload[KEY_MODEL])
    for optimizer, state in zip(optimizers, payload[KEY_OPTIMIZERS], strict=True):
        optimizer.load_state_dict(state)
    for scheduler, state in zip(schedulers, payload[KEY_SCHEDULERS], strict=True):
        scheduler.load_state_dict(state)
    if isinstance(precision_or_scaler, Precision):
        precision_or_scaler.load_state_dict(payload[KEY_SCALER], strict=strict)
    else:
        _load_scaler_state(
            precision_or_scaler, payload[KEY_SCALER], strict=strict, owner="the given scaler"
        )
    if dataloader_manager is not None:
        manager_state = payload[KEY_DATALOADER_MANAGER]
        if manager_state is None:
            raise ValueError(
                "The checkpoint holds no dataloader_manager_state (got None), so the data "
                "position cannot be restored; pass dataloader_manager=None to start its epoch from "
                "the beginning"
            )
        dataloader_manager.load_state_dict(manager_state)
    if restore_rng and payload[KEY_RNG] is not None:
        restore_rng_states(payload[KEY_RNG])
    return resume


_LEAF_TYPES = (bool, int, float, str, type(None), torch.Tensor, torch.dtype, torch.device)


def check_plain_types(obj: Any, where: str = "payload") -> None:
    """Raise when ``obj`` holds anything ``torch.load(weights_only=True)`` would refuse.

    Allowed: bool, int, float, str, None, tensors, torch dtypes and devices, and dicts, lists
    and tuples of those (DESIGN.md section 3).

    Raises:
        TypeError: Naming the first offending value's location and type.
    """
    if isinstance(obj, torch.Tensor) or type(obj) in _LEAF_TYPES:
        return
    if isinstance(obj, (dict, list, tuple)) and type(obj).__module__ in ("builtins", "collections"):
        items = obj.items() if isinstance(obj, dict) else enumerate(obj)
        for key, value in items:
            if isinstance(obj, dict) and type(key) not in (str, int, float, bool, type(None)):
                raise TypeError(
                    f"{where} has a key of type {type(key).__name__} ({key!r}); use str or int keys"
                )
            check_plain_types(value, f"{where}[{key!r}]")
        return
    raise TypeError(
        f"{where} is a {type(obj).__module__}.{type(obj).__qualname__}, which "
        "torch.load(weights_only=True) cannot load; state must hold only int, float, bool, str, "
        "None, lists, tuples, dicts and tensors (convert numpy arrays with torch.from_numpy, "
        "enums with .value)"
    )


def write_checkpoint(
    path: str | os.PathLike[str], payload: Mapping[str, Any], *, file_mode: int | None = None
) -> Path:
    """Write ``payload`` to ``path`` atomically: a reader sees the old file or the whole new one.

    The file carries a checksum of its content (see :mod:`trainer.integrity`).

    Args:
        path: The file to write.
        payload: A v1 payload (plain types and tensors only).
        file_mode: Permission bits of the file; None follows the umask (``0o666 & ~umask``).

    Raises:
        TypeError: The payload holds a type that would not load with ``weights_only=True``.
        CheckpointWriteError: The disk is full, the folder is not writable, ...; earlier files
            are unchanged.
    """
    path = Path(path)
    check_plain_types(payload)
    with translate_write_errors(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda f: save_with_checksum(dict(payload), f), mode=file_mode)
    return path


def read_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a checkpoint with ``weights_only=True`` onto the CPU, verifying its checksum.

    Files without a checksum load with a WARNING (once per file); legacy files are migrated.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        CheckpointError: The checksum does not match, the file is corrupt or truncated, holds a
            type safe loading refuses, or is not a v1 payload.
        ValueError: The file was written by a newer format version.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"No checkpoint at {path}; check the path or the checkpoint folder")
    payload, status = load_verified(path)
    if not isinstance(payload, dict):
        raise CheckpointError(f"Checkpoint {path} holds a {type(payload).__name__}, not a dict")
    if KEY_FORMAT_VERSION not in payload:  # a legacy file never has a checksum
        return migrate_legacy_payload(payload, source=str(path))
    if status is IntegrityStatus.NO_CHECKSUM:
        note_unverified(path)
    version = payload[KEY_FORMAT_VERSION]
    if type(version) is int and version > FORMAT_VERSION:
        raise ValueError(
            f"Checkpoint {path} has format_version {version}, but this library supports up to "
            f"format_version {FORMAT_VERSION}; upgrade trainer to a version that reads format "
            f"{version}"
        )
    if type(version) is not int or version != FORMAT_VERSION:
        raise CheckpointError(
            f"Checkpoint {path} has format_version {version!r}; expected {FORMAT_VERSION}"
        )
    missing = [k for k in V1_KEYS if k not in payload]
    unknown = sorted(str(k) for k in payload if k not in V1_KEYS)
    if missing or unknown:
        raise CheckpointError(
            f"Checkpoint {path} is not a valid format v1 payload: missing keys {missing}, unknown "
            f"keys {unknown}; it was not written by trainer.checkpoints, resume from another one"
        )
    return payload


_LEGACY_RENAMES = {"scaler_state_dict": KEY_SCALER, "amp_scaler_state_dict": KEY_SCALER}


def migrate_legacy_payload(
    legacy: Mapping[str, Any], *, source: str = "<payload>"
) -> dict[str, Any]:
    """Convert a payload without ``format_version`` to v1, logging one WARNING.

    Singular ``optimizer_state_dict``/``scheduler_state_dict`` become one-element lists; missing
    fields are filled (``resume_state`` from ``epoch``/``global_step`` at batch 0; others None).

    Raises:
        CheckpointError: The payload has no ``model_state_dict``.
    """
    old = dict(legacy)
    for name, new_name in _LEGACY_RENAMES.items():
        if name in old and new_name not in old:
            old[new_name] = old.pop(name)
    if KEY_MODEL not in old:
        raise CheckpointError(
            f"Checkpoint {source} has no format_version and no '{KEY_MODEL}' (keys: "
            f"{sorted(map(str, old))}); it is not a trainer checkpoint"
        )
    changes = ["format_version -> 1"]
    for plural in (KEY_OPTIMIZERS, KEY_SCHEDULERS):
        singular = plural.replace("_dicts", "_dict")
        if plural not in old:
            value = old.pop(singular, None)
            old[plural] = [] if value is None else [value]
            changes.append(f"{singular} -> {plural}")
    epoch, step = int(old.get(KEY_EPOCH, 0)), int(old.get(KEY_GLOBAL_STEP, 0))
    if KEY_RESUME not in old:
        old[KEY_RESUME] = ResumeState(epoch=epoch, global_step=step, save_reason="legacy").to_dict()
    defaults = {KEY_SAVE_TIMESTAMP: 0.0, KEY_EPOCH: epoch, KEY_GLOBAL_STEP: step}
    manager_state = old.get(KEY_DATALOADER_MANAGER)
    if isinstance(manager_state, dict):
        defaults[KEY_CHOICE_RNG] = manager_state.get(MANAGER_CHOICE_RNG_KEY)
    filled = [k for k in V1_KEYS[2:] if k not in old]
    payload = {k: old.get(k, defaults.get(k)) for k in V1_KEYS}
    payload[KEY_FORMAT_VERSION], payload[KEY_MULTI_DATALOADER_ONLY] = FORMAT_VERSION, True
    dropped = sorted(str(k) for k in old if k not in V1_KEYS)
    logger.warning(
        "Checkpoint %s is a legacy file (no format_version); migrated it to format v1 in memory "
        "(%s; filled %s; dropped %s). Re-save it to write format v1.",
        source,
        ", ".join(changes),
        filled or "nothing",
        dropped or "nothing",
    )
    return payload


def save_checkpoint(path: str | os.PathLike[str], trainer: TrainerLike) -> Path:
    """Write ``trainer.checkpoint_payload()`` to ``path`` atomically."""
    return write_checkpoint(path, trainer.checkpoint_payload())


def load_checkpoint(path: str | os.PathLike[str], trainer: TrainerLike) -> Any:
    """Read ``path`` and hand the payload to ``trainer.restore_from_payload``; return its result."""
    return trainer.restore_from_payload(read_checkpoint(path))


def __getattr__(name: str) -> Any:
    if name == "CheckpointManager":  # lazy: trainer.manager imports this module
        from trainer.manager import CheckpointManager

        return CheckpointManager
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
