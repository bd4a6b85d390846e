"""Data-loader worker processes: stopped when fit() ends, persistent ones reused, gone with the parent."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from statefuldata import make_loader
from tests.data import Features
from tests.trainer.harness import InterruptAt
from tests.trainer.test_fit import linear_trainer

ROOT = Path(__file__).resolve().parents[2]


class PidFeatures(Features):
    """Features that also report the process that loaded them."""

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {**super().__getitem__(index), "pid": os.getpid()}


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


def _recording_trainer(root: Path, pids: set[int], **kwargs: Any):
    trainer = linear_trainer(root, **kwargs)

    def step(t, batch, i, di, name):
        pids.update(batch["pid"].tolist())
        return {"loss": torch.nn.functional.mse_loss(t.model(batch["x"]), batch["y"])}

    trainer.set_training_step(step)
    return trainer


@pytest.mark.parametrize("persistent", [False, True])
def test_workers_are_stopped_when_fit_returns_and_when_it_raises(tmp_path, persistent) -> None:
    pids: set[int] = set()
    trainer = _recording_trainer(tmp_path, pids, callbacks=(InterruptAt(5),))
    loader = make_loader(
        PidFeatures(48), batch_size=4, shuffle=True, num_workers=2, persistent_workers=persistent
    )
    with pytest.raises(KeyboardInterrupt):
        trainer.fit([loader], max_epochs=2)
    assert len(pids) == 2 and os.getpid() not in pids
    assert not [p for p in pids if _alive(p)]  # stopped on the way out, not left to the collector
    first = set(pids)
    pids.clear()
    assert trainer.fit([loader], max_epochs=2).status == "completed"
    assert pids.isdisjoint(first) and not [p for p in pids if _alive(p)]


def test_persistent_validation_workers_survive_every_validation(tmp_path) -> None:
    def run(workers: int) -> tuple[list[float], set[int]]:
        pids: set[int] = set()
        trainer = _recording_trainer(tmp_path / str(workers), set())

        def validation_step(t, batch, i, di, name):
            pids.update(batch["pid"].tolist())
            return {"loss": torch.nn.functional.mse_loss(t.model(batch["x"]), batch["y"])}

        trainer.set_validation_step(validation_step)
        persistent = {"persistent_workers": True} if workers else {}
        val = make_loader(
            PidFeatures(12, offset=300), batch_size=4, num_workers=workers, **persistent
        )
        trainer.fit([make_loader(PidFeatures(16), batch_size=4)], val_loaders=[val], max_epochs=3)
        return [v for _, v in trainer.metrics_history["val/loss"]], pids

    in_process, _ = run(0)
    with_workers, pids = run(2)
    assert with_workers == in_process and len(with_workers) == 3
    assert len(pids) == 2  # the same two workers served all three validations


_ORPHAN_SCRIPT = """
import os, sys, time
from statefuldata import make_loader
from tests.trainer.test_workers import PidFeatures

loader = make_loader(PidFeatures(400), batch_size=2, num_workers=2)
pids = set()
for batch in loader:
    pids.update(batch["pid"].tolist())
    if len(pids) == 2:
        print(*sorted(pids), flush=True)
        time.sleep(600)
"""


@pytest.mark.slow
def test_workers_exit_when_the_main_process_is_killed() -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", _ORPHAN_SCRIPT], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    try:
        pids = [int(p) for p in child.stdout.readline().split()]
        assert len(pids) == 2 and all(_alive(p) for p in pids)
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=30)
        deadline = time.monotonic() + 60  # torch's workers check on their parent every 5 s
        while any(_alive(p) for p in pids) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not [p for p in pids if _alive(p)]
    finally:
        child.kill()
