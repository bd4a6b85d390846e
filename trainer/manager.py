"""CheckpointManager: checkpoint paths, ``latest``/``best`` entries, rotation and restore.

Folder layout (``config.root_dir``)::

    epoch=0002-step=000150.ckpt   # one file per save (config.filename_template)
    latest.ckpt                   # symlink to (or atomic copy of) the newest file
    best.ckpt                     # symlink to (or copy of) the best file by monitor_metric
    best.json                     # the best value, so it survives restarts

Guarantees: files, links and ``best.json`` are replaced atomically: a kill at any moment leaves
``latest`` on a complete file (``best``, moved after it, at most one save behind). Rotation keeps the
newest ``max_checkpoints`` files plus the best. Restore without a path takes ``latest`` or the newest
file that reads, skipping corrupt ones with a WARNING, and raises when none is valid. One writer per
folder: a new manager removes leftover temp files.

Example:
    >>> manager = CheckpointManager(CheckpointConfig(root_dir=tmp, max_checkpoints=2))  # doctest: +SKIP
    >>> manager.save_checkpoint(model=m, optimizers=[o], schedulers=[], scaler=None, epoch=0, global_step=10)
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
import string
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
import torch

from trainer.atomic import atomic_write, copy_atomically, point_link
from trainer.checkpoints import (
    KEY_EPOCH,
    KEY_GLOBAL_STEP,
    CheckpointError,
    apply_payload,
    build_payload,
    read_checkpoint,
    write_checkpoint,
)
from trainer.config import CheckpointConfig, MonitorMode
from trainer.precision import Precision
from trainer.resume import ResumeState
from trainer.rng import capture_rng_states

__all__ = ["CheckpointManager"]

logger = logging.getLogger(__name__)

LATEST_NAME = "latest.ckpt"
BEST_NAME = "best.ckpt"
BEST_RECORD_NAME = "best.json"


def _template_regex(template: str) -> re.Pattern[str]:
    parts, named = [], set()
    for literal, field, _, _ in string.Formatter().parse(template):
        parts.append(re.escape(literal))
        if field is not None:
            parts.append(rf"(?P<{field}>\d+)" if field not in named else r"\d+")
            named.add(field)
    return re.compile("".join(parts))


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
        config: Folder, file names, rotation and best-tracking settings.

    Attributes:
        last_payload: The payload last loaded by :meth:`restore_from_checkpoint`, or None.
    """

    config: CheckpointConfig = attrs.field(validator=attrs.validators.instance_of(CheckpointConfig))
    last_payload: dict[str, Any] | None = attrs.field(init=False, default=None)
    _best: dict[str, Any] | None = attrs.field(init=False, default=None)
    _symlinks: bool = attrs.field(init=False, default=True)
    _pattern: re.Pattern[str] = attrs.field(init=False)
    _warned_missing_metric: bool = attrs.field(init=False, default=False)

    def __attrs_post_init__(self) -> None:
        self._symlinks = self.config.use_symlinks
        self._pattern = _template_regex(self.config.filename_template)
        if self.root_dir.is_dir():
            self._remove_temp_files()
            self._best = self._read_best_record()

    @property
    def root_dir(self) -> Path:
        """The checkpoint folder."""
        return self.config.root_dir

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
        """This manager's checkpoint files (per the template), oldest first by write time."""
        if not self.root_dir.is_dir():
            return []
        found = []
        for path in self.root_dir.glob("*.ckpt"):
            match = self._pattern.fullmatch(path.name)
            if match is None or path.is_symlink() or not path.is_file():
                continue
            steps = match.groupdict()
            key = (
                path.stat().st_mtime_ns,
                int(steps.get("global_step", -1)),
                int(steps.get("epoch", -1)),
            )
            found.append((key, path))
        return [path for _, path in sorted(found)]

    def has_checkpoints(self) -> bool:
        """Whether the folder holds ``latest.ckpt`` or any checkpoint file (valid or not)."""
        return os.path.lexists(self.root_dir / LATEST_NAME) or bool(self.list_checkpoints())

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
        payload: Mapping[str, Any] | None = None,
    ) -> Path:
        """Build a v1 payload (or take ``payload`` as is) and write it via :meth:`write_payload`.

        ``rng_states`` None captures the global RNGs now. ``resume_state`` None records the start
        of ``epoch``. ``metrics`` decides whether this file becomes the best one.

        Returns:
            The written file.
        """
        if payload is None:
            if model is None or epoch is None or global_step is None:
                raise TypeError(
                    "save_checkpoint needs model=, epoch= and global_step= (got "
                    f"model={type(model).__name__}, epoch={epoch!r}, global_step={global_step!r}), "
                    "or a ready payload= from trainer.checkpoints.build_payload"
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
        epoch = payload[KEY_EPOCH] if epoch is None else epoch
        global_step = payload[KEY_GLOBAL_STEP] if global_step is None else global_step
        return self.write_payload(payload, epoch=epoch, global_step=global_step, metrics=metrics)

    def write_payload(
        self,
        payload: Mapping[str, Any],
        *,
        epoch: int,
        global_step: int,
        metrics: Mapping[str, Any] | None,
    ) -> Path:
        """Write ``payload`` atomically, update best, swap ``latest``, rotate. The one write path."""
        self.root_dir.mkdir(parents=True, exist_ok=True)
        path = write_checkpoint(self.path_for(epoch, global_step), payload)
        self._update_best(path, metrics, epoch=epoch, global_step=global_step)
        self._point(LATEST_NAME, path)
        self._rotate(keep=path)
        logger.info("Saved checkpoint %s (epoch %d, global step %d)", path, epoch, global_step)
        return path

    def _point(self, name: str, target: Path) -> None:
        """Make ``root/name`` refer to ``target`` atomically: a symlink, else a copy."""
        if self._symlinks and not point_link(self.root_dir / name, target):
            self._symlinks = False
        if not self._symlinks:
            copy_atomically(target, self.root_dir / name)

    def _rotate(self, *, keep: Path) -> None:
        limit = self.config.max_checkpoints
        if limit is None:
            return
        files = self.list_checkpoints()
        protected = {keep.name, *(p.name for p in files[-limit:])}
        if self._best is not None:
            protected.add(self._best["file"])
        for path in files:
            if path.name not in protected:
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
                logger.debug("Rotated out %s", path)

    def _remove_temp_files(self) -> None:
        for path in self.root_dir.glob(".*.tmp"):
            if ".ckpt." in path.name or path.name.startswith(f".{BEST_RECORD_NAME}."):
                logger.info("Removing %s, left by an interrupted save", path)
                with contextlib.suppress(OSError):
                    path.unlink()

    # -- best tracking ----------------------------------------------------------------------

    def _update_best(
        self, path: Path, metrics: Mapping[str, Any] | None, *, epoch: int, global_step: int
    ) -> bool:
        metric = self.config.monitor_metric
        if not self.config.tracks_best or metric is None:
            return False
        if not metrics or metric not in metrics:
            if metrics and not self._warned_missing_metric:
                self._warned_missing_metric = True
                logger.warning(
                    "monitor_metric %r is not among the saved metrics %s; such checkpoints are not "
                    "considered for best (check CheckpointConfig.monitor_metric)",
                    metric,
                    sorted(metrics),
                )
            return False
        value = float(metrics[metric])
        if math.isnan(value):
            return False
        if self._best is not None:
            best = self._best["value"]
            better = value < best if self.config.monitor_mode is MonitorMode.MIN else value > best
            if not better:
                return False
        self._best = {
            "monitor_metric": metric,
            "monitor_mode": self.config.monitor_mode.value,
            "value": value,
            "file": path.name,
            "epoch": int(epoch),
            "global_step": int(global_step),
        }
        record = json.dumps(self._best, indent=2).encode()
        atomic_write(self.root_dir / BEST_RECORD_NAME, lambda f: f.write(record))
        self._point(BEST_NAME, path)
        logger.info("New best checkpoint %s (%s = %s)", path, metric, value)
        return True

    @property
    def best_value(self) -> float | None:
        """The best monitored value so far (survives restarts via ``best.json``), or None."""
        return None if self._best is None else self._best["value"]

    def _read_best_record(self) -> dict[str, Any] | None:
        path = self.root_dir / BEST_RECORD_NAME
        if not self.config.tracks_best or not path.exists():
            return None
        try:
            record = json.loads(path.read_text())
            value, file = float(record["value"]), str(record["file"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            logger.warning("Ignoring unreadable %s (%s); best tracking starts afresh", path, exc)
            return None
        wanted = (self.config.monitor_metric, self.config.monitor_mode.value)
        if (record.get("monitor_metric"), record.get("monitor_mode")) != wanted:
            logger.warning(
                "%s tracks %s/%s but the config monitors %s/%s; best tracking starts afresh",
                path,
                record.get("monitor_metric"),
                record.get("monitor_mode"),
                *wanted,
            )
            return None
        record["value"], record["file"] = value, file
        target, best = self.root_dir / file, self.root_dir / BEST_NAME
        stale = not best.exists() or (best.is_symlink() and os.readlink(best) != file)
        if target.is_file() and stale:  # a save died between best.json and best.ckpt
            self._point(BEST_NAME, target)
        return record

    # -- restoring --------------------------------------------------------------------------

    def _load_newest_valid(self) -> tuple[Path, dict[str, Any]] | None:
        latest = self.root_dir / LATEST_NAME
        candidates = [latest] if os.path.lexists(latest) else []
        candidates += reversed(self.list_checkpoints())
        if not candidates:
            return None
        tried, seen = [], set()
        for path in candidates:
            real = path.resolve()
            if real in seen:
                continue
            seen.add(real)
            try:
                return real, read_checkpoint(path)
            except (CheckpointError, FileNotFoundError) as exc:
                logger.warning("Skipping checkpoint %s: %s", path, exc)
                tried.append(f"{path.name}: {type(exc).__name__}")
        raise CheckpointError(
            f"No valid checkpoint in {self.root_dir}: every candidate failed to load ({'; '.join(tried)}). "
            "Pass checkpoint_path= to a good file, or move this folder away to start from scratch"
        )

    def find_latest_valid(self) -> Path | None:
        """The newest checkpoint that reads, or None when the folder holds none at all.

        Raises:
            CheckpointError: Checkpoint files exist but none of them is valid.
        """
        found = self._load_newest_valid()
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
            found = self._load_newest_valid()
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
        self.last_payload = payload
        logger.info(
            "Restored %s (epoch %s, global step %s)",
            path,
            payload[KEY_EPOCH],
            payload[KEY_GLOBAL_STEP],
        )
        return int(payload[KEY_EPOCH]), int(payload[KEY_GLOBAL_STEP]), resume
