"""Asynchronous checkpoints: the file a sync save writes, every guarantee kept, errors never dropped.

The trainer tests run the three-loader harness run (map-style, stateful stream, skip fallback;
accumulation 2, so 50 optimizer steps per 100-batch epoch) with ``async_save=True`` and compare
sample ids and parameters with an uninterrupted run that saves synchronously.
"""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from statefuldata import MultiDataLoaderConfig
from tests.trainer.harness import InterruptAt, Model, SignalAt, assert_same, loaders, snapshot
from trainer import (
    Callback,
    CheckpointConfig,
    CheckpointWriteError,
    GenericTrainer,
    GenericTrainerConfig,
    PerformanceConfig,
)
from trainer.checkpoints import build_payload, read_checkpoint
from trainer.checkpoints.background import BackgroundJob
from trainer.checkpoints.commit import FolderCommitter
from trainer.checkpoints.integrity import IntegrityStatus, check_integrity
from trainer.checkpoints.lock import LOCK_NAME
from trainer.checkpoints.manager import CheckpointManager
from trainer.checkpoints.snapshot import StagingArea
from trainer.resume import ResumeState

EPOCHS = 2
REPO = Path(__file__).resolve().parents[2]


def trainer_for(
    root: Path,
    *,
    log: list | None = None,
    callbacks: tuple[Callback, ...] = (),
    async_save: bool = True,
    defer_snapshot: bool = True,
) -> GenericTrainer:
    """The harness run (tests/trainer/harness.py), saving every 5 steps and at each epoch end."""
    torch.manual_seed(0)
    model = Model()
    opt_body = torch.optim.SGD(model.body.parameters(), lr=0.05, momentum=0.9)
    opt_head = torch.optim.AdamW(model.head.parameters(), lr=0.01)
    schedulers = [
        torch.optim.lr_scheduler.StepLR(opt_body, step_size=7, gamma=0.5),
        torch.optim.lr_scheduler.ExponentialLR(opt_head, gamma=0.97),
    ]
    config = GenericTrainerConfig(
        seed=5,
        train_loader_config=MultiDataLoaderConfig(
            sampling_strategy="weighted",
            dataloader_weights=[0.37, 0.41, 0.22],
            dataloader_names=["map", "stream", "fallback"],
            epoch_length_policy="fixed_num_steps",
            steps_per_epoch=100,
            choice_rng_seed=3,
        ),
        checkpoint=CheckpointConfig(
            root_dir=root,
            save_every_n_steps=5,
            max_checkpoints=3,
            async_save=async_save,
            defer_snapshot=defer_snapshot,
        ),
        performance=PerformanceConfig(gradient_accumulation_steps=2, clip_grad_norm=1.0),
        progress_bar=False,
        log_every_n_steps=1,
    )
    trainer = GenericTrainer(config, model, [opt_body, opt_head], schedulers, callbacks=callbacks)

    def step(t, batch, batch_idx, dataloader_idx, dataloader_name):
        if log is not None:
            log.append((t.state.global_step, dataloader_name, batch["id"].tolist()))
        prediction = t.model(batch["x"])
        return {"loss": torch.nn.functional.mse_loss(prediction.float(), batch["y"])}

    trainer.set_training_step(step)
    return trainer


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, list]:
    """The uninterrupted run, saving synchronously."""
    log: list = []
    trainer = trainer_for(tmp_path_factory.mktemp("ref"), log=log, async_save=False)
    assert trainer.fit(loaders(), max_epochs=EPOCHS).status == "completed"
    return snapshot(trainer), log


def _resume_and_compare(root: Path, first_log: list, reference: tuple[dict, list], **kw) -> None:
    expected, expected_log = reference
    log: list = []
    trainer = trainer_for(root, log=log)
    assert trainer.fit(loaders(**kw), max_epochs=EPOCHS).status == "completed"
    assert first_log + log == expected_log
    assert_same(snapshot(trainer), expected)


