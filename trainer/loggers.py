"""Metric loggers: small callbacks that receive every group of metrics the trainer records.

The trainer records a group at every ``log_every_n_steps``-th optimizer step (``train/<name>`` for
every scalar the training step returns, averaged over the step's micro-batches) and after every
validation (``val/<name>``, ``val/<loader>/<name>``), in ``trainer.metrics_history`` (saved in every
checkpoint) and through :meth:`Logger.log_metrics` of each logger.

Loggers are resume-aware: at ``fit()`` start they rebuild their output from ``metrics_history``,
which is exactly what the resumed checkpoint held, so after a preemption and a resume every step
appears once. Write your own in a few lines::

    class PrintLogger(Logger):
        def log_metrics(self, trainer, metrics, step):
            print(step, metrics)

    GenericTrainer(config, model, optimizer, callbacks=[PrintLogger()])

Only rank 0 logs.
"""

from __future__ import annotations

import csv
import importlib.util
import itertools
import logging
import math
import os
import socket
import struct
import time
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

from trainer.callbacks import Callback
from trainer.checkpoints.atomic import atomic_write
from trainer.config import LoggerName
from trainer.result import FitResult

__all__ = ["CSVLogger", "Logger", "TensorBoardLogger"]

logger = logging.getLogger(__name__)

GenericTrainer = Any
_EVENT_FILES = itertools.count()  # the last part of an event file's name: unique in the process


def rows_by_step(history: Mapping[str, list[list[float]]]) -> dict[int, dict[str, float]]:
    """``metrics_history`` as one row per step (the last value of a key at a step wins)."""
    rows: dict[int, dict[str, float]] = {}
    for key, points in history.items():
        for step, value in points:
            rows.setdefault(int(step), {})[key] = float(value)
    return dict(sorted(rows.items()))


class Logger(Callback):
    """Base class: override :meth:`log_metrics`; :meth:`start` and :meth:`finish` are optional."""

    def log_metrics(self, trainer: GenericTrainer, metrics: dict[str, float], step: int) -> None:
        """Called with every group of metrics recorded at ``step``."""

    def start(self, trainer: GenericTrainer) -> None:
        """Called at ``fit()`` start, after the resume: ``trainer.metrics_history`` is the past."""

    def finish(self, trainer: GenericTrainer) -> None:
        """Called when ``fit()`` returns (flush buffers)."""

    def on_fit_start(self, trainer: GenericTrainer) -> None:
        if trainer.rank == 0:
            self.start(trainer)

    def on_log(self, trainer: GenericTrainer, metrics: dict[str, float], step: int) -> None:
        if trainer.rank == 0:
            self.log_metrics(trainer, metrics, step)

    def on_fit_end(self, trainer: GenericTrainer, result: FitResult) -> None:
        if trainer.rank == 0:
            self.finish(trainer)


def _cell(value: float | None) -> str:
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else repr(value)


class _FileLogger(Logger):
    """A logger that keeps its file open for the run and flushes it at least every
    ``flush_every_s`` seconds, at every checkpoint and when ``fit()`` returns (the CSV and
    TensorBoard loggers). Picklable between and during runs: the open file is flushed and left
    out, and opened again when needed."""

    def __init__(self, flush_every_s: float) -> None:
        if not (isinstance(flush_every_s, (int, float)) and flush_every_s >= 0):
            raise ValueError(
                f"flush_every_s must be a number of seconds >= 0 (got {flush_every_s!r}); 0 "
                "flushes every row"
            )
        self.flush_every_s = float(flush_every_s)
        self._file: IO[Any] | None = None
        self._flushed_at = 0.0

    def _sync_if_due(self) -> None:
        if time.monotonic() - self._flushed_at >= self.flush_every_s:
            self._sync()

    def _sync(self) -> None:
        """What was written so far to the file."""
        if self._file is not None:
            self._file.flush()
            self._flushed_at = time.monotonic()

    def _close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def __getstate__(self) -> dict[str, Any]:
        self._sync()
        return {**self.__dict__, "_file": None}

    def on_checkpoint(self, trainer: GenericTrainer, path: Path | None) -> None:
        if trainer.rank == 0:
            self._sync()


