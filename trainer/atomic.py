"""Atomic file operations: a reader sees the old file or the whole new one, never a part."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

__all__ = ["atomic_write", "copy_atomically", "fsync_dir", "point_link"]

logger = logging.getLogger(__name__)


def fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):  # not supported on every platform (e.g. Windows)
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """Call ``write`` on a temp file beside ``path``; flush, fsync, ``os.replace``, fsync folder."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
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
    fsync_dir(path.parent)


def copy_atomically(source: Path, destination: Path) -> None:
    """Copy ``source`` to ``destination`` through a temp file and ``os.replace``."""
    with source.open("rb") as src:
        atomic_write(destination, lambda dst: shutil.copyfileobj(src, dst, 1 << 20))


def point_link(entry: Path, target: Path) -> bool:
    """Atomically make ``entry`` a relative symlink to ``target``; False (and a WARNING) if impossible."""
    tmp = entry.with_name(f".{entry.name}.{os.getpid()}.{os.urandom(4).hex()}.tmp")
    try:
        os.symlink(target.name, tmp)
        os.replace(tmp, entry)
    except (OSError, NotImplementedError) as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        logger.warning(
            "Cannot create symlinks in %s (%s); latest/best are atomic copies from now on "
            "(set use_symlinks=False to skip trying)",
            entry.parent,
            exc,
        )
        return False
    fsync_dir(entry.parent)
    return True