# 37: mid-epoch, inside an accumulation window; 100: the last batch of epoch 0 (the preemption
# save and the epoch-end save meet, across the epoch boundary)
@pytest.mark.parametrize("at", [37, 100])
def test_preempted_async_run_resumes_exactly(tmp_path: Path, reference, at: int) -> None:
    log: list = []
    trainer = trainer_for(tmp_path, log=log, callbacks=(SignalAt(at),))
    assert trainer.fit(loaders(), max_epochs=EPOCHS).status == "preempted"
    saved = read_checkpoint(tmp_path / "latest.ckpt")  # durable when fit() returned
    assert saved["global_step"] == (at + 1) // 2  # the next step boundary (accumulation 2)
    assert saved["resume_state"]["save_reason"] == ("step" if at == 100 else "preempted")
    _resume_and_compare(tmp_path, log, reference)


@pytest.mark.slow  # DataLoader worker processes
def test_preempted_async_run_with_workers_resumes_exactly(tmp_path: Path) -> None:
    reference_log: list = []  # with workers the streams shard differently: their own reference
    trainer = trainer_for(tmp_path / "ref", log=reference_log, async_save=False)
    assert trainer.fit(loaders(num_workers=2), max_epochs=EPOCHS).status == "completed"
    reference = (snapshot(trainer), reference_log)
    log: list = []  # batch 61: mid-epoch, with batches prefetched by the workers
    trainer = trainer_for(tmp_path / "run", log=log, callbacks=(SignalAt(61),))
    assert trainer.fit(loaders(num_workers=2), max_epochs=EPOCHS).status == "preempted"
    _resume_and_compare(tmp_path / "run", log, reference, num_workers=2)


class _HeldCommits:
    """Wraps FolderCommitter.commit: records (start/end, step); holds the commit of ``hold``."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, hold: int | None, delay: float = 0.0):
        self.events: list[tuple[str, int]] = []
        self.release = threading.Event()
        self.hold, self.delay = hold, delay
        original = FolderCommitter.commit

        def commit(committer, payload, path, **kwargs):
            self.events.append(("start", kwargs["global_step"]))
            if kwargs["global_step"] == self.hold:
                assert self.release.wait(timeout=60), "the test never released the commit"
            time.sleep(self.delay)
            try:
                return original(committer, payload, path, **kwargs)
            finally:
                self.events.append(("end", kwargs["global_step"]))

        monkeypatch.setattr(FolderCommitter, "commit", commit)


class _SignalThenRelease(Callback):
    """After batch ``at``: sends SIGUSR1, and lets the held commit go on 0.3 s later."""

    def __init__(self, at: int, release: threading.Event) -> None:
        self.at, self.seen, self.release = at, 0, release

    def on_train_batch_end(self, trainer, outputs, batch_idx, dataloader_idx, name) -> None:
        self.seen += 1
        if self.seen == self.at:
            assert trainer.checkpoints.save_in_flight  # the step-5 save is held in the background
            os.kill(os.getpid(), signal.SIGUSR1)
            threading.Timer(0.3, self.release.set).start()


def test_a_preemption_during_an_async_save_waits_for_it_then_saves(
    tmp_path: Path, reference, monkeypatch: pytest.MonkeyPatch
) -> None:
    held = _HeldCommits(monkeypatch, hold=5)
    log: list = []
    # step 5 ends at batch 10 (its save is held); the signal at batch 11 is acted on at step 6
    trainer = trainer_for(tmp_path, log=log, callbacks=(_SignalThenRelease(11, held.release),))
    assert trainer.fit(loaders(), max_epochs=EPOCHS).status == "preempted"
    assert held.events == [("start", 5), ("end", 5), ("start", 6), ("end", 6)]
    for step in (5, 6):
        path = trainer.checkpoints.path_for(0, step)
        assert check_integrity(path).status is IntegrityStatus.VERIFIED
        assert read_checkpoint(path)["global_step"] == step
    assert (tmp_path / "latest.ckpt").resolve() == trainer.checkpoints.path_for(0, 6)
    monkeypatch.undo()
    _resume_and_compare(tmp_path, log, reference)


def test_fit_returns_only_after_the_last_async_save_is_durable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    held = _HeldCommits(monkeypatch, hold=None, delay=0.2)  # every background commit is slow
    trainer = trainer_for(tmp_path)
    assert trainer.fit(loaders(), max_epochs=1).status == "completed"
    final = trainer.checkpoints.path_for(1, 50)  # the epoch-end save records epoch 1 at step 50
    assert held.events[-1] == ("end", 50) and trainer.last_checkpoint == final
    assert not trainer.checkpoints.save_in_flight
    assert (tmp_path / "latest.ckpt").resolve() == final
    assert check_integrity(final).status is IntegrityStatus.VERIFIED
    assert read_checkpoint(tmp_path / "latest.ckpt")["global_step"] == 50
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    assert not trainer.checkpoints.holds_lock and (tmp_path / LOCK_NAME).read_bytes() == b""
    assert [p.name for p in trainer.checkpoints.list_checkpoints()] == [  # rotated: 3 kept
        "epoch=0000-step=000045.ckpt",
        "epoch=0000-step=000050.ckpt",  # the step save, then the epoch-end one
        "epoch=0001-step=000050.ckpt",
    ]


class _FullDisk:
    """The temp file of a save, failing with ENOSPC at its first write."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def write(self, data: Any) -> int:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def __enter__(self) -> _FullDisk:
        return self

    def __exit__(self, *exc: object) -> None:
        self._inner.close()


