"""Checksum candidates for checkpoint files, each behind one interface (``update``, ``hexdigest``).

``python -m benchmarks checkpoint`` hashes the largest checkpoint in memory with each, and with
CRC-32 split over several threads as :func:`trainer.checkpoints.integrity.file_digest` does on load.
CRC-32 is what the files carry: it detects every burst of up to 32 flipped bits, and is the fastest
here after the (weaker) word sum.
"""

from __future__ import annotations

import hashlib
import zlib
from collections.abc import Callable
from typing import Any, Protocol

import numpy as np

from trainer.checkpoints.crc import FAST_CRC32, crc32, crc32_parallel

__all__ = ["HASHERS", "hash_in_threads"]


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


class Crc32Ours(Crc32):
    """The same CRC-32 as :class:`Crc32`, by :func:`trainer.checkpoints.crc.crc32` (ISA-L's where
    the optional ``isal`` package is installed)."""

    def update(self, data: Any) -> None:
        self.value = crc32(data, self.value)


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
    "crc32, ours (" + ("ISA-L" if FAST_CRC32 else "zlib: isal not installed") + ")": Crc32Ours,
    "sha1": hashlib.sha1,
    "sha256": hashlib.sha256,
    "blake2b": hashlib.blake2b,
    "word sum": WordSum,
}


def hash_in_threads(data: bytes) -> str:
    """CRC-32 of ``data`` split over the usable cores (at most 4), as checkpoint loads verify
    (ISA-L's where ``isal`` is installed)."""
    return f"{crc32_parallel(memoryview(data)):08x}"
