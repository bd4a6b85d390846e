"""One writer per checkpoint folder: refusals name the holder, dead holders are taken over."""

from __future__ import annotations

import errno
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from trainer.checkpoints import CheckpointLockedError, CheckpointWriteError, read_checkpoint
from trainer.checkpoints.atomic import host_tag
from trainer.checkpoints.lock import LOCK_NAME, FolderLock, read_holder
from trainer.checkpoints.manager import CheckpointManager
from trainer.config import CheckpointConfig

REPO = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}


def manager(root: Path) -> CheckpointManager:
    return CheckpointManager(CheckpointConfig(root_dir=root))


def save(m: CheckpointManager, step: int) -> Path:
    model = torch.nn.Linear(2, 2)
    return m.save_checkpoint(model=model, optimizers=[], schedulers=[], epoch=0, global_step=step)


def refusal(root: Path, pid: int) -> str:
    return (
        rf"Checkpoint folder {root} is locked by another writer: pid {pid} on host "
        rf"{socket.gethostname()} since \d{{4}}-\d\d-\d\dT.*wait for that run to end, stop it, or "
        r"give this one another CheckpointConfig.root_dir"
    )


def test_a_second_manager_in_this_process_is_refused_until_release(tmp_path: Path) -> None:
    first, second = manager(tmp_path), manager(tmp_path)
    first.acquire()
    first.acquire()  # reentrant
    assert first.holds_lock and not second.holds_lock
    holder = read_holder(tmp_path)
    assert holder is not None and holder["pid"] == os.getpid()
    assert holder["host"] == socket.gethostname() and holder["since"]
    with pytest.raises(CheckpointLockedError, match=refusal(tmp_path, os.getpid())) as info:
        second.acquire()
    assert "this process, through another CheckpointManager or GenericTrainer" in str(info.value)
    with pytest.raises(CheckpointLockedError, match="locked by another writer"):
        save(second, 1)
    assert second.list_checkpoints() == [] and not second.has_checkpoints()
    path = save(first, 1)  # the holder saves under its own hold
    first.release()
    assert first.holds_lock
    first.release()
    assert not first.holds_lock and (tmp_path / LOCK_NAME).read_bytes() == b""
    with pytest.raises(RuntimeError, match=r"release\(\) of .* without a matching acquire\(\)"):
        first.release()
    with second.writer():
        assert read_holder(tmp_path)["pid"] == os.getpid()
        save(second, 2)
    assert read_checkpoint(path)["global_step"] == 1


def test_reading_needs_no_lock(tmp_path: Path) -> None:
    writer = manager(tmp_path)
    save(writer, 1)
    with writer.writer():
        reader = manager(tmp_path)  # constructing, listing, finding and restoring: all allowed
        assert reader.find_latest_valid() == (tmp_path / "latest.ckpt").resolve()
        assert reader.restore_from_checkpoint(torch.nn.Linear(2, 2), [], [])[1] == 1
        assert not reader.holds_lock


def test_a_lock_file_naming_a_dead_holder_is_taken_over_with_a_warning(
    tmp_path: Path, caplog
) -> None:
    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    ended.wait()
    stale = {"pid": ended.pid, "host": socket.gethostname(), "since": "2024-01-01T00:00:00+0000"}
    (tmp_path / LOCK_NAME).write_text(json.dumps(stale))
    m = manager(tmp_path)
    with caplog.at_level(logging.WARNING, logger="trainer.checkpoints.lock"):
        m.acquire()
    assert f"Taking over the lock of {tmp_path} from pid {ended.pid}" in caplog.text
    assert "ended without releasing it" in caplog.text
    assert read_holder(tmp_path)["pid"] == os.getpid()
    m.release()


def test_a_file_system_without_locks_is_named(tmp_path: Path, monkeypatch) -> None:
    fcntl = pytest.importorskip("fcntl", reason="flock is the POSIX lock")

    def no_locks(fd: int, operation: int) -> None:
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

    monkeypatch.setattr(fcntl, "flock", no_locks)
    with pytest.raises(
        CheckpointWriteError,
        match=rf"Cannot save \.lock \(writer lock file\) in {tmp_path}: .*ENOLCK",
    ):
        manager(tmp_path).acquire()


def test_a_dropped_holder_unlocks(tmp_path: Path) -> None:
    lock = FolderLock(tmp_path)
    lock.acquire()
    del lock
    with FolderLock(tmp_path):
        pass


def test_constructing_deletes_nothing_and_the_writer_removes_only_orphaned_temp_files(
    tmp_path: Path,
) -> None:
    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    ended.wait()
    tag = host_tag()
    orphans = [
        f".epoch=0000-step=000003.ckpt.{ended.pid}@{tag}.0123abcd.tmp",  # its writer has ended
        f".best.json.{os.getpid()}@{tag}.0123abcd.tmp",  # ours, from an earlier failed save
    ]
    kept = [
        f".epoch=0000-step=000004.ckpt.1@{tag}.0123abcd.tmp",  # pid 1 is running
        ".epoch=0000-step=000005.ckpt.7@00000000.0123abcd.tmp",  # another host
        ".epoch=0000-step=000006.ckpt.abc.tmp",  # no pid in the name (older version)
        ".other.tmp",  # not a checkpoint temp file
    ]
    for name in orphans + kept:
        (tmp_path / name).write_bytes(b"half")
    m = manager(tmp_path)
    assert m.find_latest_valid() is None and not m.has_checkpoints()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != LOCK_NAME) == sorted(
        orphans + kept
    )  # readers delete nothing
    with m.writer():
        assert sorted(p.name for p in tmp_path.iterdir() if p.name != LOCK_NAME) == sorted(kept)


