"""CheckpointManager: checkpoint paths, ``latest``/``best`` entries, rotation, restore, one writer.

Folder layout (``config.root_dir``)::

    epoch=0002-step=000150.ckpt   # one file per save (config.filename_template)
    latest.ckpt                   # symlink to (or atomic copy of) the newest file
    best.ckpt                     # symlink to (or copy of) the best file by monitor_metric
    best.json                     # the best value, so it survives restarts
    .lock                         # the writer lock; names the holder while one holds it

Saving (:mod:`~trainer.checkpoints.commit`): the file (temp name, fsync, rename), then ``latest``,
then ``best.json`` and ``best``, then one fsync of the folder: a kill at any moment leaves
``latest`` on a complete file and ``best`` at most one save behind (repaired from ``best.json`` by
the next writer). Rotation (the newest ``max_checkpoints`` files by step are kept, plus the best)
and best copies run afterwards in the background; with ``async_save`` the whole write does, after
the payload is copied to host memory (:mod:`~trainer.checkpoints.saver`). The next save, reads
through this manager and :meth:`CheckpointManager.wait` wait for that work and raise its error.

Restore without a path takes ``latest`` when it is valid, else the newest valid file by global step,
then epoch (never by mtime), skipping damaged files and unsafe ``latest`` links (outside
``root_dir``, a loop, missing) with a WARNING; it raises when no file is valid
(:mod:`~trainer.checkpoints.restore`).

One writer per folder (:mod:`~trainer.checkpoints.lock`): a save holds ``root_dir/.lock`` until its
background part is done, unless the manager holds it already (a trainer does, for a whole run, with
:meth:`~CheckpointManager.acquire`/:meth:`~CheckpointManager.release` or ``with
manager.writer():``). A second writer gets :class:`~trainer.checkpoints.errors.CheckpointLockedError`
naming the holder. Taking the lock removes provably orphaned temp files and repairs ``best.ckpt``.
Reading takes no lock and never writes or deletes anything.

Example:
    >>> manager = CheckpointManager(CheckpointConfig(root_dir=tmp, max_checkpoints=2))  # doctest: +SKIP
    >>> with manager.writer():                                                        # doctest: +SKIP
    ...     manager.save_checkpoint(model=m, optimizers=[o], epoch=0, global_step=10)
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
import torch

from trainer.checkpoints.best import BestTracker
from trainer.checkpoints.commit import FolderCommitter
from trainer.checkpoints.folder import (
    BEST_NAME,
    LATEST_NAME,
    append_run_start,
    list_checkpoint_files,
    load_newest_valid,
    remove_orphaned_temp_files,
    template_regex,
)
from trainer.checkpoints.format import KEY_EPOCH, KEY_GLOBAL_STEP, build_payload, scaler_state_of
from trainer.checkpoints.lock import FolderLock
from trainer.checkpoints.restore import restore_newest
from trainer.checkpoints.saver import FolderSaver
from trainer.config import CheckpointConfig
from trainer.precision import Precision
from trainer.resume import ResumeState
from trainer.rng import capture_rng_states

__all__ = ["CheckpointManager"]

logger = logging.getLogger(__name__)


@attrs.define(eq=False)
class CheckpointManager:
    """Owns a checkpoint folder: writes, ``latest``/``best``, rotation, best tracking, restore.

    Args:
        config: Folder, file names, rotation, best-tracking, permission and async settings.
    """

    config: CheckpointConfig = attrs.field(validator=attrs.validators.instance_of(CheckpointConfig))
    _tracker: BestTracker = attrs.field(init=False)
    _lock: FolderLock = attrs.field(init=False)
    _committer: FolderCommitter = attrs.field(init=False)
    _saver: FolderSaver = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self._tracker = BestTracker(self.config)
        self._committer = FolderCommitter(
            self.config, self._tracker, template_regex(self.config.filename_template)
        )
        self._lock = FolderLock(self.root_dir, mode=self.config.file_mode)
        self._saver = FolderSaver(self._committer, self.acquire, self._lock.release)
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
            self._committer.repair_best()
        except BaseException:
            self._lock.release()
            raise

    def release(self) -> None:
        """Wait for the save in flight (raising its error, see :meth:`wait`), then give back one
        :meth:`acquire`; the last one unlocks the folder (never with a save in flight)."""
        try:
            self.wait()
        finally:
            self._lock.release()

    @contextlib.contextmanager
    def writer(self) -> Iterator[CheckpointManager]:
        """Hold the writer lock for the block (``with manager.writer(): ...``); its saves are
        durable when it ends."""
        self.acquire()
        try:
            yield self
        except BaseException as exc:
            self.wait(during=exc)  # a failed background save is noted on exc, not raised over it
            raise
        finally:
            self.release()

    @property
    def holds_lock(self) -> bool:
        """Whether this manager holds the folder's writer lock now."""
        return self._lock.held

    # -- work in the background -------------------------------------------------------------

    @property
    def save_in_flight(self) -> bool:
        """Whether a save (or the clean-up after one) is still running in the background."""
        return self._saver.job.busy

    def wait(self, *, during: BaseException | None = None) -> None:
        """Wait until the save in flight and its clean-up are done: the file is complete and
        fsynced, ``latest`` points at it, rotation is over.

        Args:
            during: An exception already propagating (``fit()`` ending with an error): a failed
                background save is then logged and noted on it instead of replacing it.

        Raises:
            CheckpointWriteError: The background save failed (disk full, ...); earlier files and
                ``latest`` are unchanged. Raised once, by the first wait after the failure.
        """
        self._saver.job.wait(during=during)

    def wait_snapshot(self) -> None:
        """Wait until the save in flight has copied its ``defer`` tensors (see
        :meth:`write_payload_async`); raises ``SnapshotChangedError`` when one changed first."""
        self._saver.wait_snapshot()

    # -- paths ------------------------------------------------------------------------------

    def path_for(self, epoch: int, global_step: int) -> Path:
        """The file a save at (``epoch``, ``global_step``) writes."""
        name = self.config.filename_template.format(epoch=epoch, global_step=global_step)
        return self.root_dir / name

    def latest_path(self) -> Path | None:
        """``latest.ckpt`` when it exists (a dangling link counts as missing), else None."""
        self.wait()
        path = self.root_dir / LATEST_NAME
        return path if path.exists() else None

    def best_path(self) -> Path | None:
        """``best.ckpt`` when it exists, else None."""
        self.wait()
        path = self.root_dir / BEST_NAME
        return path if path.exists() else None

    def list_checkpoints(self) -> list[Path]:
        """This manager's checkpoint files (per the template), oldest first by step, then epoch."""
        self.wait()
        return list_checkpoint_files(self.root_dir, self._committer.pattern)

    def has_checkpoints(self) -> bool:
        """Whether the folder holds ``latest.ckpt`` or any checkpoint file (valid or not)."""
        return os.path.lexists(self.root_dir / LATEST_NAME) or bool(self.list_checkpoints())

    def record_run_start(self, state: ResumeState, *, world_size: int = 1) -> None:
        """Append where a ``fit()`` starts to ``runs.jsonl`` (``python -m trainer plot`` marks the
        resumes); a line of JSON per start, written by the lock holder."""
        append_run_start(self.root_dir, state.global_step, state.epoch, world_size)

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
            The file written (with ``async_save``: being written; :meth:`wait` for it).
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
            scaler_state=scaler_state_of(scaler),
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

        Waits for the save in flight first. With ``config.async_save`` this is
        :meth:`write_payload_async`; otherwise the file, ``latest`` and ``best`` are durable when
        it returns, and rotation finishes in the background (:meth:`wait`). Holds the writer lock
        for the save (see :meth:`acquire`).

        Raises:
            CheckpointLockedError: Another writer holds the folder.
            CheckpointWriteError: The disk is full or the folder is not writable; every earlier
                file and ``latest`` are unchanged (also for an earlier background save).
        """
        return self._save(payload, epoch, global_step, metrics, self.config.async_save)

    def write_payload_async(
        self,
        payload: Mapping[str, Any],
        *,
        epoch: int,
        global_step: int,
        metrics: Mapping[str, Any] | None,
        defer: Iterable[torch.Tensor] = (),
    ) -> Path:
        """Copy ``payload`` to host memory, write it in the background, return its path.

        Blocks for the save in flight and the copy only (into reused host buffers; pinned and
        asynchronous for CUDA tensors). Every guarantee of :meth:`write_payload` holds: ``latest``
        stays on the previous file until the write is done, and a kill meanwhile loses only this
        save. Errors of the write are raised by the next :meth:`wait`. ``defer``: CPU tensors of
        ``payload`` the caller leaves unchanged until :meth:`wait_snapshot` (parameters and
        optimizer state until the next optimizer step): the background thread copies them,
        overlapping the caller's next work; one changed in place before its copy fails the save.

        Raises:
            CheckpointLockedError: Another writer holds the folder.
            TypeError: The payload holds a type ``weights_only=True`` refuses (raised here).
        """
        return self._save(payload, epoch, global_step, metrics, True, defer)

    def _save(
        self,
        payload: Mapping[str, Any],
        epoch: int,
        global_step: int,
        metrics: Mapping[str, Any] | None,
        background: bool,
        defer: Iterable[torch.Tensor] = (),
    ) -> Path:
        path = self.path_for(epoch, global_step)
        self._saver.save(payload, path, epoch, global_step, metrics, background, defer)
        return path

    @property
    def best_value(self) -> float | None:
        """The best monitored value so far (survives restarts via ``best.json``), or None."""
        self.wait()
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

        The file's checksum is checked while its tensors are copied into ``model`` and the
        optimizers; a damaged file is then replaced by the next valid one (restored over it), and
        the RNGs are restored only from the file that passed.

        Returns:
            ``(epoch, global_step, resume_state)`` as saved.

        Raises:
            FileNotFoundError: No path was given and the folder holds no checkpoint.
            CheckpointError: The file (or every candidate) is corrupt or truncated. The objects
                passed in may then hold values of a damaged file: restore another file into them
                or build them again before training.
            ValueError: Counts differ from the saved ones, or the format version is newer.
        """
        self.wait()
        found = restore_newest(
            self.root_dir,
            self.list_checkpoints() if checkpoint_path is None else [],
            checkpoint_path,
            restore_rng=restore_rng,
            model=model,
            optimizers=optimizers,
            schedulers=schedulers,
            precision_or_scaler=scaler,
            dataloader_manager=dataloader_manager,
            strict=strict,
        )
        if found is None:
            raise FileNotFoundError(
                f"No checkpoint in {self.root_dir} to resume from; pass checkpoint_path= or "
                "start a new run"
            )
        path, payload, resume = found
        epoch, step = payload[KEY_EPOCH], payload[KEY_GLOBAL_STEP]
        logger.info("Restored %s (epoch %s, global step %s)", path, epoch, step)
        return int(epoch), int(step), resume
