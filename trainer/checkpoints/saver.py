"""The save pipeline of one folder: the commit now or in the background, and what follows it.

:class:`FolderSaver` runs :meth:`~trainer.checkpoints.commit.FolderCommitter.commit` either in the
caller (a synchronous save; rotation and best copies then go to the background) or, for an
asynchronous save, on the background thread after :class:`~trainer.checkpoints.snapshot.StagingArea`
copied the payload to host memory. One piece of work is in flight at a time
(:class:`~trainer.checkpoints.background.BackgroundJob`); each save waits for the previous one. The
writer lock is taken in the caller (so a refusal is raised there) and given back by whoever finishes
the work, so the folder is never unlocked with a write in flight.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import attrs
import torch

from trainer.checkpoints.background import BackgroundJob
from trainer.checkpoints.commit import FolderCommitter, Housekeeping
from trainer.checkpoints.snapshot import Snapshot, StagingArea

__all__ = ["FolderSaver"]

logger = logging.getLogger(__name__)


@attrs.define(eq=False)
class FolderSaver:
    """Saves into one folder through ``committer``; ``acquire``/``release`` are its writer lock."""

    committer: FolderCommitter
    acquire: Callable[[], None]
    release: Callable[[], None]
    job: BackgroundJob = attrs.field(init=False, factory=BackgroundJob)
    staging: StagingArea = attrs.field(init=False, factory=StagingArea)
    _mutex: threading.Lock = attrs.field(init=False, factory=threading.Lock)
    _copying: Snapshot | None = attrs.field(init=False, default=None)

    def save(
        self,
        payload: Mapping[str, Any],
        path: Path,
        epoch: int,
        global_step: int,
        metrics: Mapping[str, Any] | None,
        background: bool,
        defer: Iterable[torch.Tensor] = (),
    ) -> None:
        """Write ``payload`` as ``path``: now (``background=False``) or on the background thread.

        Both ways run the same commit (:meth:`_commit`) and then the same housekeeping on the
        background thread (:meth:`_then_housekeep`); they differ only in where the commit runs and
        whether it reads the caller's tensors or a snapshot of them. ``defer``: CPU tensors whose
        storages a background save copies on its thread, before the write.
        """
        self.job.wait()
        self._copying = None
        self.acquire()
        try:
            if background:
                storages = {t.untyped_storage().data_ptr() for t in defer if t.device.type == "cpu"}
                snapshot = self.staging.snapshot(payload, defer=storages)  # checks types too
                commit = functools.partial(
                    self._commit_snapshot,
                    snapshot,
                    path,
                    epoch,
                    global_step,
                    None if metrics is None else dict(metrics),
                )
                self.job.start(
                    functools.partial(self._then_housekeep, commit), f"the save of {path}"
                )
                self._copying = snapshot if snapshot.deferred_bytes else None
                return
            work = self._commit(payload, path, epoch, global_step, metrics, check_types=True)
        except BaseException:
            self.release()
            raise
        if work:
            self.job.start(
                functools.partial(self._then_housekeep, lambda: work), f"the clean-up after {path}"
            )
        else:
            self.release()

    def _commit(
        self,
        payload: Mapping[str, Any],
        path: Path,
        epoch: int,
        global_step: int,
        metrics: Mapping[str, Any] | None,
        *,
        check_types: bool,
    ) -> Housekeeping:
        with self._mutex:
            work = self.committer.commit(
                payload,
                path,
                epoch=epoch,
                global_step=global_step,
                metrics=metrics,
                check_types=check_types,
            )
        logger.info("Saved checkpoint %s (epoch %d, global step %d)", path, epoch, global_step)
        return work

    def _commit_snapshot(
        self,
        snapshot: Snapshot,
        path: Path,
        epoch: int,
        global_step: int,
        metrics: Mapping[str, Any] | None,
    ) -> Housekeeping:
        snapshot.copy_deferred()  # raises, before anything is written, if a tensor changed
        snapshot.wait()  # the device-to-host copies
        return self._commit(
            snapshot.payload, path, epoch, global_step, metrics, check_types=False
        )  # the snapshot checked the types

    def wait_snapshot(self) -> None:
        """Wait until the save in flight has made its deferred copies (at once when it has none).

        Raises:
            SnapshotChangedError: A deferred tensor changed before its copy: that save is dropped
                (raised here, once; the folder is as it was).
        """
        snapshot, self._copying = self._copying, None
        if snapshot is None:
            return
        snapshot.wait_copied()
        if snapshot.failed:
            self.job.wait()  # raises the snapshot's error

    def _then_housekeep(self, commit: Callable[[], Housekeeping]) -> None:
        """On the background thread: ``commit()`` (or the work a commit left), then rotation and
        best copies; the writer lock is given back whatever happens."""
        try:
            self.committer.housekeep(commit())
        finally:
            self.release()
