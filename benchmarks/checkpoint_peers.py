"""The ways to save and load a checkpoint that ``python -m benchmarks checkpoint`` puts side by side.

Each function does one save or one load and returns the seconds of its timed part (the part a
training loop waits for); what it leaves behind (files, a save in flight) is cleaned up untimed.
Peers: a raw write of the same bytes, ``torch.save``, ``torch.distributed.checkpoint`` (DCP, one
process, ``save``/``async_save``/``load``) and Lightning Fabric's ``save``/``load`` where installed.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch

from trainer.checkpoints import KEY_MODEL, read_checkpoint
from trainer.checkpoints.atomic import atomic_write
from trainer.checkpoints.integrity import file_digest
from trainer.checkpoints.manager import CheckpointManager

__all__ = [
    "Peers",
    "crc_pass",
    "evict",
    "ours_load",
    "ours_read_then_restore",
    "ours_restore",
    "raw_write",
    "torch_load",
    "torch_restore",
    "torch_save_atomic",
    "torch_save_fsync",
]

CHUNK = 4 << 20


def evict(path: Path) -> None:
    """Drop ``path`` (a file or a folder's files) from the page cache (cold reads)."""
    for file in [path] if path.is_file() else sorted(path.iterdir()):
        with open(file, "rb") as f:
            os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def raw_write(data: bytes, path: Path) -> float:
    """Write ``data`` in 4 MiB chunks and fsync: the floor of any save of the same bytes."""
    start = time.perf_counter()
    with open(path, "wb") as f:
        view = memoryview(data)
        for offset in range(0, len(view), CHUNK):
            f.write(view[offset : offset + CHUNK])
        f.flush()
        os.fsync(f.fileno())
    seconds = time.perf_counter() - start
    _remove(path)
    return seconds


def torch_save_fsync(payload: Mapping[str, Any], path: Path) -> float:
    """``torch.save`` to an open file, then fsync (not atomic)."""
    start = time.perf_counter()
    with open(path, "wb") as f:
        torch.save(dict(payload), f)
        f.flush()
        os.fsync(f.fileno())
    seconds = time.perf_counter() - start
    _remove(path)
    return seconds


def torch_save_atomic(payload: Mapping[str, Any], path: Path) -> float:
    """``torch.save`` through a temp file, fsync, rename, fsync of the folder: no checksum."""
    start = time.perf_counter()
    atomic_write(path, lambda f: torch.save(dict(payload), f))
    seconds = time.perf_counter() - start
    _remove(path)
    return seconds


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # DCP warns that it runs in a single process
        yield


class Peers:
    """Our manager's saves and loads, and DCP's and Fabric's, over one folder per variant."""

    def __init__(self, root: Path) -> None:
        self.root, self._count = root, 0
        self.dcp: Any = None
        with contextlib.suppress(ImportError):
            import torch.distributed.checkpoint as dcp

            self.dcp = dcp
        self.fabric: Any = None
        with contextlib.suppress(ImportError), _quiet():
            from lightning.fabric import Fabric

            self.fabric = Fabric(accelerator="cpu", devices=1)
        self._managers: dict[str, CheckpointManager] = {}

    def _next(self, name: str) -> Path:
        self._count += 1
        return self.root / f"{name}-{self._count}"

    def manager(self, name: str, *, writer: bool = False, **config: Any) -> CheckpointManager:
        """A manager of its own folder, keeping 2 files (rotation fires from the third save).

        A ``writer`` holds the folder's writer lock from its first use to :meth:`close`, as
        ``fit()`` does for a whole run (so a save does not take and give back the lock).
        """
        from trainer.config import CheckpointConfig

        if name not in self._managers:
            folder = self.root / name
            manager = CheckpointManager(
                CheckpointConfig(root_dir=folder, max_checkpoints=2, **config)
            )
            if writer:
                manager.acquire()
            self._managers[name] = manager
        return self._managers[name]

    def close(self) -> None:
        """Give back the writer locks (after the saves in flight)."""
        for manager in self._managers.values():
            while manager.holds_lock:
                manager.release()

    def ours_sync(self, payload: Mapping[str, Any]) -> float:
        """``CheckpointManager.write_payload``: file, latest, one folder fsync (rotation after)."""
        manager = self.manager("ours-sync", writer=True)
        self._count += 1
        start = time.perf_counter()
        manager.write_payload(payload, epoch=0, global_step=self._count, metrics=None)
        seconds = time.perf_counter() - start
        manager.wait()
        return seconds

    def ours_async(self, payload: Mapping[str, Any], *, until_durable: bool) -> float:
        """``write_payload_async``: the stall (snapshot), or the stall plus the wait."""
        manager = self.manager("ours-async", writer=True, async_save=True)
        self._count += 1
        start = time.perf_counter()
        manager.write_payload_async(payload, epoch=0, global_step=self._count, metrics=None)
        if until_durable:
            manager.wait()
        seconds = time.perf_counter() - start
        manager.wait()
        return seconds

    def dcp_save(self, payload: Mapping[str, Any]) -> float:
        """``torch.distributed.checkpoint.save`` of the model state (one process, fsynced)."""
        folder = self._next("dcp")
        with _quiet():
            start = time.perf_counter()
            self.dcp.save({"model": payload[KEY_MODEL]}, checkpoint_id=str(folder))
            seconds = time.perf_counter() - start
        _remove(folder)
        return seconds

    def dcp_async(self, payload: Mapping[str, Any], *, until_durable: bool) -> float:
        """``torch.distributed.checkpoint.async_save``: until it returns, or until its future."""
        start = time.perf_counter()
        pending = self.dcp_async_start({"model": payload[KEY_MODEL]})
        if until_durable:
            pending[0].result()
        seconds = time.perf_counter() - start
        self.dcp_async_end(pending)
        return seconds

    def dcp_async_start(self, state: Mapping[str, Any]) -> tuple[Any, Path]:
        """Start ``async_save`` of ``state`` into a new folder; :meth:`dcp_async_end` ends it."""
        folder = self._next("dcp-async")
        with _quiet():
            return self.dcp.async_save(dict(state), checkpoint_id=str(folder)), folder

    def dcp_async_end(self, pending: tuple[Any, Path]) -> None:
        """Wait for a started ``async_save`` and remove its folder."""
        with _quiet():
            pending[0].result()
        _remove(pending[1])

    def write_dcp(self, payload: Mapping[str, Any], folder: Path) -> None:
        with _quiet():
            self.dcp.save({"model": payload[KEY_MODEL]}, checkpoint_id=str(folder))

    def dcp_load(self, model: torch.nn.Module, folder: Path) -> float:
        """``torch.distributed.checkpoint.load`` into the model's own tensors."""
        with _quiet():
            start = time.perf_counter()
            state = {"model": model.state_dict()}
            self.dcp.load(state, checkpoint_id=str(folder))
            return time.perf_counter() - start

    def fabric_save(self, payload: Mapping[str, Any]) -> float:
        """Lightning Fabric's ``save`` (torch.save to memory, then one write; no fsync)."""
        path = self._next("fabric").with_suffix(".ckpt")
        start = time.perf_counter()
        self.fabric.save(path, dict(payload))
        seconds = time.perf_counter() - start
        _remove(path)
        return seconds

    def fabric_load(self, path: Path) -> float:
        start = time.perf_counter()
        self.fabric.load(path)
        return time.perf_counter() - start

    def fabric_restore(self, model: torch.nn.Module, path: Path) -> float:
        start = time.perf_counter()
        self.fabric.load(path, {KEY_MODEL: model}, strict=False)
        return time.perf_counter() - start


def torch_load(path: Path, *, mmap: bool) -> float:
    start = time.perf_counter()
    torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    return time.perf_counter() - start


def crc_pass(path: Path) -> float:
    """One CRC-32 pass over the file (mapped, the usable cores): what any exact check costs."""
    start = time.perf_counter()
    with open(path, "rb") as f:
        file_digest(f.fileno(), os.fstat(f.fileno()).st_size)
    return time.perf_counter() - start


def ours_load(path: Path) -> float:
    start = time.perf_counter()
    read_checkpoint(path)
    return time.perf_counter() - start


def torch_restore(model: torch.nn.Module, path: Path, *, mmap: bool) -> float:
    start = time.perf_counter()
    payload = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    model.load_state_dict(payload[KEY_MODEL])
    return time.perf_counter() - start


def ours_restore(manager: CheckpointManager, model: torch.nn.Module, path: Path) -> float:
    """``restore_from_checkpoint``: copy into the model while the checksum is checked."""
    start = time.perf_counter()
    manager.restore_from_checkpoint(model, [], [], checkpoint_path=path, restore_rng=False)
    return time.perf_counter() - start


def ours_read_then_restore(model: torch.nn.Module, path: Path) -> float:
    """``read_checkpoint`` (checked before it returns), then ``load_state_dict``."""
    start = time.perf_counter()
    model.load_state_dict(read_checkpoint(path)[KEY_MODEL])
    return time.perf_counter() - start