def _model(fill: float) -> torch.nn.Module:
    model = torch.nn.Linear(2, 2)
    model.register_buffer("big", torch.full((1000,), fill))
    return model


def _payload(step: int, fill: float = 1.0, model: torch.nn.Module | None = None) -> dict:
    """A small v1 payload at ``step``, of ``model`` (a fresh one holding ``fill`` by default)."""
    model = _model(fill) if model is None else model
    return build_payload(
        model=model,
        optimizers=[],
        schedulers=[],
        scaler_state=None,
        rng_states=None,
        dataloader_manager_state=None,
        resume_state=ResumeState(global_step=step),
        epoch=0,
        global_step=step,
    )


def test_an_error_in_the_background_write_is_raised_by_the_next_save_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    manager = CheckpointManager(CheckpointConfig(root_dir=tmp_path, async_save=True))
    manager.write_payload(_payload(1, 1.0), epoch=0, global_step=1, metrics=None)
    manager.wait()
    real_fdopen = os.fdopen
    monkeypatch.setattr(os, "fdopen", lambda fd, *a, **k: _FullDisk(real_fdopen(fd, *a, **k)))
    failed = manager.write_payload(_payload(2, 2.0), epoch=0, global_step=2, metrics=None)
    assert failed.name == "epoch=0000-step=000002.ckpt"  # returned at once; written later
    pattern = rf"Cannot save {failed.name} \(checkpoint\) in {tmp_path}: No space left on device"
    with pytest.raises(CheckpointWriteError, match=pattern) as info:
        manager.write_payload(_payload(3, 3.0), epoch=0, global_step=3, metrics=None)
    assert info.value.errno == errno.ENOSPC
    assert any(
        "in the background by the save of" in n for n in getattr(info.value, "__notes__", [""])
    )
    manager.wait()  # raised once: nothing left to raise
    monkeypatch.undo()
    assert read_checkpoint(tmp_path / "latest.ckpt")["global_step"] == 1
    assert not failed.exists() and not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    assert not manager.holds_lock


def test_fit_raises_a_failed_last_save_and_notes_it_on_another_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    original = FolderCommitter.commit

    def commit(committer, payload, path, **kwargs):
        if kwargs["global_step"] == 50:  # the epoch-end save
            raise CheckpointWriteError(errno.ENOSPC, "Cannot save the epoch-end file (ENOSPC)")
        return original(committer, payload, path, **kwargs)

    monkeypatch.setattr(FolderCommitter, "commit", commit)
    with pytest.raises(CheckpointWriteError, match=r"Cannot save the epoch-end file \(ENOSPC\)"):
        trainer_for(tmp_path / "a").fit(loaders(), max_epochs=1)
    assert read_checkpoint(tmp_path / "a" / "latest.ckpt")["global_step"] == 45

    def failing(committer, payload, path, **kwargs):
        raise CheckpointWriteError(errno.ENOSPC, "Cannot save (ENOSPC)")

    monkeypatch.setattr(FolderCommitter, "commit", failing)
    trainer = trainer_for(tmp_path / "b", callbacks=(InterruptAt(12),))  # after the step-5 save
    with pytest.raises(KeyboardInterrupt) as info:
        trainer.fit(loaders(), max_epochs=1)
    notes = getattr(info.value, "__notes__", [])
    assert notes == [
        f"also, the save of {trainer.checkpoints.path_for(0, 5)} failed: CheckpointWriteError: "
        "[Errno 28] Cannot save (ENOSPC)"
    ]
    assert not trainer.checkpoints.save_in_flight and not trainer.checkpoints.holds_lock


