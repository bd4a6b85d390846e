"""Reading a checkpoint folder: its files in step order, a safe ``latest``, the newest valid file.

Everything here only reads, except :func:`remove_orphaned_temp_files`, which the folder's lock
holder calls.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import socket
import string
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from trainer.checkpoints.atomic import host_tag, parse_temp_name
from trainer.checkpoints.best import BEST_RECORD_NAME
from trainer.checkpoints.errors import CheckpointError
from trainer.checkpoints.io import read_checkpoint
from trainer.checkpoints.lock import pid_alive

__all__ = [
    "BEST_NAME",
    "LATEST_NAME",
    "RUNS_NAME",
    "append_run_start",
    "latest_target",
    "list_checkpoint_files",
    "load_newest_valid",
    "newest_valid",
    "remove_orphaned_temp_files",
    "template_regex",
]

logger = logging.getLogger(__name__)

T = TypeVar("T")

LATEST_NAME = "latest.ckpt"
BEST_NAME = "best.ckpt"
RUNS_NAME = "runs.jsonl"  # one line per fit() start (trainer.checkpoints.manager.CheckpointManager.record_run_start)


def template_regex(template: str) -> re.Pattern[str]:
    """A regex matching the names ``template`` gives, with named groups for its fields."""
    parts, named = [], set()
    for literal, field, _, _ in string.Formatter().parse(template):
        parts.append(re.escape(literal))
        if field is not None:
            parts.append(rf"(?P<{field}>\d+)" if field not in named else r"\d+")
            named.add(field)
    return re.compile("".join(parts))


def list_checkpoint_files(root: Path, pattern: re.Pattern[str]) -> list[Path]:
    """Regular files in ``root`` whose names match ``pattern``, oldest first by global step, epoch."""
    if not root.is_dir():
        return []
    found = []
    for path in root.glob("*.ckpt"):
        match = pattern.fullmatch(path.name)
        if match is None or path.is_symlink() or not path.is_file():
            continue
        fields = match.groupdict()
        key = (int(fields["global_step"]), int(fields.get("epoch") or -1), path.name)
        found.append((key, path))
    return [path for _, path in sorted(found)]


def latest_target(root: Path) -> tuple[Path | None, str | None]:
    """The file ``root/latest.ckpt`` stands for when it is safe to follow, else (None, why not)."""
    latest = root / LATEST_NAME
    if not latest.is_symlink():
        return latest.resolve(), None
    link = os.readlink(latest)
    try:
        real = latest.resolve(strict=True)
    except FileNotFoundError:
        return None, f"it points at {link}, which does not exist"
    except (OSError, RuntimeError) as exc:  # ELOOP; Python < 3.13 raises RuntimeError
        return None, f"it is a symlink loop ({LATEST_NAME} -> {link}: {exc})"
    folder = root.resolve()
    if not real.is_relative_to(folder):
        return None, (
            f"it points outside {folder}, at {real} (another run's folder?); only files inside the "
            "checkpoint folder are resumed from"
        )
    return real, None


def newest_valid(
    root: Path, files: list[Path], attempt: Callable[[Path], T]
) -> tuple[Path, T] | None:
    """``attempt`` ``latest`` if safe, else the newest of ``files`` (oldest first) until one works.

    A candidate whose ``attempt`` raises :class:`CheckpointError` or ``FileNotFoundError`` is
    skipped with a WARNING; any other error propagates.

    Returns:
        ``(resolved path, what attempt returned)``, or None when there is no candidate at all.

    Raises:
        CheckpointError: Candidates exist but none is valid.
    """
    tried: list[str] = []
    candidates: list[tuple[Path, Path]] = []
    if os.path.lexists(root / LATEST_NAME):
        target, skipped = latest_target(root)
        if target is None:
            logger.warning("Skipping checkpoint %s: %s", root / LATEST_NAME, skipped)
            tried.append(f"{LATEST_NAME}: skipped")
        else:
            candidates.append((root / LATEST_NAME, target))
    candidates += [(path, path.resolve()) for path in reversed(files)]
    if not candidates and not tried:
        return None
    seen: set[Path] = set()
    for shown, real in candidates:
        if real in seen:
            continue
        seen.add(real)
        try:
            return real, attempt(real)
        except (CheckpointError, FileNotFoundError) as exc:
            logger.warning("Skipping checkpoint %s: %s", shown, exc)
            tried.append(f"{shown.name}: {type(exc).__name__}")
    raise CheckpointError(
        f"No valid checkpoint in {root}: every candidate failed to load ({'; '.join(tried)}). "
        "Pass checkpoint_path= to a good file, or move this folder away to start from scratch"
    )


def load_newest_valid(root: Path, files: list[Path]) -> tuple[Path, dict[str, Any]] | None:
    """Read ``latest`` if safe and valid, else the newest valid of ``files`` (oldest first).

    Returns:
        ``(resolved path, payload)``, or None when there is no candidate at all.

    Raises:
        CheckpointError: Candidates exist but none is valid.
    """
    return newest_valid(root, files, read_checkpoint)


def append_run_start(root: Path, global_step: int, epoch: int, world_size: int) -> None:
    """Append one JSON line to ``root/runs.jsonl``: where a ``fit()`` starts, when, by whom."""
    line = {
        "global_step": global_step,
        "epoch": epoch,
        "time": time.time(),
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "world_size": world_size,
    }
    root.mkdir(parents=True, exist_ok=True)
    with (root / RUNS_NAME).open("a") as out:
        out.write(json.dumps(line) + "\n")


def remove_orphaned_temp_files(root: Path) -> None:
    """Remove checkpoint temp files whose writer provably ended: this host, and pid gone or ours.

    Call only while holding the folder's lock: then no other writer of ours is at work, so a temp
    file of this process is left from an earlier failed save. Temp files of another host, of a
    running process, or named without a pid (older versions) are left alone.
    """
    for path in root.glob(".*.tmp"):
        name = parse_temp_name(path.name)
        if name is None or not (name.target.endswith(".ckpt") or name.target == BEST_RECORD_NAME):
            continue
        if name.host != host_tag():
            logger.info("Leaving %s: it was written on another host", path)
        elif name.pid != os.getpid() and pid_alive(name.pid):
            logger.info("Leaving %s: its writer (pid %d) is still running", path, name.pid)
        else:
            logger.info("Removing %s, left by an interrupted save of pid %d", path, name.pid)
            with contextlib.suppress(OSError):
                path.unlink()
