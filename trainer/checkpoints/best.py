"""Best-checkpoint tracking: which file is best by the monitored metric, kept in ``best.json``.

``best.json`` holds ``monitor_metric``, ``monitor_mode``, ``value``, ``file``, ``epoch`` and
``global_step`` so the best value survives restarts. A record made under another metric or mode is
ignored with a WARNING (tracking starts afresh); an unreadable one too.

Example:
    >>> tracker = BestTracker(config)                              # doctest: +SKIP
    >>> record = tracker.consider("x.ckpt", {"loss": 0.1}, epoch=0, global_step=5)  # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs

from trainer.checkpoints.atomic import atomic_write
from trainer.checkpoints.errors import translate_write_errors
from trainer.config import CheckpointConfig, MonitorMode

__all__ = ["BEST_RECORD_NAME", "BestTracker"]

logger = logging.getLogger(__name__)

BEST_RECORD_NAME = "best.json"


@attrs.define(eq=False)
class BestTracker:
    """Decides whether a saved file is the new best and records it in ``best.json``.

    Attributes:
        record: The current best record (the ``best.json`` fields), or None.
    """

    config: CheckpointConfig
    record: dict[str, Any] | None = attrs.field(init=False, default=None)
    _warned_missing_metric: bool = attrs.field(init=False, default=False)
    _warned: set[str] = attrs.field(init=False, factory=set)

    def _warn_once(self, message: str, *args: Any) -> None:
        text = message % args
        if text not in self._warned:  # load() runs at every start of a writer: say it once
            self._warned.add(text)
            logger.warning(text)

    @property
    def path(self) -> Path:
        return self.config.root_dir / BEST_RECORD_NAME

    @property
    def value(self) -> float | None:
        return None if self.record is None else self.record["value"]

    def load(self) -> dict[str, Any] | None:
        """Read ``best.json`` into :attr:`record` (None when absent, unreadable or off-monitor)."""
        self.record = None
        if not self.config.tracks_best or not self.path.exists():
            return None
        try:
            record = json.loads(self.path.read_text())
            value, file = float(record["value"]), str(record["file"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            logger.warning(
                "Ignoring unreadable %s (%s); best tracking starts afresh", self.path, exc
            )
            return None
        wanted = (self.config.monitor_metric, self.config.monitor_mode.value)
        if (record.get("monitor_metric"), record.get("monitor_mode")) != wanted:
            self._warn_once(
                "%s tracks %s/%s but the config monitors %s/%s; best tracking starts afresh",
                self.path,
                record.get("monitor_metric"),
                record.get("monitor_mode"),
                *wanted,
            )
            return None
        record["value"], record["file"] = value, file
        self.record = record
        return record

    def consider(
        self, path: Path, metrics: Mapping[str, Any] | None, *, epoch: int, global_step: int
    ) -> dict[str, Any] | None:
        """The new best record when ``metrics`` beat the current best (not yet written), else None."""
        metric = self.config.monitor_metric
        if not self.config.tracks_best or metric is None:
            return None
        if not metrics or metric not in metrics:
            if metrics and not self._warned_missing_metric:
                self._warned_missing_metric = True
                logger.warning(
                    "monitor_metric %r is not among the saved metrics %s; such checkpoints are not "
                    "considered for best (check CheckpointConfig.monitor_metric)",
                    metric,
                    sorted(metrics),
                )
            return None
        value = float(metrics[metric])
        if math.isnan(value):
            return None
        if self.record is not None:
            best = self.record["value"]
            better = value < best if self.config.monitor_mode is MonitorMode.MIN else value > best
            if not better:
                return None
        return {
            "monitor_metric": metric,
            "monitor_mode": self.config.monitor_mode.value,
            "value": value,
            "file": path.name,
            "epoch": int(epoch),
            "global_step": int(global_step),
        }

    def write(self, record: dict[str, Any], *, sync_folder: bool = True) -> None:
        """Replace ``best.json`` atomically with ``record`` and make it :attr:`record`.

        ``sync_folder=False`` leaves the folder's fsync to the caller (one for the whole save).
        """
        data = json.dumps(record, indent=2).encode()
        with translate_write_errors(self.path, "best record"):
            atomic_write(
                self.path,
                lambda f: f.write(data),
                mode=self.config.file_mode,
                sync_folder=sync_folder,
            )
        self.record = record
