"""One writer per checkpoint folder: an exclusive advisory lock on ``<folder>/.lock``.

The lock is ``flock(LOCK_EX | LOCK_NB)`` on ``.lock`` (``msvcrt.locking`` on Windows). The kernel
releases it when the holder's process ends, however it ends, so a crash never leaves the folder
locked. While held, the file names the holder (pid, host, start time, command); a clean release
empties it, so a holder found in the file by the next writer ended without releasing (killed or
crashed): that writer takes over with a WARNING. The file itself stays (removing a lock file races
with the next writer opening it).

Forked children (DataLoader workers) close their copy of the descriptor at fork, so the lock never
outlives the process that took it. The lock is reentrant within one :class:`FolderLock`: each
:meth:`~FolderLock.acquire` needs one :meth:`~FolderLock.release`. A second ``FolderLock`` on the
same folder, in this process or another, is refused.

Example:
    >>> lock = FolderLock(Path("checkpoints"))   # doctest: +SKIP
    >>> with lock:                                # doctest: +SKIP
    ...     ...  # write into the folder
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import sys
import threading
import time
import weakref
from pathlib import Path
from typing import Any

import attrs

from trainer.checkpoints.errors import CheckpointLockedError, translate_write_errors

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]
    import msvcrt

__all__ = ["LOCK_NAME", "FolderLock", "pid_alive", "read_holder"]

logger = logging.getLogger(__name__)

LOCK_NAME = ".lock"

_open_locks: weakref.WeakSet[FolderLock] = weakref.WeakSet()


def _forget_in_child() -> None:
    """After fork: drop the child's copies of held lock descriptors (the parent keeps the lock)."""
    for lock in list(_open_locks):
        lock._forget()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_in_child)


def pid_alive(pid: int) -> bool:
    """Whether a process ``pid`` exists on this host (a zombie or another user's counts)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def _try_lock(fd: int) -> bool:
    try:
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        else:  # pragma: no cover - Windows
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
    except (BlockingIOError, PermissionError):
        return False
    except OSError as exc:  # pragma: no cover - Windows reports EDEADLOCK/EACCES
        if fcntl is None:
            return False
        raise exc
    return True


def _unlock(fd: int) -> None:
    if fcntl is not None:
        fcntl.flock(fd, fcntl.LOCK_UN)
    else:  # pragma: no cover - Windows
        os.lseek(fd, 0, os.SEEK_SET)
        msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)


def _parse_holder(data: bytes) -> dict[str, Any] | None:
    try:
        holder = json.loads(data.decode())
    except (UnicodeDecodeError, ValueError):
        return None
    return holder if isinstance(holder, dict) else None


def read_holder(folder: Path) -> dict[str, Any] | None:
    """Who holds (or, for a dead holder, last held) the folder's lock, from ``.lock``; else None."""
    try:
        return _parse_holder((folder / LOCK_NAME).read_bytes())
    except OSError:
        return None


def _describe(holder: dict[str, Any] | None) -> str:
    if holder is None:
        return "an unknown process (its lock file names no holder yet)"
    pid, host = holder.get("pid"), holder.get("host")
    text = f"pid {pid} on host {host} since {holder.get('since')} ({holder.get('command')!r})"
    if host == socket.gethostname() and isinstance(pid, int):
        if pid == os.getpid():
            text += ": this process, through another CheckpointManager or GenericTrainer"
        elif not pid_alive(pid):
            text += ": that process has ended, but a process it started still holds the lock"
    return text


