"""Reading and writing one checkpoint file: atomic, checksummed, loaded with ``weights_only=True``.

Every file carries a CRC-32 of all its bytes (:mod:`trainer.checkpoints.integrity`), verified on
every read; a file without one (older, or from plain ``torch.save``) loads with a WARNING once. New
files get ``0o666 & ~umask`` (0o644 under umask 022) like any file, or exactly ``file_mode`` when
given.

Example:
    >>> save_checkpoint(Path("run/step.ckpt"), trainer)   # doctest: +SKIP
    >>> load_checkpoint(Path("run/step.ckpt"), trainer)   # doctest: +SKIP
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

import torch

from trainer.checkpoints.atomic import atomic_write
from trainer.checkpoints.errors import CheckpointError, translate_write_errors
from trainer.checkpoints.format import KEY_FORMAT_VERSION, CheckpointPayload
from trainer.checkpoints.integrity import (
    IntegrityStatus,
    load_verified,
    note_unverified,
    save_with_checksum,
)
from trainer.checkpoints.legacy import migrate_legacy_payload

__all__ = [
    "TrainerLike",
    "check_plain_types",
    "load_checkpoint",
    "read_checkpoint",
    "save_checkpoint",
    "write_checkpoint",
]


class TrainerLike(Protocol):
    """What :func:`save_checkpoint` / :func:`load_checkpoint` need from a trainer."""

    def checkpoint_payload(self) -> dict[str, Any]: ...

    def restore_from_payload(self, payload: dict[str, Any]) -> Any: ...


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

    The file carries a checksum of its content (see :mod:`trainer.checkpoints.integrity`).

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
    CheckpointPayload.from_dict(payload, source=str(path))  # strict: version and keys
    return payload


def save_checkpoint(path: str | os.PathLike[str], trainer: TrainerLike) -> Path:
    """Write ``trainer.checkpoint_payload()`` to ``path`` atomically."""
    return write_checkpoint(path, trainer.checkpoint_payload())


def load_checkpoint(path: str | os.PathLike[str], trainer: TrainerLike) -> Any:
    """Read ``path`` and hand the payload to ``trainer.restore_from_payload``; return its result."""
    return trainer.restore_from_payload(read_checkpoint(path))
