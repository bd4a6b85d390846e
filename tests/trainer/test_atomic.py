"""File modes follow the umask (or CheckpointConfig.file_mode); failed saves name the folder and cause.

The full-disk and read-only cases run for real on a small tmpfs when this process may mount one
(root); the injected variants, which always run, raise the OSError at the write call itself.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from trainer.checkpoints import CheckpointWriteError, read_checkpoint
from trainer.checkpoints.atomic import atomic_write, host_tag, parse_temp_name, temp_path
from trainer.checkpoints.lock import LOCK_NAME
from trainer.checkpoints.manager import CheckpointManager
from trainer.config import CheckpointConfig


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@contextlib.contextmanager
def umask(value: int) -> Iterator[None]:
    old = os.umask(value)
    try:
        yield
    finally:
        os.umask(old)


def save(manager: CheckpointManager, step: int, floats: int = 4, loss: float = 1.0) -> Path:
    model = torch.nn.Linear(2, 2)
    model.register_buffer("big", torch.full((floats,), float(step)))
    path = manager.save_checkpoint(
        model=model,
        optimizers=[],
        schedulers=[],
        epoch=0,
        global_step=step,
        metrics={"loss": loss},
    )
    manager.wait()  # the best copy and rotation, made in the background, under the same umask
    return path


def make(root: Path, **kwargs) -> CheckpointManager:
    return CheckpointManager(CheckpointConfig(root_dir=root, monitor_metric="loss", **kwargs))


@pytest.mark.parametrize(
    ("mask", "file_mode", "expected"),
    [(0o022, None, 0o644), (0o002, None, 0o664), (0o077, None, 0o600), (0o022, 0o600, 0o600)],
)
@pytest.mark.parametrize("use_symlinks", [True, False])
def test_new_files_follow_the_umask_unless_a_mode_is_configured(
    tmp_path: Path, mask: int, file_mode: int | None, expected: int, use_symlinks: bool
) -> None:
    with umask(mask):
        manager = make(tmp_path, file_mode=file_mode, use_symlinks=use_symlinks)
        path = save(manager, 1)
    written = [path, tmp_path / "best.json", tmp_path / LOCK_NAME]
    if not use_symlinks:
        written += [tmp_path / "latest.ckpt", tmp_path / "best.ckpt"]
    assert {p.name: mode_of(p) for p in written} == {p.name: expected for p in written}


def test_a_configured_mode_is_exact_whatever_the_umask(tmp_path: Path) -> None:
    with umask(0o077):
        path = save(make(tmp_path, file_mode=0o640), 1)
    assert mode_of(path) == 0o640


@pytest.mark.parametrize("bad", [0o1000, -1, "644", True, 6.0])
def test_file_mode_is_validated(bad: object) -> None:
    with pytest.raises(ValueError, match=rf"'file_mode' must be None .* 0o777 .*\(got {bad!r}\)"):
        CheckpointConfig(file_mode=bad)


def test_temp_names_carry_pid_and_host(tmp_path: Path) -> None:
    tmp = temp_path(tmp_path / "epoch=1.ckpt")
    name = parse_temp_name(tmp.name)
    assert name is not None and (name.target, name.pid, name.host) == (
        "epoch=1.ckpt",
        os.getpid(),
        host_tag(),
    )
    assert parse_temp_name(".x.ckpt.abc.tmp") is None


class FullDisk:
    """The file object atomic_write gets, failing with ENOSPC once ``room`` bytes are written."""

    def __init__(self, inner, room: int) -> None:
        self._inner, self._room = inner, room

    def write(self, data) -> int:
        size = memoryview(data).nbytes
        if size > self._room:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self._room -= size
        return self._inner.write(data)

    def __getattr__(self, name: str):
        return getattr(self._inner, name)

    def __enter__(self) -> FullDisk:
        return self

    def __exit__(self, *exc: object) -> None:
        self._inner.close()


def _assert_untouched(root: Path, step: int) -> None:
    assert read_checkpoint(root / "latest.ckpt")["global_step"] == step
    assert not [p for p in root.iterdir() if p.name.endswith(".tmp")]
    restored = torch.nn.Linear(2, 2)
    restored.register_buffer("big", torch.zeros(4))
    assert make(root).restore_from_checkpoint(restored, [], [])[1] == step  # a fresh constructor


@pytest.mark.parametrize("use_symlinks", [True, False])
def test_injected_enospc_names_the_folder_and_keeps_earlier_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, use_symlinks: bool
) -> None:
    manager = make(tmp_path, use_symlinks=use_symlinks)
    first = save(manager, 1)
    real_fdopen = os.fdopen
    monkeypatch.setattr(os, "fdopen", lambda fd, *a, **k: FullDisk(real_fdopen(fd, *a, **k), 500))
    with pytest.raises(
        CheckpointWriteError,
        match=rf"Cannot save epoch=0000-step=000002.ckpt \(checkpoint\) in {tmp_path}: No space "
        r"left on device \(ENOSPC\)\. Earlier checkpoints and latest.ckpt are unchanged; free space",
    ) as info:
        save(manager, 2, loss=0.5)
    assert info.value.errno == errno.ENOSPC and "unexpected pos" not in str(info.value)
    monkeypatch.undo()
    assert manager.list_checkpoints() == [first]
    _assert_untouched(tmp_path, 1)


def test_injected_permission_errors_name_the_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    manager = make(tmp_path)
    save(manager, 1)

    def denied(*args, **kwargs):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))

    monkeypatch.setattr("trainer.checkpoints.atomic._create", denied)
    with pytest.raises(
        CheckpointWriteError,
        match=rf"Cannot save epoch=0000-step=000002.ckpt \(checkpoint\) in {tmp_path}: Permission "
        r"denied \(EACCES\)\..*make the folder writable by this user",
    ):
        save(manager, 2)
    monkeypatch.setattr(os, "open", denied)
    with pytest.raises(CheckpointWriteError, match=r"Cannot save \.lock \(writer lock file\) in"):
        save(make(tmp_path), 3)
    monkeypatch.undo()
    _assert_untouched(tmp_path, 1)


def test_atomic_write_removes_its_temp_file_on_any_failure(tmp_path: Path) -> None:
    def fail(f) -> None:
        f.write(b"half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(tmp_path / "x.ckpt", fail)
    assert list(tmp_path.iterdir()) == []


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    root = tmp_path / "disk"
    root.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(root)], capture_output=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a 1 MiB tmpfs here (not root?): {done.stderr.decode().strip()}")
    try:
        yield root
    finally:
        subprocess.run(["umount", "-l", str(root)], check=True)


@pytest.mark.parametrize("use_symlinks", [True, False])
def test_a_real_full_disk_keeps_earlier_files_and_the_next_start_works(
    tiny_disk: Path, use_symlinks: bool
) -> None:
    manager = make(tiny_disk, use_symlinks=use_symlinks, max_checkpoints=None)
    save(manager, 1)
    pattern = rf"in {tiny_disk}: No space left on device \(ENOSPC\)\. Earlier checkpoints"
    with pytest.raises(CheckpointWriteError, match=pattern):
        save(manager, 2, floats=300_000)  # 1.2 MB: the file itself does not fit
    _assert_untouched(tiny_disk, 1)
    if not use_symlinks:  # the file fits (600 kB) but its copy as latest.ckpt does not
        with pytest.raises(CheckpointWriteError, match=r"Cannot save latest.ckpt \(latest/best"):
            save(manager, 3, floats=150_000)
        _assert_untouched(tiny_disk, 1)
        assert [p.name for p in manager.list_checkpoints()][-1] == "epoch=0000-step=000003.ckpt"


def test_a_real_read_only_folder_names_the_cause(tiny_disk: Path) -> None:
    manager = make(tiny_disk)
    save(manager, 1)
    subprocess.run(["mount", "-o", "remount,ro", str(tiny_disk)], check=True)
    with pytest.raises(CheckpointWriteError, match=rf"in {tiny_disk}: Read-only file system"):
        save(make(tiny_disk), 2)
    assert read_checkpoint(tiny_disk / "latest.ckpt")["global_step"] == 1
