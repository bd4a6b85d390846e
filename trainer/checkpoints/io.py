"""Reading and writing one checkpoint file: atomic, checksummed, loaded with ``weights_only=True``.

Every file carries a CRC-32 of all its bytes (:mod:`trainer.checkpoints.integrity`), verified on
every read; a file without one (older, or from plain ``torch.save``) loads with a WARNING once. Files
are read memory-mapped (:mod:`trainer.checkpoints.loading`): the model and optimizer tensors of a
payload are views of the file's pages, every other tensor is copied out, so nothing small keeps the
file mapped. New files get ``0o666 & ~umask`` (0o644 under umask 022) like any file, or exactly
``file_mode`` when given.

Example:
    >>> save_checkpoint(Path("run/step.ckpt"), trainer)   # doctest: +SKIP
    >>> load_checkpoint(Path("run/step.ckpt"), trainer)   # doctest: +SKIP
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

import attrs
import torch

from trainer.checkpoints.atomic import atomic_write
from trainer.checkpoints.errors import CheckpointError, translate_write_errors
from trainer.checkpoints.format import (
    KEY_CONFIG_SNAPSHOT,
    KEY_FORMAT_VERSION,
    KEY_METRICS_HISTORY,
    KEY_MODEL,
    KEY_OPTIMIZERS,
    CheckpointPayload,
)
from trainer.checkpoints.integrity import IntegrityStatus, save_with_checksum
from trainer.checkpoints.legacy import migrate_legacy_payload
from trainer.checkpoints.loading import VerifiedLoad, note_unverified, open_verified

__all__ = [
    "PendingCheckpoint",
    "TrainerLike",
    "check_plain_types",
    "load_checkpoint",
    "open_checkpoint",
    "read_checkpoint",
    "save_checkpoint",
    "write_checkpoint",
]


class TrainerLike(Protocol):
    """What :func:`save_checkpoint` / :func:`load_checkpoint` need from a trainer."""

    def checkpoint_payload(self) -> dict[str, Any]: ...

    def restore_from_payload(self, payload: dict[str, Any]) -> Any: ...


_SCALARS = frozenset({bool, int, float, str, type(None), torch.dtype, torch.device})
_KEY_TYPES = frozenset({str, int, float, bool, type(None)})
_LEAVES = _SCALARS | {torch.Tensor, torch.nn.Parameter}
_CONTAINER_MODULES = ("builtins", "collections")


def _refuse(obj: Any, where: str) -> TypeError:
    return TypeError(
        f"{where} is a {type(obj).__module__}.{type(obj).__qualname__}, which "
        "torch.load(weights_only=True) cannot load; state must hold only int, float, bool, str, "
        "None, lists, tuples, dicts and tensors (convert numpy arrays with torch.from_numpy, "
        "enums with .value)"
    )


def check_plain_types(obj: Any, where: str = "payload") -> None:
    """Raise when ``obj`` holds anything ``torch.load(weights_only=True)`` would refuse.

    Allowed: bool, int, float, str, None, tensors, torch dtypes and devices, and dicts, lists
    and tuples of those (DESIGN.md section 3). The cost is proportional to the number of
    containers: a container whose elements are all leaves (the 625 ints of Python's RNG state, a
    model's state dict of tensors) is checked in one pass at C speed, and tensors' contents are
    never looked at.

    Raises:
        TypeError: Naming the first offending value's location and type.
    """
    kind = type(obj)
    if kind in _LEAVES or isinstance(obj, torch.Tensor):
        return
    if not isinstance(obj, (dict, list, tuple)) or kind.__module__ not in _CONTAINER_MODULES:
        raise _refuse(obj, where)
    if isinstance(obj, dict):
        if not set(map(type, obj)) <= _KEY_TYPES:
            key = next(k for k in obj if type(k) not in _KEY_TYPES)
            raise TypeError(
                f"{where} has a key of type {type(key).__name__} ({key!r}); use str or int keys"
            )
        if set(map(type, obj.values())) <= _LEAVES:
            return
        items: Any = obj.items()
    else:
        if set(map(type, obj)) <= _LEAVES:
            return
        items = enumerate(obj)
    for key, value in items:
        if type(value) not in _LEAVES:
            check_plain_types(value, f"{where}[{key!r}]")


def write_checkpoint(
    path: str | os.PathLike[str],
    payload: Mapping[str, Any],
    *,
    file_mode: int | None = None,
    sync_folder: bool = True,
    check_types: bool = True,
) -> Path:
    """Write ``payload`` to ``path`` atomically: a reader sees the old file or the whole new one.

    The file carries a checksum of its content (see :mod:`trainer.checkpoints.integrity`).

    Args:
        path: The file to write.
        payload: A v1 payload (plain types and tensors only).
        file_mode: Permission bits of the file; None follows the umask (``0o666 & ~umask``).
        sync_folder: Fsync the folder after the rename (a caller that renames more entries
            fsyncs it once for all of them).
        check_types: Check the payload with :func:`check_plain_types` (False: the caller did).

    Raises:
        TypeError: The payload holds a type that would not load with ``weights_only=True``.
        CheckpointWriteError: The disk is full, the folder is not writable, ...; earlier files
            are unchanged.
    """
    path = Path(path)
    if check_types:
        check_plain_types(payload)
    with translate_write_errors(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(
            path,
            lambda f: save_with_checksum(dict(payload), f),
            mode=file_mode,
            sync_folder=sync_folder,
        )
    return path


_MAPPED_KEYS = (KEY_MODEL, KEY_OPTIMIZERS)  # copied by the restore anyway (load_state_dict)
_UNWALKED_KEYS = (*_MAPPED_KEYS, KEY_METRICS_HISTORY, KEY_CONFIG_SNAPSHOT)  # no tensors


def _owned(obj: Any) -> Any:
    """``obj`` with every tensor copied out of the file's memory map (containers rebuilt where
    they hold one; a flat tuple or list of plain values, such as the 625 ints of Python's RNG
    state, is kept as it is)."""
    if isinstance(obj, torch.Tensor):
        return obj.clone()
    kind = type(obj)
    if kind is dict:
        return {k: _owned(v) for k, v in obj.items()}
    if kind is list or kind is tuple:
        if all(type(v) in _SCALARS for v in obj):
            return obj
        return kind(_owned(v) for v in obj)
    return obj


@attrs.define(eq=False)
class PendingCheckpoint:
    """A checkpoint read while its checksum is still being checked (see :func:`open_checkpoint`).

    Attributes:
        path: The file read.
        payload: The v1 payload (migrated when the file is a legacy one).
    """

    path: Path
    payload: dict[str, Any]
    _load: VerifiedLoad
    _legacy: bool = False

    def verify(self) -> None:
        """Wait for the checksum check; raise :class:`CheckpointError` if the file is damaged."""
        status = self._load.result()
        if status is IntegrityStatus.NO_CHECKSUM and not self._legacy:  # legacy: warned already
            note_unverified(self.path)


def _structure(path: Path, payload: Any) -> dict[str, Any]:
    if not isinstance(payload, dict):
        raise CheckpointError(f"Checkpoint {path} holds a {type(payload).__name__}, not a dict")
    if KEY_FORMAT_VERSION not in payload:  # a legacy file never has a checksum
        return migrate_legacy_payload(payload, source=str(path))
    CheckpointPayload.from_dict(payload, source=str(path))  # strict: version and keys
    for key in payload:
        if key not in _UNWALKED_KEYS:
            payload[key] = _owned(payload[key])
    return payload


def open_checkpoint(path: str | os.PathLike[str]) -> PendingCheckpoint:
    """Read a checkpoint (memory-mapped, ``weights_only=True``) and start checking its checksum.

    For a restore that copies the tensors while the check runs: use ``payload``, then call
    :meth:`PendingCheckpoint.verify` before training on anything taken from it (the manager's
    :meth:`~trainer.checkpoints.CheckpointManager.restore_from_checkpoint` does this).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        CheckpointError: The file does not load or is not a v1 payload (a damaged file is named as
            damaged), or, from :meth:`~PendingCheckpoint.verify`, its checksum does not match.
        ValueError: The file was written by a newer format version.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"No checkpoint at {path}; check the path or the checkpoint folder")
    pending = open_verified(path)
    legacy = isinstance(pending.payload, dict) and KEY_FORMAT_VERSION not in pending.payload
    try:
        payload = _structure(path, pending.payload)
    except BaseException:
        pending.result()  # a damaged file is reported as damaged, not by its symptom
        raise
    return PendingCheckpoint(path, payload, pending, legacy)


def read_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a checkpoint with ``weights_only=True`` onto the CPU, verifying its checksum.

    The file is memory-mapped: model and optimizer tensors are views of its pages (copy-on-write),
    so it is read once and never held twice in memory. Files without a checksum load with a
    WARNING (once per file); legacy files are migrated.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        CheckpointError: The checksum does not match, the file is corrupt or truncated, holds a
            type safe loading refuses, or is not a v1 payload.
        ValueError: The file was written by a newer format version.
    """
    pending = open_checkpoint(path)
    pending.verify()
    return pending.payload


def save_checkpoint(path: str | os.PathLike[str], trainer: TrainerLike) -> Path:
    """Write ``trainer.checkpoint_payload()`` to ``path`` atomically."""
    return write_checkpoint(path, trainer.checkpoint_payload())


def load_checkpoint(path: str | os.PathLike[str], trainer: TrainerLike) -> Any:
    """Read ``path`` and hand the payload to ``trainer.restore_from_payload``; return its result."""
    return trainer.restore_from_payload(read_checkpoint(path))
