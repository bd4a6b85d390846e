"""Restore order: ``latest`` when safe and valid, else the newest valid file by step, never by mtime."""

from __future__ import annotations

import logging
import os
import re
import time
from pathlib import Path

import pytest
import torch

from trainer.checkpoints import CheckpointError, atomic, commit, read_checkpoint
from trainer.checkpoints.best import BestTracker
from trainer.checkpoints.commit import FolderCommitter
from trainer.checkpoints.manager import CheckpointManager
from trainer.config import CheckpointConfig


def make(root: Path, **kwargs) -> CheckpointManager:
    return CheckpointManager(CheckpointConfig(root_dir=root, **kwargs))


def save(manager: CheckpointManager, step: int, epoch: int = 0, loss: float = 1.0) -> Path:
    model = torch.nn.Linear(2, 2)
    return manager.save_checkpoint(
        model=model,
        optimizers=[],
        schedulers=[],
        epoch=epoch,
        global_step=step,
        metrics={"loss": loss},
    )


def restored_step(manager: CheckpointManager) -> int:
    return manager.restore_from_checkpoint(torch.nn.Linear(2, 2), [], [])[1]


def warnings_of(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


def test_the_newest_file_is_chosen_by_step_then_epoch_not_by_mtime(tmp_path: Path) -> None:
    template = "s{global_step}-e{epoch}.ckpt"
    manager = make(tmp_path, max_checkpoints=None, filename_template=template)
    paths = [save(manager, step, epoch) for step, epoch in [(5, 0), (9, 1), (30, 2), (30, 3)]]
    (tmp_path / "latest.ckpt").unlink()
    future = time.time() + 3600
    os.utime(paths[0], (future, future))  # an old file touched later (a copy, a backup tool)
    assert manager.list_checkpoints() == paths
    assert manager.find_latest_valid() == paths[3].resolve()
    assert restored_step(make(tmp_path, filename_template=template)) == 30
    assert read_checkpoint(manager.find_latest_valid())["epoch"] == 3
    path, payload = manager.load_latest_valid()
    assert path == paths[3].resolve() and (payload["global_step"], payload["epoch"]) == (30, 3)
    assert make(tmp_path / "empty").load_latest_valid() is None


def test_rotation_keeps_the_newest_by_step(tmp_path: Path) -> None:
    manager = make(tmp_path, max_checkpoints=2)
    first, second = save(manager, 1), save(manager, 2)
    os.utime(first, (time.time() + 3600,) * 2)
    third = save(manager, 3)
    assert manager.list_checkpoints() == [second, third]


def _link_latest(root: Path, target: str) -> None:
    (root / "latest.ckpt").unlink()
    os.symlink(target, root / "latest.ckpt")


@pytest.mark.parametrize(
    ("target", "reason"),
    [
        ("latest.ckpt", r"it is a symlink loop \(latest.ckpt -> latest.ckpt"),
        (
            "epoch=0000-step=000099.ckpt",
            r"it points at epoch=0000-step=000099.ckpt, which does not",
        ),
        ("../other/epoch=0000-step=000050.ckpt", r"it points outside .*another run's folder"),
    ],
)
def test_an_unsafe_latest_is_skipped_with_a_warning(
    tmp_path: Path, target: str, reason: str, caplog: pytest.LogCaptureFixture
) -> None:
    root = tmp_path / "run"
    save(make(tmp_path / "other"), 50)  # a valid file of another run, newer by step
    manager = make(root)
    save(manager, 1)
    save(manager, 2)
    _link_latest(root, target)
    with caplog.at_level(logging.WARNING):
        assert manager.find_latest_valid() == (root / "epoch=0000-step=000002.ckpt").resolve()
        assert restored_step(make(root)) == 2
    messages = warnings_of(caplog)
    assert len(messages) == 2 and all(
        m.startswith(f"Skipping checkpoint {root}/latest.ckpt") for m in messages
    )
    assert all(re.search(reason, m) for m in messages)


def test_an_unsafe_latest_alone_is_an_error_not_a_crash(tmp_path: Path) -> None:
    os.symlink("latest.ckpt", tmp_path / "latest.ckpt")
    manager = make(tmp_path)
    assert manager.has_checkpoints()
    with pytest.raises(CheckpointError, match=r"No valid checkpoint in .*latest.ckpt: skipped"):
        manager.find_latest_valid()


@pytest.mark.parametrize("use_symlinks", [True, False])
def test_latest_moves_before_best_and_the_folder_is_fsynced_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, use_symlinks: bool
) -> None:
    order: list[str] = []
    point, write, fsync_dir = FolderCommitter.point, BestTracker.write, commit.fsync_dir

    def spy_point(self, name, target, **kwargs):
        order.append(name)
        point(self, name, target, **kwargs)

    def spy_write(self, record, **kwargs):
        order.append("best.json")
        write(self, record, **kwargs)

    def spy_fsync_dir(folder):
        order.append("fsync folder")
        fsync_dir(folder)

    monkeypatch.setattr(FolderCommitter, "point", spy_point)
    monkeypatch.setattr(BestTracker, "write", spy_write)
    monkeypatch.setattr(commit, "fsync_dir", spy_fsync_dir)
    monkeypatch.setattr(atomic, "fsync_dir", spy_fsync_dir)  # every other folder fsync
    manager = make(tmp_path, monitor_metric="loss", use_symlinks=use_symlinks)
    save(manager, 1, loss=0.5)
    manager.wait()  # the best copy (without symlinks) is made in the background
    committed = ["latest.ckpt", "best.json", "best.ckpt", "fsync folder"]
    if not use_symlinks:  # a copy of the whole file, after the commit, fsynced on its own
        committed = ["latest.ckpt", "best.json", "fsync folder", "best.ckpt", "fsync folder"]
    assert order == committed
    order.clear()
    save(manager, 2, loss=0.9)  # not a new best: the file and latest, one fsync of the folder
    manager.wait()
    assert order == ["latest.ckpt", "fsync folder"]
