"""The errors of the checkpoint layer: unusable files, a folder locked by another writer, failed saves.

``CheckpointError`` (a ``RuntimeError``) means a file cannot be used; ``CheckpointLockedError`` is
one of them, raised when another writer holds the folder; ``CheckpointWriteError`` (an ``OSError``,
``errno`` kept) means a save failed for a reason of the file system; ``SnapshotChangedError``
means an asynchronous save was dropped because a tensor it deferred copying changed first.
"""

from __future__ import annotations

import contextlib
import errno
from collections.abc import Iterator
from pathlib import Path

__all__ = [
    "CheckpointError",
    "CheckpointLockedError",
    "CheckpointWriteError",
    "SnapshotChangedError",
]


class CheckpointError(RuntimeError):
    """A checkpoint file cannot be used: unreadable, corrupt, truncated or malformed."""


class CheckpointLockedError(CheckpointError):
    """Another writer holds the checkpoint folder's lock (its pid, host and start are in the text)."""


class CheckpointWriteError(OSError):
    """A save failed for a reason of the file system (full disk, permissions); ``errno`` is kept.

    The message names the folder, the cause and what to do. Earlier files and ``latest`` are
    unchanged: every write goes to a temp file that is removed when the write fails.
    """


class SnapshotChangedError(RuntimeError):
    """An asynchronous save was not written: a tensor whose copy it deferred (see
    ``CheckpointConfig.defer_snapshot``) changed in place before the copy; the message names it."""


_WRITE_HINTS = {
    errno.ENOSPC: "free space on that disk or set CheckpointConfig.root_dir to a folder on a disk "
    "with room",
    errno.EDQUOT: "free space within your quota or set CheckpointConfig.root_dir elsewhere",
    errno.EACCES: "make the folder writable by this user or set CheckpointConfig.root_dir to one "
    "that is",
    errno.EPERM: "make the folder writable by this user or set CheckpointConfig.root_dir to one "
    "that is",
    errno.EROFS: "the file system is read-only: set CheckpointConfig.root_dir to a writable folder",
}


def _os_error_in(exc: BaseException) -> OSError | None:
    """The OSError behind ``exc`` (torch.save hides it as the context of its own RuntimeError)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, OSError) and current.errno is not None:
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


@contextlib.contextmanager
def translate_write_errors(path: Path, what: str = "checkpoint") -> Iterator[None]:
    """Turn a file-system error while writing ``path`` (a ``what``) into CheckpointWriteError."""
    try:
        yield
    except CheckpointWriteError:
        raise
    except Exception as exc:
        cause = _os_error_in(exc)
        if cause is None or cause.errno is None:
            raise
        name = errno.errorcode.get(cause.errno, str(cause.errno))
        hint = _WRITE_HINTS.get(cause.errno, "check the folder and its disk")
        raise CheckpointWriteError(
            cause.errno,
            f"Cannot save {path.name} ({what}) in {path.parent}: {cause.strerror or cause} ({name}). "
            f"Earlier checkpoints and latest.ckpt are unchanged; {hint}",
        ) from cause
