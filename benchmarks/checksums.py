"""Checksum candidates for checkpoint files and the ways of computing them during a save or a load.

Each candidate is a hasher factory (``update(buffer)``, ``hexdigest()``). The save strategies are
*inline* (hash every buffer torch.save writes, as it writes it, then fsync) and *overlapped* (write,
then hash the file from the page cache while a second thread fsyncs it: what
:func:`trainer.checkpoints.integrity.save_with_checksum` does with CRC-32). The load strategies are
*sequential* (hash the file, then load it) and *threaded* (hash in a thread while ``torch.load``
reads the same open file: what :func:`trainer.checkpoints.read_checkpoint` does).
"""

from __future__ import annotations

import hashlib
import mmap
import os
import threading
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO, Protocol

import numpy as np
import torch

from trainer.checkpoints.atomic import atomic_write

__all__ = [
    "HASHERS",
    "hash_file",
    "load_hashing_in_thread",
    "load_hashing_sequentially",
    "save_hashing_inline",
    "save_hashing_overlapped",
]

_CHUNK = 1 << 20


class Hasher(Protocol):
    def update(self, data: Any, /) -> None: ...

    def hexdigest(self) -> str: ...


class Crc32:
    """zlib's CRC-32 behind the hashlib interface."""

    def __init__(self) -> None:
        self.value = 0

    def update(self, data: Any) -> None:
        self.value = zlib.crc32(data, self.value)

    def hexdigest(self) -> str:
        return f"{self.value:08x}"


class WordSum:
    """Fletcher-style sums over 64-bit words in numpy: a plain sum and a block-position-weighted one.

    Much faster than a CRC but weaker: damage that keeps both sums modulo 2^64 goes unseen.
    """

    def __init__(self) -> None:
        self.plain = np.uint64(0)
        self.weighted = np.uint64(0)
        self.blocks = 0
        self.carry = b""

    def update(self, data: Any) -> None:
        view = memoryview(data).cast("B")
        if self.carry:
            joined = self.carry + bytes(view[: 8 - len(self.carry)])
            view = view[8 - len(self.carry) :]
            self.carry = b""
            if len(joined) < 8:
                self.carry = joined
                return
            self._add(np.frombuffer(joined, dtype=np.uint64))
        whole = len(view) // 8 * 8
        self._add(np.frombuffer(view[:whole], dtype=np.uint64))
        self.carry = bytes(view[whole:])

    def _add(self, words: np.ndarray) -> None:
        with np.errstate(over="ignore"):
            self.plain += words.sum(dtype=np.uint64)
            self.blocks += 1
            self.weighted += np.uint64(self.blocks) * words.sum(dtype=np.uint64)

    def hexdigest(self) -> str:
        self.update(b"\x00" * ((8 - len(self.carry)) % 8))
        return f"{int(self.plain):016x}{int(self.weighted):016x}"


HASHERS: dict[str, Callable[[], Hasher]] = {
    "crc32": Crc32,
    "sha1": hashlib.sha1,
    "sha256": hashlib.sha256,
    "blake2b": hashlib.blake2b,
    "word sum": WordSum,
}


def hash_mapped(fd: int, length: int, hasher: Hasher) -> str:
    """Hash the first ``length`` bytes of ``fd`` through a read-only memory map (no copy)."""
    if length == 0:
        return hasher.hexdigest()
    with mmap.mmap(fd, length, access=mmap.ACCESS_READ) as mapped, memoryview(mapped) as view:
        for offset in range(0, length, 8 * _CHUNK):
            hasher.update(view[offset : offset + 8 * _CHUNK])
    return hasher.hexdigest()


def hash_file(fd: int, length: int, hasher: Hasher) -> str:
    """Hash the first ``length`` bytes of ``fd`` with positional reads into one reused buffer."""
    buffer = bytearray(min(_CHUNK, max(length, 1)))
    view, offset = memoryview(buffer), 0
    while offset < length:
        got = os.preadv(fd, [view[: min(len(buffer), length - offset)]], offset)
        hasher.update(view[:got])
        offset += got
    return hasher.hexdigest()


class _HashingFile:
    """Passes every write to ``inner`` after hashing it (torch.save only writes and flushes)."""

    def __init__(self, inner: BinaryIO, hasher: Hasher) -> None:
        self._inner, self._hasher = inner, hasher

    def write(self, data: Any) -> int:
        self._hasher.update(data)
        return self._inner.write(data)

    def flush(self) -> None:
        self._inner.flush()


def save_hashing_inline(payload: Any, path: Path, algorithm: str) -> None:
    """Atomic save hashing each buffer as torch.save writes it (the digest is computed, not stored)."""
    hasher = HASHERS[algorithm]()
    atomic_write(path, lambda f: torch.save(payload, _HashingFile(f, hasher)))  # type: ignore[arg-type]
    hasher.hexdigest()


def save_hashing_overlapped(payload: Any, path: Path, algorithm: str, mapped: bool = False) -> None:
    """Atomic save, then hash from the page cache while a thread fsyncs (digest computed, not stored)."""

    def write(f: BinaryIO) -> None:
        torch.save(payload, f)
        f.flush()
        sync = threading.Thread(target=os.fsync, args=(f.fileno(),))
        sync.start()
        (hash_mapped if mapped else hash_file)(f.fileno(), f.tell(), HASHERS[algorithm]())
        sync.join()

    atomic_write(path, write)


def load_hashing_sequentially(path: Path, algorithm: str) -> Any:
    """Hash the whole file, then ``torch.load`` it."""
    with open(path, "rb") as f:
        hash_file(f.fileno(), os.fstat(f.fileno()).st_size, HASHERS[algorithm]())
        return torch.load(f, map_location="cpu", weights_only=True)


def load_hashing_in_thread(path: Path, algorithm: str, mapped: bool = False) -> Any:
    """Hash in a thread (through a memory map if ``mapped``) while ``torch.load`` reads the file."""
    with open(path, "rb") as f:
        size, digest = os.fstat(f.fileno()).st_size, hash_mapped if mapped else hash_file
        worker = threading.Thread(target=digest, args=(f.fileno(), size, HASHERS[algorithm]()))
        worker.start()
        payload = torch.load(f, map_location="cpu", weights_only=True)
        worker.join()
        return payload