@attrs.define(eq=False)
class FolderLock:
    """The exclusive writer lock of ``folder`` (see the module docstring).

    Args:
        folder: The checkpoint folder; created on the first :meth:`acquire`.
        mode: Permission bits for a new lock file; None follows the umask.
    """

    folder: Path = attrs.field(converter=Path)
    mode: int | None = None
    _fd: int | None = attrs.field(init=False, default=None)
    _depth: int = attrs.field(init=False, default=0)
    _mutex: threading.Lock = attrs.field(init=False, factory=threading.Lock)

    @property
    def path(self) -> Path:
        return self.folder / LOCK_NAME

    @property
    def held(self) -> bool:
        """Whether this object holds the lock."""
        return self._depth > 0

    def acquire(self) -> bool:
        """Take the lock (or count one more hold); True when this call took it afresh.

        Raises:
            CheckpointLockedError: Another writer holds it; the message names the holder.
            CheckpointWriteError: The folder or its lock file cannot be created.
        """
        with self._mutex:
            if self._depth > 0:
                self._depth += 1
                return False
            with translate_write_errors(self.path, "writer lock file"):
                self.folder.mkdir(parents=True, exist_ok=True)
                flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0)
                fd = os.open(self.path, flags, 0o666 if self.mode is None else self.mode)
            try:
                with translate_write_errors(self.path, "writer lock file"):
                    locked = _try_lock(fd)  # e.g. ENOLCK: a file system without locks
            except BaseException:
                os.close(fd)
                raise
            if not locked:
                holder = _parse_holder(os.pread(fd, 4096, 0)) if fcntl is not None else None
                os.close(fd)
                raise CheckpointLockedError(
                    f"Checkpoint folder {self.folder} is locked by another writer: "
                    f"{_describe(holder)}. One folder takes one writer; wait for that run to end, "
                    "stop it, or give this one another CheckpointConfig.root_dir (reading, e.g. "
                    "load_checkpoint, inspect or restoring for evaluation, needs no lock)"
                )
            try:
                self._take_over(fd)
            except BaseException:
                _unlock(fd)
                os.close(fd)
                raise
            self._fd, self._depth = fd, 1
            _open_locks.add(self)
            return True

    def _take_over(self, fd: int) -> None:
        previous = _parse_holder(os.pread(fd, 4096, 0)) if fcntl is not None else None
        if previous is not None:
            logger.warning(
                "Taking over the lock of %s from pid %s on host %s (since %s), which ended "
                "without releasing it (killed or crashed)",
                self.folder,
                previous.get("pid"),
                previous.get("host"),
                previous.get("since"),
            )
        holder = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "since": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "since_unix": time.time(),
            "command": " ".join(sys.argv)[:200],
        }
        with translate_write_errors(self.path, "writer lock file"):
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(holder).encode(), 0)

    def release(self) -> None:
        """Give back one hold; the last one empties the lock file and unlocks it.

        Raises:
            RuntimeError: This object does not hold the lock.
        """
        with self._mutex:
            if self._depth == 0:
                raise RuntimeError(
                    f"release() of {self.folder}'s lock without a matching acquire(); "
                    "call acquire() first (or use it as a context manager)"
                )
            self._depth -= 1
            if self._depth > 0 or self._fd is None:
                return
            fd, self._fd = self._fd, None
            _open_locks.discard(self)
            try:
                if fcntl is not None:
                    os.ftruncate(
                        fd, 0
                    )  # emptied before unlocking: the next writer sees a clean release
            except OSError as exc:
                logger.debug("Could not empty %s: %s", self.path, exc)
            finally:
                _unlock(fd)
                os.close(fd)

    def __del__(self) -> None:  # a holder dropped without release(): unlock as release() would
        fd = getattr(self, "_fd", None)
        if fd is None:
            return
        object.__setattr__(self, "_fd", None)  # no attrs hooks: this may run at interpreter exit
        with contextlib.suppress(Exception):
            os.ftruncate(fd, 0)
            _unlock(fd)
        with contextlib.suppress(Exception):
            os.close(fd)

    def _forget(self) -> None:
        fd, self._fd, self._depth = self._fd, None, 0
        self._mutex = threading.Lock()
        if fd is not None:
            os.close(fd)  # the child's copy only: the parent's descriptor keeps the lock

    def __enter__(self) -> FolderLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
