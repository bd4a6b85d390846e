from __future__ import annotations

import logging
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from trainer.checkpoints import CheckpointError, build_payload, read_checkpoint
from trainer.checkpoints.lock import LOCK_NAME
from trainer.checkpoints.manager import CheckpointManager
from trainer.config import CheckpointConfig
from trainer.resume import ResumeState

REPO = Path(__file__).resolve().parents[2]


class Run:
    def __init__(self, seed: int = 0) -> None:
        torch.manual_seed(seed)
        self.model = torch.nn.Linear(4, 3)
        self.optimizers = [
            torch.optim.SGD([self.model.weight], lr=0.1, momentum=0.9),
            torch.optim.Adam([self.model.bias], lr=0.01),
        ]
        self.schedulers = [
            torch.optim.lr_scheduler.StepLR(self.optimizers[0], step_size=1),
            torch.optim.lr_scheduler.ExponentialLR(self.optimizers[1], gamma=0.5),
        ]
        self.scaler = torch.amp.GradScaler("cpu")

    def step(self) -> None:
        self.scaler.scale(self.model(torch.randn(2, 4)).sum()).backward()
        for optimizer in self.optimizers:
            self.scaler.step(optimizer)
            optimizer.zero_grad()
        self.scaler.update()
        for scheduler in self.schedulers:
            scheduler.step()

    def save(
        self, manager: CheckpointManager, step: int, metrics: dict | None = None, **kwargs
    ) -> Path:
        return manager.save_checkpoint(
            model=self.model,
            optimizers=self.optimizers,
            schedulers=self.schedulers,
            scaler=self.scaler,
            resume_state=ResumeState(epoch=step // 10, global_step=step),
            epoch=step // 10,
            global_step=step,
            metrics=metrics,
            **kwargs,
        )

    def restore(self, manager: CheckpointManager, **kwargs) -> tuple[int, int, ResumeState]:
        return manager.restore_from_checkpoint(
            model=self.model,
            optimizers=self.optimizers,
            schedulers=self.schedulers,
            scaler=self.scaler,
            **kwargs,
        )


def make_manager(root: Path, **kwargs) -> CheckpointManager:
    return CheckpointManager(CheckpointConfig(root_dir=root, **kwargs))


def names(root: Path) -> list[str]:
    """The folder's entries, less the writer lock file every save creates."""
    return sorted(p.name for p in root.iterdir() if p.name != LOCK_NAME)


def test_save_writes_a_named_file_and_latest_links_to_it(tmp_path: Path) -> None:
    manager = make_manager(tmp_path)
    run = Run()
    path = run.save(manager, 150)
    assert path == tmp_path / "epoch=0015-step=000150.ckpt" == manager.path_for(15, 150)
    assert names(tmp_path) == ["epoch=0015-step=000150.ckpt", "latest.ckpt"]
    assert (tmp_path / LOCK_NAME).read_bytes() == b""  # taken for the save, released after it
    assert not manager.holds_lock
    assert os.readlink(tmp_path / "latest.ckpt") == path.name
    assert manager.latest_path() == tmp_path / "latest.ckpt" and manager.best_path() is None
    assert manager.list_checkpoints() == [path]
    assert read_checkpoint(tmp_path / "latest.ckpt")["global_step"] == 150


@pytest.mark.parametrize(
    ("mode", "best_step"),
    [("max", 3), ("min", 1)],
)
def test_rotation_keeps_the_last_two_and_the_best(
    tmp_path: Path, mode: str, best_step: int
) -> None:
    manager = make_manager(tmp_path, max_checkpoints=2, monitor_metric="acc", monitor_mode=mode)
    run = Run()
    paths = [
        run.save(manager, step, {"acc": value}) for step, value in [(1, 0.1), (2, 0.5), (3, 0.6)]
    ]
    kept = {p.name for p in manager.list_checkpoints()}
    assert kept == {paths[1].name, paths[2].name, paths[best_step - 1].name}
    assert os.readlink(tmp_path / "best.ckpt") == paths[best_step - 1].name
    assert read_checkpoint(manager.best_path())["global_step"] == best_step
    assert manager.best_value == {"max": 0.6, "min": 0.1}[mode]
    run.save(manager, 4, {"acc": 0.55})
    run.save(manager, 5, {"acc": 0.55})
    kept = {p.name for p in manager.list_checkpoints()}
    expected_best = {"max": paths[2].name, "min": paths[0].name}[mode]
    assert kept == {manager.path_for(0, 4).name, manager.path_for(0, 5).name, expected_best}


def test_best_survives_a_restart(tmp_path: Path) -> None:
    run = Run()
    first = make_manager(tmp_path, max_checkpoints=2, monitor_metric="loss")
    best = run.save(first, 1, {"loss": 0.2})
    run.save(first, 2, {"loss": 0.3})
    second = make_manager(tmp_path, max_checkpoints=2, monitor_metric="loss")
    assert second.best_value == 0.2
    run.save(second, 3, {"loss": 0.25})
    run.save(second, 4, {"loss": 0.4})
    assert os.readlink(tmp_path / "best.ckpt") == best.name
    assert best.exists()
    better = run.save(second, 5, {"loss": torch.tensor(0.1)})
    assert os.readlink(tmp_path / "best.ckpt") == better.name
    second.wait()  # rotation runs in the background, after latest and best moved
    assert not best.exists()  # no longer best, rotated out


def test_best_link_is_repaired_from_best_json_when_a_writer_starts(tmp_path: Path) -> None:
    run = Run()
    manager = make_manager(tmp_path, monitor_metric="loss")
    best = run.save(manager, 1, {"loss": 0.1})
    other = run.save(manager, 2, {"loss": 0.5})
    (tmp_path / "best.ckpt").unlink()
    reader = make_manager(tmp_path, monitor_metric="loss")
    assert not os.path.lexists(tmp_path / "best.ckpt")  # constructing a manager writes nothing
    with reader.writer():
        assert reader.holds_lock
    assert os.readlink(tmp_path / "best.ckpt") == best.name
    os.replace(tmp_path / "latest.ckpt", tmp_path / "best.ckpt")  # best.ckpt -> other file
    assert os.readlink(tmp_path / "best.ckpt") == other.name
    repairer = make_manager(tmp_path, monitor_metric="loss")
    repairer.acquire()
    repairer.release()
    assert os.readlink(tmp_path / "best.ckpt") == best.name


def test_changed_monitor_restarts_best_tracking_with_a_warning(tmp_path: Path, caplog) -> None:
    run = Run()
    run.save(make_manager(tmp_path, monitor_metric="loss"), 1, {"loss": 0.2})
    manager = make_manager(tmp_path, monitor_metric="acc", monitor_mode="max")
    assert manager.best_value is None
    assert "tracks loss/min but the config monitors acc/max" in caplog.text


def test_missing_metric_warns_once_and_nan_is_never_best(tmp_path: Path, caplog) -> None:
    manager = make_manager(tmp_path, monitor_metric="val_loss")
    run = Run()
    run.save(manager, 1, {"train_loss": 1.0})
    run.save(manager, 2, {"train_loss": 1.0})
    assert caplog.text.count("monitor_metric 'val_loss' is not among the saved metrics") == 1
    run.save(manager, 3, {"val_loss": float("nan")})
    assert manager.best_path() is None


def test_without_symlinks_latest_and_best_are_copies(tmp_path: Path) -> None:
    manager = make_manager(tmp_path, use_symlinks=False, monitor_metric="loss", max_checkpoints=1)
    run = Run()
    best = run.save(manager, 1, {"loss": 0.1})
    newest = run.save(manager, 2, {"loss": 0.9})
    manager.wait()  # the copy of a new best file is made in the background
    for entry, source in [("latest.ckpt", newest), ("best.ckpt", best)]:
        assert not (tmp_path / entry).is_symlink()
        assert (tmp_path / entry).read_bytes() == source.read_bytes()
    assert manager.find_latest_valid() == tmp_path / "latest.ckpt"
    newest.unlink()
    assert run.restore(make_manager(tmp_path, use_symlinks=False))[1] == 2


def test_failing_symlinks_fall_back_to_copies(tmp_path: Path, monkeypatch, caplog) -> None:
    def no_symlinks(*args, **kwargs):
        raise OSError("symlinks not permitted")

    monkeypatch.setattr(os, "symlink", no_symlinks)
    manager = make_manager(tmp_path)
    path = Run().save(manager, 1)
    assert "Cannot create symlinks" in caplog.text and "symlinks not permitted" in caplog.text
    assert not (tmp_path / "latest.ckpt").is_symlink()
    assert (tmp_path / "latest.ckpt").read_bytes() == path.read_bytes()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_restore_round_trip_is_exact(tmp_path: Path) -> None:
    manager = make_manager(tmp_path)
    run = Run()
    for _ in range(3):
        run.step()
    run.save(
        manager,
        3,
        dataloader_manager_state={
            "choice_rng_state": {},
            "choice_rng": None,
            "train_iterator_state": None,
            "val_iterator_state": None,
        },
    )
    expected = torch.rand(3)
    other = Run(seed=5)

    class Data:
        def load_state_dict(self, state: dict) -> None:
            self.state = state

    data = Data()
    epoch, step, resume = other.restore(manager, dataloader_manager=data)
    assert (epoch, step, resume) == (0, 3, ResumeState(global_step=3))
    assert torch.equal(torch.rand(3), expected)  # RNG restored
    assert data.state["val_iterator_state"] is None
    for a, b in [
        (other.model, run.model),
        *zip(other.optimizers, run.optimizers, strict=True),
        *zip(other.schedulers, run.schedulers, strict=True),
    ]:
        assert repr(a.state_dict()) == repr(b.state_dict())
    for key, value in run.model.state_dict().items():
        assert torch.equal(other.model.state_dict()[key], value)
    assert other.scaler.state_dict() == run.scaler.state_dict()


@pytest.mark.parametrize("damage", ["corrupt", "truncated"])
def test_a_damaged_newest_file_is_skipped_with_a_warning(
    tmp_path: Path, damage: str, caplog
) -> None:
    manager = make_manager(tmp_path)
    run = Run()
    run.save(manager, 1)
    newest = run.save(manager, 2)
    data = newest.read_bytes()
    newest.write_bytes(b"\x00garbage" * 50 if damage == "corrupt" else data[: len(data) // 3])
    with caplog.at_level(logging.WARNING):
        assert Run(seed=3).restore(make_manager(tmp_path))[1] == 1
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert (
        len(warnings) == 1 and "Skipping checkpoint" in warnings[0] and "latest.ckpt" in warnings[0]
    )
    assert "corrupt or truncated" in warnings[0]
    assert manager.find_latest_valid() == tmp_path / "epoch=0000-step=000001.ckpt"


def test_a_dangling_latest_link_is_skipped(tmp_path: Path, caplog) -> None:
    manager = make_manager(tmp_path)
    run = Run()
    run.save(manager, 1)
    run.save(manager, 2).unlink()
    assert manager.find_latest_valid() == tmp_path / "epoch=0000-step=000001.ckpt"
    assert "Skipping checkpoint" in caplog.text


def test_nothing_valid_raises_and_empty_is_not_found(tmp_path: Path) -> None:
    manager = make_manager(tmp_path)
    assert manager.find_latest_valid() is None and not manager.has_checkpoints()
    with pytest.raises(FileNotFoundError, match=rf"No checkpoint in {tmp_path} to resume from"):
        Run().restore(manager)
    run = Run()
    for step in (1, 2):
        run.save(manager, step).write_bytes(b"broken")
    assert manager.has_checkpoints()
    with pytest.raises(
        CheckpointError, match=r"No valid checkpoint in .*every candidate failed.*checkpoint_path="
    ):
        Run().restore(manager)
    with pytest.raises(CheckpointError, match="No valid checkpoint"):
        manager.find_latest_valid()


def test_explicit_path_is_not_skipped(tmp_path: Path) -> None:
    manager = make_manager(tmp_path)
    run = Run()
    good = run.save(manager, 1)
    bad = run.save(manager, 2)
    bad.write_bytes(b"broken")
    with pytest.raises(CheckpointError, match=str(bad)):
        Run().restore(manager, checkpoint_path=bad)
    assert Run().restore(manager, checkpoint_path=good)[1] == 1


def test_payload_is_written_as_is_and_foreign_files_are_left_alone(tmp_path: Path) -> None:
    (tmp_path / "pretrained.ckpt").write_bytes(b"user file")
    manager = make_manager(tmp_path, max_checkpoints=1)
    run = Run()
    payload = build_payload(
        model=run.model,
        optimizers=run.optimizers,
        schedulers=run.schedulers,
        scaler_state=None,
        rng_states=None,
        dataloader_manager_state=None,
        resume_state=ResumeState(global_step=7),
        epoch=0,
        global_step=7,
        metrics_history={"note": "as is"},
    )
    path = manager.write_payload(payload, epoch=0, global_step=7, metrics=None)
    assert path.name == "epoch=0000-step=000007.ckpt"
    assert read_checkpoint(path)["metrics_history"] == {"note": "as is"}
    run.save(manager, 8)
    manager.wait()
    assert names(tmp_path) == ["epoch=0000-step=000008.ckpt", "latest.ckpt", "pretrained.ckpt"]
    with pytest.raises(TypeError, match="save_checkpoint needs model="):
        manager.save_checkpoint(epoch=0, global_step=1)


CHILD = textwrap.dedent(
    """
    import sys, torch
    from trainer.config import CheckpointConfig
    from trainer.checkpoints.manager import CheckpointManager
    from trainer.resume import ResumeState

    root, step = sys.argv[1], int(sys.argv[2])
    manager = CheckpointManager(CheckpointConfig(root_dir=root, max_checkpoints=2, monitor_metric="loss"))
    model = torch.nn.Linear(2, 2)
    model.register_buffer("big", torch.zeros(4_000_000))
    while True:
        step += 1
        model.big.fill_(step)
        manager.save_checkpoint(model=model, optimizers=[], schedulers=[], scaler=None,
                                resume_state=ResumeState(global_step=step), epoch=0, global_step=step,
                                metrics={"loss": 1.0 / step})
    """
)


def _latest_name(root: Path) -> str | None:
    try:
        return os.readlink(root / "latest.ckpt")
    except OSError:
        return None


@pytest.mark.slow
def test_kill_9_during_saves_leaves_latest_complete(tmp_path: Path, caplog) -> None:
    rng = random.Random(1234)
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    step, before = 0, None
    for _ in range(3):
        child = subprocess.Popen(
            [sys.executable, "-c", CHILD, str(tmp_path), str(step)], env=env, cwd=REPO
        )
        try:
            deadline = time.monotonic() + 60
            while _latest_name(tmp_path) == before:  # wait for a first save by this child
                assert child.poll() is None, "the saving subprocess died on its own"
                assert time.monotonic() < deadline
                time.sleep(0.02)
            time.sleep(rng.uniform(0.0, 0.6))
        finally:
            child.send_signal(signal.SIGKILL)
            child.wait()
        assert child.returncode == -signal.SIGKILL
        caplog.clear()
        payload = read_checkpoint(tmp_path / "latest.ckpt")  # complete, no skipping needed
        assert payload["model_state_dict"]["big"].eq(payload["global_step"]).all()
        assert payload["global_step"] > step
        step, before = payload["global_step"], _latest_name(tmp_path)
        manager = make_manager(tmp_path, max_checkpoints=2, monitor_metric="loss")
        assert manager.find_latest_valid() == (tmp_path / "latest.ckpt").resolve()
        assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
        # best is a second pointer, moved after latest: a kill between the two leaves it one save
        # behind, still a complete file (the metric, 1/step, improves with every save)
        assert read_checkpoint(manager.best_path())["global_step"] in (step - 1, step)
        with manager.writer():  # the killed child's temp files are orphans: the writer removes them
            assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
        warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
        assert all(w.startswith(f"Taking over the lock of {tmp_path}") for w in warnings)
        assert read_checkpoint(manager.best_path())["global_step"] in (step - 1, step)
        model = torch.nn.Linear(2, 2)
        model.register_buffer("big", torch.zeros(4_000_000))
        assert manager.restore_from_checkpoint(model=model, optimizers=[], schedulers=[])[1] == step
