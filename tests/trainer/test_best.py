"""Best tracking across writers: ``best.json`` is re-read when a writer starts, warnings said once."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch

from trainer.checkpoints.manager import CheckpointManager
from trainer.config import CheckpointConfig


def save(manager: CheckpointManager, step: int, metrics: dict) -> Path:
    return manager.save_checkpoint(
        model=torch.nn.Linear(2, 2),
        optimizers=[],
        schedulers=[],
        epoch=0,
        global_step=step,
        metrics=metrics,
    )


def make(root: Path, **kwargs) -> CheckpointManager:
    return CheckpointManager(CheckpointConfig(root_dir=root, **kwargs))


def test_a_changed_monitor_warns_once_over_many_saves(tmp_path: Path, caplog) -> None:
    save(make(tmp_path, monitor_metric="loss"), 1, {"loss": 0.5})
    manager = make(tmp_path, monitor_metric="acc", monitor_mode="max")
    with caplog.at_level(logging.WARNING):
        for step in (2, 3, 4):
            save(manager, step, {"loss": 0.4})  # no "acc": best.json keeps the old monitor
    assert caplog.text.count("tracks loss/min but the config monitors acc/max") == 1


def test_each_writer_starts_from_the_current_best_json(tmp_path: Path) -> None:
    first, second = make(tmp_path, monitor_metric="loss"), make(tmp_path, monitor_metric="loss")
    assert first.best_value is None and second.best_value is None  # both made on an empty folder
    best = save(first, 1, {"loss": 0.2})
    save(
        second, 2, {"loss": 0.3}
    )  # not better than what the first wrote, though second never saw it
    assert second.best_value == 0.2 and os.readlink(tmp_path / "best.ckpt") == best.name
