"""Putting a checkpoint in place: the file, ``latest``, ``best``; then rotation and best copies.

:meth:`FolderCommitter.commit` is the critical part of a save: the file (written and fsynced under a
temp name, then renamed), ``latest.ckpt``, and when the metrics beat the best, ``best.json`` and
``best.ckpt`` (a symlink), in that order, then **one** fsync of the folder for all of them. A crash
before that fsync can lose the renames but never exposes a partial file: every file's content is
fsynced before its rename, and a ``latest`` whose target is missing is skipped on restore. What it
returns, :class:`Housekeeping`, is the rest, which nothing waits for: unlinking the files rotation
drops (no fsync needed: a lost unlink is redone by the next rotation) and, where symlinks are not
available, the copy of the new best file as ``best.ckpt`` (fsynced; ``best.json`` already names it,
so a copy cut short is repaired by :meth:`FolderCommitter.repair_best` when the next writer starts).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs

from trainer.checkpoints.atomic import copy_atomically, fsync_dir, point_link
from trainer.checkpoints.best import BestTracker
from trainer.checkpoints.errors import CheckpointWriteError, translate_write_errors
from trainer.checkpoints.folder import BEST_NAME, LATEST_NAME, list_checkpoint_files
from trainer.checkpoints.integrity import read_trailer
from trainer.checkpoints.io import write_checkpoint
from trainer.config import CheckpointConfig

__all__ = ["FolderCommitter", "Housekeeping"]

logger = logging.getLogger(__name__)


@attrs.frozen
class Housekeeping:
    """What is left after a commit: files rotation drops, and a best file to copy as ``best``."""

    remove: tuple[Path, ...] = ()
    best_copy: Path | None = None

    def __bool__(self) -> bool:
        return bool(self.remove) or self.best_copy is not None


def _same_content(a: Path, b: Path) -> bool:
    """Whether two checkpoint files carry the same checksum trailer (a cheap copy check)."""
    try:
        with a.open("rb") as fa, b.open("rb") as fb:
            ta = read_trailer(fa.fileno(), os.fstat(fa.fileno()).st_size)
            tb = read_trailer(fb.fileno(), os.fstat(fb.fileno()).st_size)
    except OSError:
        return False
    return ta is not None and ta == tb


@attrs.define(eq=False)
class FolderCommitter:
    """Commits files into ``config.root_dir`` (see the module docstring).

    Attributes:
        symlinks: Whether ``latest``/``best`` are symlinks; turns False for good when the folder
            refuses symlinks (they become copies).
    """

    config: CheckpointConfig
    tracker: BestTracker
    pattern: re.Pattern[str]
    symlinks: bool = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self.symlinks = self.config.use_symlinks

    @property
    def root(self) -> Path:
        return self.config.root_dir

    def commit(
        self,
        payload: Mapping[str, Any],
        path: Path,
        *,
        epoch: int,
        global_step: int,
        metrics: Mapping[str, Any] | None,
        check_types: bool = True,
    ) -> Housekeeping:
        """Write ``payload`` as ``path``, move ``latest`` (and ``best``), fsync the folder once.

        Raises:
            TypeError: The payload holds a type ``weights_only=True`` refuses (``check_types``).
            CheckpointWriteError: The disk is full or the folder is not writable; every earlier
                file and ``latest`` are unchanged.
        """
        write_checkpoint(
            path,
            payload,
            file_mode=self.config.file_mode,
            sync_folder=False,
            check_types=check_types,
        )
        self.point(LATEST_NAME, path, sync_folder=False)
        best_copy = None
        record = self.tracker.consider(path, metrics, epoch=epoch, global_step=global_step)
        if record is not None:
            self.tracker.write(record, sync_folder=False)
            if self.symlinks:
                self.point(BEST_NAME, path, sync_folder=False)
            else:
                best_copy = path  # a copy of the whole file: not on the critical path
            logger.info(
                "New best checkpoint %s (%s = %s)", path, record["monitor_metric"], record["value"]
            )
        fsync_dir(self.root)
        return Housekeeping(tuple(self.rotation(keep=path)), best_copy)

    def housekeep(self, work: Housekeeping) -> None:
        """Copy the new best file as ``best`` (without symlinks) and unlink rotated files."""
        if work.best_copy is not None and work.best_copy.is_file():
            self.point(BEST_NAME, work.best_copy)
        for path in work.remove:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            logger.debug("Rotated out %s", path)

    def point(self, name: str, target: Path, *, sync_folder: bool = True) -> None:
        """Make ``root/name`` refer to ``target`` atomically: a symlink, else a copy."""
        entry = self.root / name
        with translate_write_errors(entry, "latest/best entry"):
            if self.symlinks and not point_link(entry, target, sync_folder=sync_folder):
                self.symlinks = False
            if not self.symlinks:
                copy_atomically(target, entry, mode=self.config.file_mode, sync_folder=sync_folder)

    def rotation(self, *, keep: Path) -> list[Path]:
        """The files rotation drops now: all but the newest ``max_checkpoints``, ``keep`` and best."""
        limit = self.config.max_checkpoints
        if limit is None:
            return []
        files = list_checkpoint_files(self.root, self.pattern)
        protected = {keep.name, *(p.name for p in files[-limit:])}
        if self.tracker.record is not None:
            protected.add(self.tracker.record["file"])
        return [path for path in files if path.name not in protected]

    def repair_best(self) -> None:
        """Point ``best.ckpt`` at the file ``best.json`` names when a save died between the two."""
        record = self.tracker.record
        if record is None:
            return
        target, best = self.root / record["file"], self.root / BEST_NAME
        if best.is_symlink():
            stale = os.readlink(best) != record["file"]
        else:
            stale = not best.exists() or not _same_content(best, target)
        if target.is_file() and stale:
            try:
                self.point(BEST_NAME, target)
            except CheckpointWriteError as exc:  # best is a convenience: never block the writer
                logger.warning("Could not repair %s from %s: %s", best, self.tracker.path, exc)
