"""Atomic file operations: a reader sees the old file or the whole new one, never a part.

Temp files sit beside their target and carry the writer's pid and host in their name,
``.<target>.<pid>@<host tag>.<random>.tmp``, so the folder's lock holder can tell which ones are
provably orphaned (see :func:`parse_temp_name`). New files get ``0o666 & ~umask`` like any file
the process creates, or exactly ``mode`` when one is given.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import logging
import os
import re
import shutil
import socket
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import attrs

__all__ = [
    "TempName",
    "atomic_write",
    "copy_atomically",
    "fsync_dir",
    "host_tag",
    "parse_temp_name",
    "point_link",
    "temp_path",
]

logger = logging.getLogger(__name__)

_TEMP_NAME = re.compile(r"\.(?P<target>.+)\.(?P<pid>\d+)@(?P<host>[0-9a-f]{8})\.[0-9a-f]{8}\.tmp")


#: errno values meaning "this file system or user cannot make symlinks" (None: no errno given).
_NO_SYMLINKS = {None, errno.EPERM, errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP}


@functools.cache
def host_tag() -> str:
    """Eight hex digits naming this host (a hash of its host name) in temp file names."""
    return hashlib.sha1(socket.gethostname().encode()).hexdigest()[:8]


@attrs.frozen
class TempName:
    """What a temp file name says: the file it will become, and the pid and host that write it."""

    target: str
    pid: int
    host: str


def parse_temp_name(name: str) -> TempName | None:
    """The parts of a temp file name made by :func:`temp_path`, or None for any other name."""
    match = _TEMP_NAME.fullmatch(name)
    if match is None:
        return None
    return TempName(match["target"], int(match["pid"]), match["host"])


def temp_path(path: Path) -> Path:
    """A fresh temp file name beside ``path`` carrying this process's pid and host tag."""
    return path.with_name(f".{path.name}.{os.getpid()}@{host_tag()}.{os.urandom(4).hex()}.tmp")


def fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):  # not supported on every platform (e.g. Windows)
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _create(tmp: Path, mode: int | None) -> int:
    flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)  # read: hashing
    flags |= getattr(os, "O_BINARY", 0)
    fd = os.open(tmp, flags, 0o666 if mode is None else 0o600)
    if mode is not None:  # exactly ``mode``, whatever the umask
        try:
            os.fchmod(fd, mode)
        except AttributeError:  # pragma: no cover - Windows has no fchmod
            os.chmod(tmp, mode)
    return fd


def atomic_write(
    path: Path,
    write: Callable[[BinaryIO], object],
    *,
    mode: int | None = None,
    sync_folder: bool = True,
) -> None:
    """Call ``write`` on a temp file beside ``path``; flush, fsync, ``os.replace``, fsync folder.

    The temp file is removed when anything fails (the exception propagates unchanged).

    Args:
        path: The file to create or replace.
        write: Writes the content to the binary file object it gets (its descriptor is open for
            reading too).
        mode: Permission bits of the new file; None follows the umask (``0o666 & ~umask``).
        sync_folder: Fsync the folder after the rename; a caller renaming several entries passes
            False and calls :func:`fsync_dir` once after the last.
    """
    tmp = temp_path(path)
    fd = _create(tmp, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    if sync_folder:
        fsync_dir(path.parent)


def copy_atomically(
    source: Path, destination: Path, *, mode: int | None = None, sync_folder: bool = True
) -> None:
    """Copy ``source`` to ``destination`` through a temp file and ``os.replace``."""
    with source.open("rb") as src:
        atomic_write(
            destination,
            lambda dst: shutil.copyfileobj(src, dst, 1 << 20),
            mode=mode,
            sync_folder=sync_folder,
        )


def point_link(entry: Path, target: Path, *, sync_folder: bool = True) -> bool:
    """Atomically make ``entry`` a relative symlink to ``target``; False (and a WARNING) if impossible."""
    tmp = temp_path(entry)
    try:
        os.symlink(target.name, tmp)
        os.replace(tmp, entry)
    except (OSError, NotImplementedError) as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(exc, OSError) and exc.errno not in _NO_SYMLINKS:
            raise  # e.g. a full disk or a read-only folder: copies would fail as well
        logger.warning(
            "Cannot create symlinks in %s (%s); latest/best are atomic copies from now on "
            "(set use_symlinks=False to skip trying)",
            entry.parent,
            exc,
        )
        return False
    if sync_folder:
        fsync_dir(entry.parent)
    return True