HOLDER = textwrap.dedent(
    """
    import os, sys, time
    from trainer.checkpoints.lock import FolderLock

    root, fork = sys.argv[1], sys.argv[2] == "fork"
    lock = FolderLock(root)
    lock.acquire()
    if fork:
        child = os.fork()
        if child == 0:  # like a DataLoader worker: inherits the descriptor, outlives the parent
            time.sleep(60)
            os._exit(0)
        print(child, flush=True)
    print("held", flush=True)
    time.sleep(60)
    """
)


def _start_holder(root: Path, fork: bool) -> tuple[subprocess.Popen, int | None]:
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(root), "fork" if fork else "plain"],
        env=ENV,
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout is not None
    grandchild = int(holder.stdout.readline()) if fork else None
    assert holder.stdout.readline() == "held\n"
    return holder, grandchild


@pytest.mark.slow
@pytest.mark.parametrize("fork", [False, True])
def test_another_process_is_refused_and_its_lock_is_taken_over_after_sigkill(
    tmp_path: Path, caplog, fork: bool
) -> None:
    holder, grandchild = _start_holder(tmp_path, fork)
    try:
        m = manager(tmp_path)
        with pytest.raises(CheckpointLockedError, match=refusal(tmp_path, holder.pid)):
            save(m, 1)
        assert not m.has_checkpoints()
        holder.send_signal(signal.SIGKILL)
        holder.wait()
        with caplog.at_level(logging.WARNING, logger="trainer.checkpoints.lock"):
            save(m, 1)  # the forked child still runs, yet holds no lock
        assert f"Taking over the lock of {tmp_path} from pid {holder.pid}" in caplog.text
        assert read_checkpoint(tmp_path / "latest.ckpt")["global_step"] == 1
    finally:
        holder.kill()
        holder.wait()
        if grandchild is not None:
            os.kill(grandchild, signal.SIGKILL)


SAVER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    import torch
    import trainer.checkpoints.io as checkpoint_io
    from trainer.config import CheckpointConfig
    from trainer.checkpoints.manager import CheckpointManager

    root, signals = Path(sys.argv[1]), Path(sys.argv[2])
    original = checkpoint_io.save_with_checksum

    def paused(obj, f):  # the temp file is complete; wait before it replaces the target
        original(obj, f)
        if obj["global_step"] == 2:
            (signals / "saving").touch()
            while not (signals / "go").exists():
                time.sleep(0.01)

    checkpoint_io.save_with_checksum = paused
    manager = CheckpointManager(CheckpointConfig(root_dir=root))
    model = torch.nn.Linear(2, 2)
    model.register_buffer("big", torch.zeros(250_000))
    for step in (1, 2):
        model.big.fill_(step)
        manager.save_checkpoint(model=model, optimizers=[], schedulers=[], epoch=0, global_step=step)
    """
)


@pytest.mark.slow
def test_readers_in_another_process_leave_a_save_in_flight_intact(tmp_path: Path, capsys) -> None:
    from trainer.__main__ import main

    root, signals = tmp_path / "run", tmp_path / "signals"
    signals.mkdir()
    saver = subprocess.Popen(
        [sys.executable, "-c", SAVER, str(root), str(signals)], env=ENV, cwd=REPO
    )
    try:
        deadline = time.monotonic() + 120
        while not (signals / "saving").exists():
            assert saver.poll() is None, "the saving process died"
            assert time.monotonic() < deadline
            time.sleep(0.01)
        in_flight = [p for p in root.iterdir() if p.name.endswith(".tmp")]
        assert len(in_flight) == 1 and f".{saver.pid}@" in in_flight[0].name
        reader = manager(root)  # what a second trainer, an evaluation job or inspect does
        assert reader.find_latest_valid() == (root / "epoch=0000-step=000001.ckpt").resolve()
        model = torch.nn.Linear(2, 2)
        model.register_buffer("big", torch.zeros(250_000))
        assert reader.restore_from_checkpoint(model, [], [])[1] == 1
        assert main(["inspect", str(root / "latest.ckpt")]) == 0
        with pytest.raises(CheckpointLockedError, match=refusal(root, saver.pid)):
            save(reader, 3)
        assert [p for p in root.iterdir() if p.name.endswith(".tmp")] == in_flight
        (signals / "go").touch()
        assert saver.wait(timeout=120) == 0
    finally:
        saver.kill()
        saver.wait()
    latest = read_checkpoint(root / "latest.ckpt")
    assert latest["global_step"] == 2 and latest["model_state_dict"]["big"].eq(2).all()
    assert not [p for p in root.iterdir() if p.name.endswith(".tmp")]
    capsys.readouterr()
