"""CRC-32 (zlib's) of pieces computed apart: combining them, and hashing one buffer on several cores.

:func:`crc32_combine` gives ``crc32(a + b)`` from ``crc32(a)``, ``crc32(b)`` and ``len(b)`` without
reading the bytes again (zlib's ``crc32_combine``, which Python's :mod:`zlib` does not expose).
That lets a writer hash each piece of a file as it writes it and still store the CRC of the whole
file, and a reader hash the parts of a large file on several threads (``zlib.crc32`` releases the
GIL).

:func:`crc32` is ``zlib.crc32``, computed by ISA-L (``isal.isal_zlib.crc32``, the same CRC-32 with
carry-less multiplication, about 4x faster here) when the optional ``isal`` package is installed:
the checksums are the same either way, so files written with one verify with the other.

Example:
    >>> a, b = b"statefuldata ", b"checkpoint"
    >>> crc32_combine(zlib.crc32(a), zlib.crc32(b), len(b)) == zlib.crc32(a + b)
    True
"""

from __future__ import annotations

import functools
import os
import threading
import zlib
from collections.abc import Callable
from typing import Any

import attrs

_isal_crc32: Callable[..., int] | None
try:  # the same CRC-32 as zlib's, with PCLMULQDQ; it releases the GIL too
    from isal import isal_zlib  # type: ignore[import-not-found,unused-ignore]

    _isal_crc32 = isal_zlib.crc32
except ImportError:  # pragma: no cover - the optional package is not installed
    _isal_crc32 = None

__all__ = [
    "FAST_CRC32",
    "Crc32Job",
    "crc32",
    "crc32_combine",
    "crc32_of_range",
    "crc32_parallel",
    "default_threads",
    "pread_exact",
]

_POLY = 0xEDB88320  # CRC-32's polynomial, bit-reflected (as zlib computes it)
_ONE = 1 << 31  # the polynomial 1 in the reflected representation
#: Below this many bytes a buffer is hashed on one thread (starting threads would cost more).
PARALLEL_MIN_BYTES = 64 << 20
#: Bytes read per call by :func:`crc32_of_range`.
READ_CHUNK = 1 << 20


def _multiply(a: int, b: int) -> int:
    """``a(x) * b(x) mod p(x)`` for reflected 32-bit polynomials (zlib's ``multmodp``)."""
    if a == 0:
        return 0
    mask, product = _ONE, 0
    while True:
        if a & mask:
            product ^= b
            if a & (mask - 1) == 0:
                return product
        mask >>= 1
        b = (b >> 1) ^ _POLY if b & 1 else b >> 1


def _powers() -> tuple[int, ...]:
    """``x^(2^k) mod p(x)`` for k = 0..31."""
    table, power = [], _ONE >> 1  # x^1
    for _ in range(32):
        table.append(power)
        power = _multiply(power, power)
    return tuple(table)


_X2N = _powers()


@functools.lru_cache(maxsize=1024)
def _shift(length: int) -> int:
    """``x^(8 * length) mod p(x)``: what appending ``length`` zero bytes multiplies a CRC by."""
    power, exponent, k = _ONE, length, 3  # 8 * length = length * 2^3
    while exponent:
        if exponent & 1:
            power = _multiply(_X2N[k & 31], power)
        exponent >>= 1
        k += 1
    return power


def crc32_combine(crc1: int, crc2: int, length2: int) -> int:
    """The CRC-32 of ``a + b`` from ``crc1 = crc32(a)``, ``crc2 = crc32(b)`` and ``length2 = len(b)``."""
    if length2 <= 0:
        return crc1
    return _multiply(_shift(length2), crc1) ^ crc2


#: Whether :func:`crc32` is ISA-L's (the ``isal`` package) rather than zlib's.
FAST_CRC32 = _isal_crc32 is not None


def crc32(data: Any, value: int = 0) -> int:
    """``zlib.crc32(data, value)``, by ISA-L where ``isal`` is installed (see the module docstring)."""
    if _isal_crc32 is not None:
        return int(_isal_crc32(data, value))
    return zlib.crc32(data, value)


def pread_exact(fd: int, size: int, offset: int) -> bytes:
    """``size`` bytes of ``fd`` at ``offset`` (the file position is left alone).

    Raises:
        EOFError: The file ends before ``offset + size``.
    """
    data = os.pread(fd, size, offset)
    while len(data) < size:
        more = os.pread(fd, size - len(data), offset + len(data))
        if not more:
            raise EOFError(f"file ended at byte {offset + len(data)} (expected {offset + size})")
        data += more
    return data


def _read_into(fd: int, view: memoryview, offset: int) -> int:
    if hasattr(os, "preadv"):
        return os.preadv(fd, [view], offset)
    data = os.pread(fd, len(view), offset)  # pragma: no cover - platforms without preadv
    view[: len(data)] = data
    return len(data)


