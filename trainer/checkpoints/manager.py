"""CheckpointManager: checkpoint paths, ``latest``/``best`` entries, rotation, restore, one writer.

Folder layout (``config.root_dir``)::

    epoch=0002-step=000150.ckpt   # one file per save (config.filename_template)
    latest.ckpt                   # symlink to (or atomic copy of) the newest file
    best.ckpt                     # symlink to (or copy of) the best file by monitor_metric
    best.json                     # the best value, so it survives restarts
    .lock                         # the writer lock; names the holder while one holds it

Guarantees: files, links and ``best.json`` are replaced atomically, in the order file, ``latest``,
``best.json``, ``best``: a kill at any moment leaves ``latest`` on a complete file and ``best`` at
most one save behind (the next writer repairs it from ``best.json``). Rotation keeps the newest
``max_checkpoints`` files by global step plus the best. Every file carries a checksum, verified on
every read.

Restore without a path takes ``latest`` (the commit point of the last save) when it is valid, else
the newest valid file by global step, then epoch, as parsed from the file name (never by mtime),
skipping damaged files with a WARNING; a ``latest`` that points outside ``root_dir``, at itself or
at a missing file is skipped with a WARNING. It raises when no file is valid.

One writer per folder: writing holds an exclusive lock on ``root_dir/.lock`` (:mod:`trainer.checkpoints.lock`).
A save takes it for its own duration unless the manager holds it already; a trainer holds it for a
whole run with :meth:`CheckpointManager.acquire`/:meth:`~CheckpointManager.release` or ``with
manager.writer():``. A second writer gets :class:`~trainer.checkpoints.errors.CheckpointLockedError` naming the
holder. Taking the lock removes temp files provably orphaned (written on this host by a process no
longer running, or by this one) and repairs ``best.ckpt``. Reading (constructing a manager,
listing, :meth:`~CheckpointManager.find_latest_valid`, restoring) takes no lock and never writes or
deletes anything.

Example:
    >>> manager = CheckpointManager(CheckpointConfig(root_dir=tmp, max_checkpoints=2))  # doctest: +SKIP
    >>> with manager.writer():                                                        # doctest: +SKIP
    ...     manager.save_checkpoint(model=m, optimizers=[o], epoch=0, global_step=10)
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import socket
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
import torch

from trainer.checkpoints.atomic import copy_atomically, point_link
from trainer.checkpoints.best import BestTracker
from trainer.checkpoints.errors import CheckpointWriteError, translate_write_errors
from trainer.checkpoints.folder import (
    BEST_NAME,
    LATEST_NAME,
    RUNS_NAME,
    list_checkpoint_files,
    load_newest_valid,
    remove_orphaned_temp_files,
    template_regex,
)
from trainer.checkpoints.format import KEY_EPOCH, KEY_GLOBAL_STEP, apply_payload, build_payload
from trainer.checkpoints.io import read_checkpoint, write_checkpoint
from trainer.checkpoints.lock import FolderLock
from trainer.config import CheckpointConfig
from trainer.precision import Precision
from trainer.resume import ResumeState
from trainer.rng import capture_rng_states

__all__ = ["CheckpointManager"]

logger = logging.getLogger(__name__)


def _scaler_state(scaler: Any) -> dict[str, Any] | None:
    if scaler is None or isinstance(scaler, Mapping):
        return None if scaler is None else dict(scaler)
    if isinstance(scaler, torch.amp.GradScaler) and not scaler.is_enabled():
        return None
    return scaler.state_dict()


@attrs.define(eq=False)
class CheckpointManager:
    """Owns a checkpoint folder: writes, ``latest``/``best``, rotation, best tracking, restore.

    Args:
        config: Folder, file names, rotation, best-tracking and permission settings.

    Attributes:
    """

    config: CheckpointConfig = attrs.field(validator=attrs.validators.instance_of(CheckpointConfig))
    _tracker: BestTracker = attrs.field(init=False)
    _lock: FolderLock = attrs.field(init=False)
    _save_mutex: threading.Lock = attrs.field(init=False, factory=threading.Lock)
    _symlinks: bool = attrs.field(init=False, default=True)
    _pattern: re.Pattern[str] = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self._symlinks = self.config.use_symlinks
        self._pattern = template_regex(self.config.filename_template)
        self._tracker = BestTracker(self.config)
        self._lock = FolderLock(self.root_dir, mode=self.config.file_mode)
        if self.root_dir.is_dir():
            self._tracker.load()

    @property
    def root_dir(self) -> Path:
        """The checkpoint folder."""
        return self.config.root_dir

    # -- the writer lock --------------------------------------------------------------------

    def acquire(self) -> None:
        """Become the folder's one writer until :meth:`release` (reentrant: calls nest).

        The first hold removes provably orphaned temp files, re-reads ``best.json`` and repairs
        ``best.ckpt``.

        Raises:
            CheckpointLockedError: Another writer (process, manager or trainer) holds the folder.
            CheckpointWriteError: The folder or its lock file cannot be created.
        """
        if not self._lock.acquire():
            return
        try:
            remove_orphaned_temp_files(self.root_dir)
            self._tracker.load()
            self._repair_best_link()
        except BaseException:
            self._lock.release()
            raise

    def release(self) -> None:
        """Give back one :meth:`acquire`; the last one unlocks the folder."""
        self._lock.release()

    @contextlib.contextmanager
    def writer(self) -> Iterator[CheckpointManager]:
        """Hold the writer lock for the block: ``with manager.writer(): ...``."""
        self.acquire()
        try:
            yield self
        finally:
            self.release()

    @property
    def holds_lock(self) -> bool:
        """Whether this manager holds the folder's writer lock now."""
        return self._lock.held

    # -- paths ------------------------------------------------------------------------------

    def path_for(self, epoch: int, global_step: int) -> Path:
        """The file a save at (``epoch``, ``global_step``) writes."""
        name = self.config.filename_template.format(epoch=epoch, global_step=global_step)
        return self.root_dir / name

    def latest_path(self) -> Path | None:
        """``latest.ckpt`` when it exists (a dangling link counts as missing), else None."""
        path = self.root_dir / LATEST_NAME
        return path if path.exists() else None

    def best_path(self) -> Path | None:
        """``best.ckpt`` when it exists, else None."""
        path = self.root_dir / BEST_NAME
        return path if path.exists() else None

    def list_checkpoints(self) -> list[Path]:
        """This manager's checkpoint files (per the template), oldest first by step, then epoch."""
        return list_checkpoint_files(self.root_dir, self._pattern)

    def has_checkpoints(self) -> bool:
        """Whether the folder holds ``latest.ckpt`` or any checkpoint file (valid or not)."""
        return os.path.lexists(self.root_dir / LATEST_NAME) or bool(self.list_checkpoints())

    def record_run_start(self, state: ResumeState, *, world_size: int = 1) -> None:
        """Append where a ``fit()`` starts to ``runs.jsonl`` (``python -m trainer plot`` marks the
        resumes); a line of JSON per start, written by the lock holder."""
        line = {
            "global_step": state.global_step,
            "epoch": state.epoch,
            "time": time.time(),
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "world_size": world_size,
        }
        self.root_dir.mkdir(parents=True, exist_ok=True)
        with (self.root_dir / RUNS_NAME).open("a") as f:
            f.write(json.dumps(line) + "\n")

    # -- saving -----------------------------------------------------------------------------

    def save_checkpoint(
        self,
        model: torch.nn.Module | None = None,
        optimizers: Sequence[torch.optim.Optimizer] | None = None,
        schedulers: Sequence[Any] | None = None,
        scaler: Precision | torch.amp.GradScaler | Mapping[str, Any] | None = None,
        resume_state: ResumeState | Mapping[str, Any] | None = None,
        epoch: int | None = None,
        global_step: int | None = None,
        metrics: Mapping[str, Any] | None = None,
        *,
        dataloader_manager_state: Mapping[str, Any] | None = None,
        rng_states: Mapping[str, Any] | None = None,
        metrics_history: Mapping[str, Any] | None = None,
        config_snapshot: Mapping[str, Any] | None = None,
    ) -> Path:
        """Build a v1 payload from these parts and write it via :meth:`write_payload`.

        ``rng_states`` None captures the global RNGs now. ``resume_state`` None records the start
        of ``epoch``. ``metrics`` decides whether this file becomes the best one. A payload built
        elsewhere (:func:`~trainer.checkpoints.build_payload`) goes to :meth:`write_payload`.

        Returns:
            The written file.
        """
        if model is None or epoch is None or global_step is None:
            raise TypeError(
                "save_checkpoint needs model=, epoch= and global_step= (got "
                f"model={type(model).__name__}, epoch={epoch!r}, global_step={global_step!r}); "
                "to write a payload built with trainer.checkpoints.build_payload, call "
                "write_payload(payload, epoch=..., global_step=..., metrics=...)"
            )
        payload = build_payload(
            model=model,
            optimizers=optimizers,
            schedulers=schedulers,
            scaler_state=_scaler_state(scaler),
            rng_states=capture_rng_states() if rng_states is None else rng_states,
            dataloader_manager_state=dataloader_manager_state,
            resume_state=ResumeState(epoch=epoch, global_step=global_step)
            if resume_state is None
            else resume_state,
            epoch=epoch,
            global_step=global_step,
            metrics_history=metrics_history,
            config_snapshot=config_snapshot,
        )
        return self.write_payload(payload, epoch=epoch, global_step=global_step, metrics=metrics)

    def write_payload(
        self,
        payload: Mapping[str, Any],
        *,
        epoch: int,
        global_step: int,
        metrics: Mapping[str, Any] | None,
    ) -> Path:
        """Write ``payload`` atomically, swap ``latest``, update best, rotate. The one write path.

        Holds the writer lock for the save (see :meth:`acquire`).

        Raises:
            CheckpointLockedError: Another writer holds the folder.
            CheckpointWriteError: The disk is full or the folder is not writable; every earlier
                file and ``latest`` are unchanged.
        """
        with self.writer(), self._save_mutex:
            path = write_checkpoint(
                self.path_for(epoch, global_step), payload, file_mode=self.config.file_mode
            )
            self._point(LATEST_NAME, path)
            record = self._tracker.consider(path, metrics, epoch=epoch, global_step=global_step)
            if record is not None:
                self._tracker.write(record)
                self._point(BEST_NAME, path)
                logger.info(
                    "New best checkpoint %s (%s = %s)",
                    path,
                    record["monitor_metric"],
                    record["value"],
                )
            self._rotate(keep=path)
        logger.info("Saved checkpoint %s (epoch %d, global step %d)", path, epoch, global_step)
        return path

    def _point(self, name: str, target: Path) -> None:
        """Make ``root/name`` refer to ``target`` atomically: a symlink, else a copy."""
        entry = self.root_dir / name
        with translate_write_errors(entry, "latest/best entry"):
            if self._symlinks and not point_link(entry, target):
                self._symlinks = False
            if not self._symlinks:
                copy_atomically(target, entry, mode=self.config.file_mode)

    def _rotate(self, *, keep: Path) -> None:
        limit = self.config.max_checkpoints
        if limit is None:
            return
        files = self.list_checkpoints()
        protected = {keep.name, *(p.name for p in files[-limit:])}
        if self._tracker.record is not None:
            protected.add(self._tracker.record["file"])
        for path in files:
            if path.name not in protected:
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
                logger.debug("Rotated out %s", path)

    def _repair_best_link(self) -> None:
        """Point ``best.ckpt`` at the file ``best.json`` names when a save died between the two."""
        record = self._tracker.record
        if record is None:
            return
        target, best = self.root_dir / record["file"], self.root_dir / BEST_NAME
        stale = not best.exists() or (best.is_symlink() and os.readlink(best) != record["file"])
        if target.is_file() and stale:
            try:
                self._point(BEST_NAME, target)
            except CheckpointWriteError as exc:  # best is a convenience: never block the writer
                logger.warning("Could not repair %s from %s: %s", best, self._tracker.path, exc)

    @property
    def best_value(self) -> float | None:
        """The best monitored value so far (survives restarts via ``best.json``), or None."""
        return self._tracker.value

    # -- restoring --------------------------------------------------------------------------

    def load_latest_valid(self) -> tuple[Path, dict[str, Any]] | None:
        """The newest valid checkpoint and its payload, read (and verified) once; None if none.

        The same choice as :meth:`find_latest_valid`, without reading the file a second time.

        Raises:
            CheckpointError: Checkpoint files exist but none of them is valid.
        """
        return load_newest_valid(self.root_dir, self.list_checkpoints())

    def find_latest_valid(self) -> Path | None:
        """The newest checkpoint that reads, or None when the folder holds none at all.

        Raises:
            CheckpointError: Checkpoint files exist but none of them is valid.
        """
        found = self.load_latest_valid()
        return None if found is None else found[0]

    def restore_from_checkpoint(
        self,
        model: torch.nn.Module,
        optimizers: Sequence[torch.optim.Optimizer] | None = None,
        schedulers: Sequence[Any] | None = None,
        scaler: Precision | torch.amp.GradScaler | None = None,
        checkpoint_path: str | os.PathLike[str] | None = None,
        *,
        dataloader_manager: Any = None,
        restore_rng: bool = True,
        strict: bool = True,
    ) -> tuple[int, int, ResumeState]:
        """Restore everything from ``checkpoint_path`` or, when None, the newest valid file.

        Returns:
            ``(epoch, global_step, resume_state)`` as saved.

        Raises:
            FileNotFoundError: No path was given and the folder holds no checkpoint.
            CheckpointError: The file (or every candidate) is corrupt or truncated.
            ValueError: Counts differ from the saved ones, or the format version is newer.
        """
        if checkpoint_path is None:
            found = self.load_latest_valid()
            if found is None:
                raise FileNotFoundError(
                    f"No checkpoint in {self.root_dir} to resume from; pass checkpoint_path= or "
                    "start a new run"
                )
            path, payload = found
        else:
            path, payload = Path(checkpoint_path), read_checkpoint(checkpoint_path)
        resume = apply_payload(
            payload,
            model=model,
            optimizers=optimizers,
            schedulers=schedulers,
            precision_or_scaler=scaler,
            dataloader_manager=dataloader_manager,
            restore_rng=restore_rng,
            strict=strict,
        )
        logger.info(
            "Restored %s (epoch %s, global step %s)",
            path,
            payload[KEY_EPOCH],
            payload[KEY_GLOBAL_STEP],
        )
        return int(payload[KEY_EPOCH]), int(payload[KEY_GLOBAL_STEP]), resume