class CSVLogger(_FileLogger):
    """``metrics.csv`` in ``root_dir`` (or ``path``): a ``step`` column, then one per metric.

    One row per logged step; a row is written once its step is over (the next step's metrics
    arrive, or ``fit()`` returns). At ``fit()`` start the file is rewritten from
    ``metrics_history``, so rows logged after the resumed checkpoint disappear.

    The file stays open for the run and rows reach it at least every ``flush_every_s`` seconds,
    at every checkpoint, and when ``fit()`` returns (opening and closing it per row cost ~25 us
    a row). A process killed in between loses no metric: the next ``fit()`` rewrites
    the file from the checkpoint's ``metrics_history``.
    """

    FILE_NAME = "metrics.csv"

    def __init__(self, path: str | Path | None = None, *, flush_every_s: float = 1.0) -> None:
        super().__init__(flush_every_s)
        self.path = None if path is None else Path(path)
        self._columns: list[str] = []
        self._step: int | None = None
        self._row: dict[str, float] = {}

    def _target(self, trainer: GenericTrainer) -> Path:
        return self.path or Path(trainer.checkpoints.root_dir) / self.FILE_NAME

    def start(self, trainer: GenericTrainer) -> None:
        self._close()
        rows = rows_by_step(trainer.metrics_history)
        self._columns = sorted({key for row in rows.values() for key in row})
        self._step, self._row = None, {}
        if rows:  # the last step may gain metrics (an epoch-end validation after a preemption)
            self._step = max(rows)
            self._row = rows.pop(self._step)
        self._rewrite(trainer, rows)

    def _rewrite(self, trainer: GenericTrainer, rows: Mapping[int, Mapping[str, float]]) -> None:
        target = self._target(trainer)
        target.parent.mkdir(parents=True, exist_ok=True)
        lines = [",".join(["step", *self._columns])]
        lines += [
            ",".join([str(step), *(_cell(row.get(c)) for c in self._columns)])
            for step, row in rows.items()
        ]
        text = ("\n".join(lines) + "\n").encode()
        self._close()
        atomic_write(target, lambda f: f.write(text))
        self._file = target.open("a", newline="")
        self._flushed_at = time.monotonic()

    def log_metrics(self, trainer: GenericTrainer, metrics: dict[str, float], step: int) -> None:
        if self._step is not None and step != self._step:
            self._flush(trainer)
        self._step = step
        self._row.update(metrics)

    def _flush(self, trainer: GenericTrainer) -> None:
        if self._step is None:
            return
        step, row = self._step, self._row
        self._step, self._row = None, {}
        if not set(row) <= set(self._columns):  # a new metric: a wider header
            self._columns = sorted(set(self._columns) | set(row))
            past = rows_by_step(trainer.metrics_history)
            self._rewrite(trainer, {s: r for s, r in past.items() if s <= step})
            return
        if self._file is None:  # log_metrics without start(): append to what is there
            self._file = self._target(trainer).open("a", newline="")
        csv.writer(self._file, lineterminator="\n").writerow(
            [str(step), *(_cell(row.get(c)) for c in self._columns)]
        )
        self._sync_if_due()

    def finish(self, trainer: GenericTrainer) -> None:
        self._flush(trainer)
        self._close()


class TensorBoardLogger(_FileLogger):
    """TensorBoard event files in ``root_dir/tensorboard`` (or ``log_dir``), one per ``fit()``.

    The logger writes the events itself, on the training thread: one event per logged group,
    reaching the file at least every ``flush_every_s`` seconds, at every checkpoint and when
    ``fit()`` returns. (``torch.utils.tensorboard.SummaryWriter`` writes from a thread of its
    own; a second thread in the process makes every ``malloc`` take a lock, ~8,000 instructions
    per training step of the trainer benchmark.) A resumed run's file starts with TensorBoard's
    purge marker at the resumed step + 1, so TensorBoard hides what a preempted run logged after
    its checkpoint. Needs the ``tensorboard`` package (for its event protos).
    """

    def __init__(self, log_dir: str | Path | None = None, *, flush_every_s: float = 1.0) -> None:
        super().__init__(flush_every_s)
        self.log_dir = None if log_dir is None else Path(log_dir)
        self._path: Path | None = None

    def start(self, trainer: GenericTrainer) -> None:
        from tensorboard.compat.proto.event_pb2 import Event, SessionLog

        self._close()
        log_dir = self.log_dir or Path(trainer.checkpoints.root_dir) / "tensorboard"
        log_dir.mkdir(parents=True, exist_ok=True)
        now = time.time()
        self._path = log_dir / (
            f"events.out.tfevents.{int(now):010d}.{socket.gethostname()}.{os.getpid()}."
            f"{next(_EVENT_FILES)}"
        )
        self._file = self._path.open("ab")
        self._write(Event(wall_time=now, file_version="brain.Event:2"))
        step = trainer.state.global_step
        if step:  # TensorBoard drops what earlier files hold from this step on
            start = SessionLog(status=SessionLog.START)
            self._write(Event(wall_time=now, step=step + 1, session_log=start))
        self._sync()

    def log_metrics(self, trainer: GenericTrainer, metrics: dict[str, float], step: int) -> None:
        from tensorboard.compat.proto.event_pb2 import Event
        from tensorboard.compat.proto.summary_pb2 import Summary

        if self._path is None:  # never started
            return
        values = [Summary.Value(tag=key, simple_value=float(v)) for key, v in metrics.items()]
        self._write(Event(wall_time=time.time(), step=step, summary=Summary(value=values)))
        self._sync_if_due()

    def _write(self, event: Any) -> None:
        """One TFRecord: length, its masked CRC-32C, the serialized event, its masked CRC-32C."""
        from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c

        if self._file is None:  # unpickled mid-run: append to this run's file
            assert self._path is not None
            self._file = self._path.open("ab")
        data = event.SerializeToString()
        header = struct.pack("<Q", len(data))
        self._file.write(
            header
            + struct.pack("<I", masked_crc32c(header))
            + data
            + struct.pack("<I", masked_crc32c(data))
        )

    def finish(self, trainer: GenericTrainer) -> None:
        self._close()


def tensorboard_available() -> bool:
    """Whether ``torch.utils.tensorboard`` can write (the ``tensorboard`` package is installed)."""
    return importlib.util.find_spec("tensorboard") is not None


def default_loggers(names: tuple[LoggerName | str, ...]) -> list[Logger]:
    """The loggers named in ``GenericTrainerConfig.loggers`` ("tensorboard" only when installed)."""
    out: list[Logger] = []
    for name in names:
        if name == LoggerName.CSV:
            out.append(CSVLogger())
        elif name == LoggerName.TENSORBOARD:
            if tensorboard_available():
                out.append(TensorBoardLogger())
            else:
                logger.debug("tensorboard is not installed: no TensorBoard logger")
    return out