def crc32_of_range(fd: int, start: int, end: int, crc: int = 0) -> int:
    """``zlib.crc32`` of bytes ``[start, end)`` of ``fd``, continuing ``crc``, read with ``preadv``
    into one reused buffer (the file position is left alone).

    Raises:
        EOFError: The file ends before ``end``.
    """
    buffer = bytearray(min(READ_CHUNK, max(end - start, 1)))
    view = memoryview(buffer)
    while start < end:
        got = _read_into(fd, view[: min(len(buffer), end - start)], start)
        if got == 0:
            raise EOFError(f"file ended at byte {start} (expected {end})")
        crc = crc32(view[:got], crc)
        start += got
    return crc


def default_threads() -> int:
    """Threads a large buffer is hashed on: the usable cores, at most 4."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - platforms without affinity
        cores = os.cpu_count() or 1
    return max(1, min(4, cores))


def _split(length: int, threads: int | None) -> list[tuple[int, int]]:
    """``[lo, hi)`` bounds of the parts a buffer of ``length`` bytes is hashed in (one per thread)."""
    parts = default_threads() if threads is None else threads
    parts = max(1, min(parts, length // (PARALLEL_MIN_BYTES // 2) or 1))
    step = -(-length // parts) if length else 1
    return [(i, min(i + step, length)) for i in range(0, length, step)] or [(0, 0)]


@attrs.define(eq=False)
class Crc32Job:
    """The CRC-32 of a buffer, computed by threads started at once; :meth:`result` waits for it.

    Each thread makes one call into the CRC (which releases the GIL), so once started they need
    the GIL only to finish: the caller's own Python work (e.g. ``torch.load``'s unpickler) runs
    meanwhile without handing the GIL back and forth.

    Example:
        >>> job = Crc32Job.start(memoryview(b"statefuldata"), threads=2)
        >>> job.result() == zlib.crc32(b"statefuldata")
        True
    """

    _bounds: list[tuple[int, int]]
    _results: list[int | None]
    _errors: list[BaseException]
    _threads: list[threading.Thread]
    _start: int

    @classmethod
    def start(cls, data: memoryview, *, threads: int | None = None, start: int = 0) -> Crc32Job:
        """Start hashing ``data`` (continuing the running CRC ``start``) on up to ``threads``
        threads (None: :func:`default_threads`); parts below ``PARALLEL_MIN_BYTES / 2`` are not
        split further."""
        view = data.cast("B") if data.format != "B" or data.ndim != 1 else data
        bounds = _split(len(view), threads)
        job = cls(bounds, [None] * len(bounds), [], [], start)
        parts = [view[lo:hi] for lo, hi in bounds]  # sliced here, so a thread only hashes
        try:
            for index, part in enumerate(parts):
                worker = threading.Thread(
                    target=job._run, args=(index, part), name="checkpoint-crc", daemon=True
                )
                worker.start()
                job._threads.append(worker)
        except BaseException:  # e.g. no thread could be started: the buffer is free again
            for worker in job._threads:
                worker.join()
            for part in parts[len(job._threads) :]:
                part.release()
            raise
        return job

    def _run(self, index: int, part: memoryview) -> None:
        try:
            self._results[index] = crc32(part)
        except BaseException as exc:  # re-raised in the caller's thread
            self._errors.append(exc)
        finally:
            part.release()

    def result(self) -> int:
        """Wait for the threads; the CRC-32 of the whole buffer.

        Raises:
            Whatever hashing a part raised (e.g. an error reading a mapped file).
        """
        for worker in self._threads:
            worker.join()
        if self._errors:
            raise self._errors[0]
        crc = self._start
        for (lo, hi), part in zip(self._bounds, self._results, strict=True):
            assert part is not None
            crc = crc32_combine(crc, part, hi - lo)
        return crc


def crc32_parallel(data: memoryview, *, threads: int | None = None, start: int = 0) -> int:
    """``zlib.crc32(data, start)``, with large buffers split over ``threads`` threads.

    Args:
        data: A byte buffer (a memoryview of an ``mmap`` hashes a file without copying it).
        threads: At most this many threads (None: :func:`default_threads`).
        start: The running CRC the buffer continues (0 for a fresh one).

    Raises:
        Whatever hashing a part raised (e.g. an error reading a mapped file).
    """
    view = data.cast("B") if data.format != "B" or data.ndim != 1 else data
    bounds = _split(len(view), threads)
    if len(bounds) == 1:
        return crc32(view, start)
    first = bounds[0][1]
    rest = Crc32Job.start(view[first:], threads=len(bounds) - 1)  # the caller hashes the first
    try:
        crc = crc32(view[:first], start)
    finally:
        tail = rest.result()
    return crc32_combine(crc, tail, len(view) - first)