KILLED_CHILD = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    import torch
    import trainer.checkpoints.io as checkpoint_io
    from trainer.checkpoints import build_payload
    from trainer.checkpoints.commit import FolderCommitter
    from trainer.checkpoints.manager import CheckpointManager
    from trainer.checkpoints.snapshot import Snapshot
    from trainer.config import CheckpointConfig
    from trainer.resume import ResumeState

    root, signals, where = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]

    def hold(name):  # on the background writer: tell the test, then wait for the kill
        (signals / name).touch()
        time.sleep(600)

    class Halfway:  # the temp file of step 2: its first 1 MiB is written, then the write stops
        def __init__(self, f):
            self.f, self.written = f, 0
        def write(self, data):
            if self.written >= 1 << 20:
                hold("writing")
            self.written += memoryview(data).nbytes
            return self.f.write(data)
        def __getattr__(self, name):
            return getattr(self.f, name)

    save, point = checkpoint_io.save_with_checksum, FolderCommitter.point
    def paused_save(obj, f):
        return save(obj, Halfway(f) if where == "mid-file" and obj["global_step"] == 2 else f)
    def paused_point(committer, name, target, **kwargs):
        if where == "before-latest" and target.name.endswith("step=000002.ckpt"):
            hold("writing")  # the file is complete and renamed; latest not moved yet
        return point(committer, name, target, **kwargs)
    copy = Snapshot.copy_deferred
    def paused_copy(snapshot):
        if where == "mid-copy" and snapshot.payload["global_step"] == 2:
            hold("writing")  # the save returned; its deferred copy is not made yet
        return copy(snapshot)
    checkpoint_io.save_with_checksum, FolderCommitter.point = paused_save, paused_point
    Snapshot.copy_deferred = paused_copy

    manager = CheckpointManager(CheckpointConfig(root_dir=root, async_save=True))
    model = torch.nn.Linear(2, 2)
    model.register_buffer("big", torch.zeros(1_000_000))
    for step in (1, 2):
        model.big.fill_(step)
        payload = build_payload(
            model=model, optimizers=[], schedulers=[], scaler_state=None, rng_states=None,
            dataloader_manager_state=None, resume_state=ResumeState(global_step=step),
            epoch=0, global_step=step,
        )  # "big" is copied on the writer thread, as the trainer defers its parameters
        manager.write_payload_async(
            payload, epoch=0, global_step=step, metrics=None, defer=[model.big]
        )
        if step == 1:
            manager.wait()
    (signals / "returned").touch()
    manager.wait_snapshot()  # as the trainer does before its next optimizer step
    model.big.fill_(-1.0)  # training goes on: the snapshot being written is not affected
    time.sleep(600)
    """
)


@pytest.mark.slow  # a real subprocess, killed with SIGKILL
@pytest.mark.parametrize("where", ["mid-copy", "mid-file", "before-latest"])
def test_kill_9_during_an_async_save_keeps_the_previous_checkpoint(
    tmp_path: Path, where: str
) -> None:
    root, signals = tmp_path / "run", tmp_path / "signals"
    signals.mkdir()
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    child = subprocess.Popen(
        [sys.executable, "-c", KILLED_CHILD, str(root), str(signals), where], env=env, cwd=REPO
    )
    try:
        deadline = time.monotonic() + 120
        while not ((signals / "writing").exists() and (signals / "returned").exists()):
            assert child.poll() is None, "the saving subprocess died on its own"
            assert time.monotonic() < deadline, "the save of step 2 never reached its pause"
            time.sleep(0.01)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    assert child.returncode == -signal.SIGKILL
    first, second = root / "epoch=0000-step=000001.ckpt", root / "epoch=0000-step=000002.ckpt"
    assert (root / "latest.ckpt").resolve() == first
    assert check_integrity(first).status is IntegrityStatus.VERIFIED
    assert read_checkpoint(root / "latest.ckpt")["model_state_dict"]["big"].eq(1.0).all()
    temps = [p for p in root.iterdir() if p.name.endswith(".tmp")]
    if where == "mid-copy":  # nothing of step 2 was written
        assert not second.exists() and not temps
    elif where == "mid-file":  # the partial file never got its name
        assert not second.exists() and len(temps) == 1 and temps[0].stat().st_size >= 1 << 20
    else:  # complete under its name; latest still on step 1
        assert not temps and check_integrity(second).status is IntegrityStatus.VERIFIED
        assert read_checkpoint(second)["model_state_dict"]["big"].eq(2.0).all()  # the snapshot
    manager = CheckpointManager(CheckpointConfig(root_dir=root, async_save=True))
    model = torch.nn.Linear(2, 2)
    model.register_buffer("big", torch.zeros(1_000_000))
    assert manager.restore_from_checkpoint(model, [], [], restore_rng=False)[1] == 1
    assert model.big.eq(1.0).all()
    with manager.writer():  # the killed process's temp file is an orphan: the next writer drops it
        assert not [p for p in root.iterdir() if p.name.endswith(".tmp")]


EXITING_CHILD = textwrap.dedent(
    """
    import sys, torch
    from trainer.checkpoints.manager import CheckpointManager
    from trainer.config import CheckpointConfig

    manager = CheckpointManager(CheckpointConfig(root_dir=sys.argv[1], async_save=True))
    model = torch.nn.Linear(2, 2)
    model.register_buffer("big", torch.full((4_000_000,), 3.0))
    manager.save_checkpoint(model=model, optimizers=[], epoch=0, global_step=3)
    assert manager.save_in_flight
    """  # and the interpreter exits with the save in flight
)


@pytest.mark.slow  # a real subprocess
def test_an_interpreter_exiting_with_an_async_save_in_flight_finishes_it(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    done = subprocess.run(
        [sys.executable, "-c", EXITING_CHILD, str(tmp_path)], env=env, cwd=REPO, timeout=120
    )
    assert done.returncode == 0
    path = tmp_path / "epoch=0000-step=000003.ckpt"
    assert (tmp_path / "latest.ckpt").resolve() == path
    assert check_integrity(path).status is IntegrityStatus.VERIFIED
    assert read_checkpoint(path)["model_state_dict"]["big"].eq(3.0).all()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_a_second_async_save_never_overwrites_the_buffers_of_a_write_in_flight(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    manager = CheckpointManager(CheckpointConfig(root_dir=tmp_path, async_save=True))
    model = _model(1.0)

    held = _HeldCommits(monkeypatch, hold=1)  # the first write stays in flight ...
    original_snapshot, original_wait = StagingArea.snapshot, BackgroundJob.wait

    def snapshot_spy(staging, payload, **kwargs):
        held.events.append(("snapshot", payload["global_step"]))
        return original_snapshot(staging, payload, **kwargs)

    def wait_spy(job, **kwargs):
        if threading.current_thread().name == "second save" and not held.release.is_set():
            held.events.append(("second save waits", 2))
            held.release.set()  # ... until the second save waits for it
        original_wait(job, **kwargs)

    monkeypatch.setattr(StagingArea, "snapshot", snapshot_spy)
    first = manager.write_payload(_payload(1, model=model), epoch=0, global_step=1, metrics=None)
    staged = manager._saver.staging.nbytes
    with torch.no_grad():
        model.big.fill_(2.0)  # the next step changes the tensor the first snapshot copied
    monkeypatch.setattr(BackgroundJob, "wait", wait_spy)
    second = threading.Thread(
        name="second save",
        target=manager.write_payload,
        args=(_payload(2, model=model),),
        kwargs={"epoch": 0, "global_step": 2, "metrics": None},
    )
    second.start()
    second.join(timeout=60)
    assert not second.is_alive()
    manager.wait()
    # the second snapshot, into the same reused buffers, came only after the first write ended
    events = held.events
    assert events.index(("second save waits", 2)) < events.index(("end", 1))
    assert events.index(("end", 1)) < events.index(("snapshot", 2)) < events.index(("start", 2))
    assert events.count(("snapshot", 2)) == 1 and manager._saver.staging.nbytes == staged
    assert torch.equal(read_checkpoint(first)["model_state_dict"]["big"], torch.full((1000,), 1.0))
    assert torch.equal(
        read_checkpoint(tmp_path / "latest.ckpt")["model_state_dict"]["big"],
        torch.full((1000,), 2.0),
    )
