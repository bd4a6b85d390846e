"""A checksum over every byte of a checkpoint file, kept in the zip archive's comment.

``torch.save`` writes a zip archive whose last record (the end of central directory, 22 bytes) has
an empty comment. :func:`save_with_checksum` sets that comment to one line naming the algorithm and
the digest, ``statefuldata-checksum v1 crc32 0a1b2c3d``, computed over the whole file before the
comment (every record, the central directory and the end record with its comment length). Zip
readers, ``torch.load`` among them, ignore the comment, so the files still load with plain
``torch.load(path, weights_only=True)`` (also with ``mmap=True``).

CRC-32 (zlib's; computed by ISA-L where ``isal`` is installed, :func:`~trainer.checkpoints.crc.crc32`)
is the algorithm: it finds every burst of up to 32 flipped bits and misses other damage with
probability 2^-32. Saving hashes every byte once, the tensor data while it is written
(:mod:`trainer.checkpoints.archive`; torch's own, slower, record CRCs are replaced by ours, so the
archive stays a valid zip whose records ``zipfile`` checks). Checking maps the file and hashes it in
place on up to 4 threads, while ``torch.load(mmap=True)`` reads the same open file
(:mod:`trainer.checkpoints.loading`). ``python -m benchmarks checkpoint`` measures both.

Example:
    >>> check_integrity("run/latest.ckpt").status                  # doctest: +SKIP
    <IntegrityStatus.VERIFIED: 'verified'>
"""

from __future__ import annotations

import enum
import logging
import mmap
import os
import re
import struct
import threading
from typing import Any, BinaryIO

import attrs

from trainer.checkpoints.archive import write_archive
from trainer.checkpoints.crc import (
    Crc32Job,
    crc32,
    crc32_of_range,
    crc32_parallel,
    pread_exact,
)

__all__ = [
    "ALGORITHM",
    "IntegrityReport",
    "IntegrityStatus",
    "Verification",
    "check_integrity",
    "file_digest",
    "read_trailer",
    "save_with_checksum",
]

logger = logging.getLogger(__name__)

ALGORITHM = "crc32"
EOCD_SIGNATURE = b"PK\x05\x06"
EOCD_SIZE = 22
ZIP_SIGNATURE = b"PK\x03\x04"
_COMMENT = re.compile(rb"statefuldata-checksum v(\d+) ([a-z0-9]+) ([0-9a-f]+)")
_TAIL = EOCD_SIZE + 96  # the end record plus the longest comment we write, with room to spare
#: Files at least this large are hashed in a thread, overlapped with the load.
OVERLAP_BYTES = 16 << 20
#: Files at least this large are hashed through a memory map (no copy) on several threads.
MAP_BYTES = 1 << 20
#: Threads that hash a file while it loads (None: the usable cores, at most 4).
LOAD_THREADS: int | None = None


class IntegrityStatus(enum.Enum):
    """The outcome of checking one file."""

    VERIFIED = "verified"
    NO_CHECKSUM = "no checksum"
    MISMATCH = "checksum mismatch"
    DAMAGED_END = "damaged or truncated end of file"
    UNKNOWN_ALGORITHM = "unknown checksum algorithm"


@attrs.frozen(kw_only=True)
class IntegrityReport:
    """What :func:`check_integrity` found; ``ok`` unless the file is provably damaged."""

    status: IntegrityStatus
    algorithm: str | None = None
    stored: str | None = None
    computed: str | None = None
    covered_bytes: int = 0
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.status in (IntegrityStatus.VERIFIED, IntegrityStatus.NO_CHECKSUM)

    def describe(self) -> str:
        """One line: which check failed (or passed) and the numbers behind it."""
        if self.status is IntegrityStatus.MISMATCH:
            return (
                f"checksum mismatch: {self.algorithm} stored {self.stored}, computed "
                f"{self.computed} over {self.covered_bytes:,} bytes"
            )
        if self.status is IntegrityStatus.VERIFIED:
            return f"checksum verified ({self.algorithm} {self.stored} over {self.covered_bytes:,} bytes)"
        return f"{self.status.value}: {self.detail}" if self.detail else self.status.value

    def to_dict(self) -> dict[str, Any]:
        return {**attrs.asdict(self), "status": self.status.value, "ok": self.ok}


@attrs.frozen
class _Trailer:
    algorithm: str
    digest: str
    covered: int  # bytes before the comment: what the digest covers


def _comment(algorithm: str, digest: str) -> bytes:
    return f"statefuldata-checksum v1 {algorithm} {digest}".encode()


def _digest_mapped(fd: int, length: int, threads: int | None) -> int:
    if os.fstat(fd).st_size < length:
        raise EOFError(f"file ended at byte {os.fstat(fd).st_size} (expected {length})")
    with mmap.mmap(fd, length, access=mmap.ACCESS_READ) as mapped:
        view = memoryview(mapped)
        try:
            return crc32_parallel(view, threads=threads)
        finally:
            view.release()


def file_digest(fd: int, length: int, *, tail: bytes = b"", threads: int | None = None) -> str:
    """CRC-32 of the first ``length`` bytes of ``fd`` followed by ``tail``, as 8 hex digits.

    Large files are mapped and hashed in place, on up to ``threads`` threads (None: the usable
    cores, at most 4); small ones are read with ``preadv`` into one buffer. Either way the file
    position is left alone, so another reader (``torch.load``) can use the same open file.
    """
    if length >= MAP_BYTES and hasattr(mmap, "ACCESS_READ"):
        crc = _digest_mapped(fd, length, threads)
    else:
        crc = crc32_of_range(fd, 0, length)
    return f"{crc32(tail, crc):08x}"


def read_trailer(fd: int, size: int) -> _Trailer | IntegrityReport | None:
    """The stored checksum, None for a file without one, or a report saying why the end is damaged."""
    tail = pread_exact(fd, min(size, _TAIL), max(size - _TAIL, 0))
    if tail[-EOCD_SIZE:-18] == EOCD_SIGNATURE and tail[-2:] == b"\x00\x00":
        return None  # a zip archive exactly as torch.save writes it: no comment, no checksum
    start = tail.rfind(EOCD_SIGNATURE)
    while start >= 0:
        (length,) = struct.unpack_from("<H", tail, start + 20) if start + 22 <= len(tail) else (-1,)
        if start + EOCD_SIZE + length == len(tail):
            match = _COMMENT.fullmatch(tail[start + EOCD_SIZE :])
            if match is None:
                break
            if match[1] != b"1":
                return IntegrityReport(
                    status=IntegrityStatus.UNKNOWN_ALGORITHM,
                    detail=f"checksum format v{match[1].decode()} (this version reads v1); "
                    "upgrade trainer",
                )
            return _Trailer(match[2].decode(), match[3].decode(), size - length)
        start = tail.rfind(EOCD_SIGNATURE, 0, start)
    head = pread_exact(fd, min(size, 4), 0)
    if head != ZIP_SIGNATURE:
        return None  # not a zip archive (e.g. torch's legacy format): nothing to verify here
    return IntegrityReport(
        status=IntegrityStatus.DAMAGED_END,
        detail=f"the zip end record or checksum comment in the last {len(tail)} bytes is not intact",
    )


def _verdict(trailer: _Trailer, computed: str) -> IntegrityReport:
    status = IntegrityStatus.VERIFIED if computed == trailer.digest else IntegrityStatus.MISMATCH
    return IntegrityReport(
        status=status,
        algorithm=trailer.algorithm,
        stored=trailer.digest,
        computed=computed,
        covered_bytes=trailer.covered,
    )


@attrs.define(eq=False)
class _MappedCheck:
    """The CRC-32 of a file's first ``length`` bytes, hashed in place on threads started now.

    The map is made in the caller's thread, so the threads only hash: they need the GIL only to
    finish, and the caller (``torch.load``'s unpickler) keeps it meanwhile.
    """

    _mapped: mmap.mmap
    _view: memoryview
    _job: Crc32Job

    @classmethod
    def start(cls, fd: int, length: int, threads: int | None) -> _MappedCheck:
        size = os.fstat(fd).st_size
        if size < length:
            raise EOFError(f"file ended at byte {size} (expected {length})")
        mapped = mmap.mmap(fd, length, access=mmap.ACCESS_READ)
        view = memoryview(mapped)
        try:
            return cls(mapped, view, Crc32Job.start(view, threads=threads))
        except BaseException:
            view.release()
            mapped.close()
            raise

    def result(self) -> int:
        try:
            return self._job.result()
        finally:
            self._view.release()
            self._mapped.close()


@attrs.define(eq=False)
class Verification:
    """Checks an open file, on threads for large files, while the caller loads it.

    Example:
        >>> check = Verification.start(f.fileno())          # doctest: +SKIP
        >>> payload = torch.load(f, weights_only=True)       # doctest: +SKIP
        >>> report = check.result()                          # doctest: +SKIP
    """

    _trailer: _Trailer | None
    _fd: int
    _report: IntegrityReport | None = None
    _error: BaseException | None = None
    _thread: threading.Thread | None = None
    _mapped: _MappedCheck | None = None

    @classmethod
    def start(cls, fd: int) -> Verification:
        size = os.fstat(fd).st_size
        found = read_trailer(fd, size)
        if isinstance(found, IntegrityReport):
            return cls(None, fd, found)
        if found is None:
            return cls(None, fd, IntegrityReport(status=IntegrityStatus.NO_CHECKSUM))
        if found.algorithm != ALGORITHM:
            report = IntegrityReport(
                status=IntegrityStatus.UNKNOWN_ALGORITHM,
                algorithm=found.algorithm,
                stored=found.digest,
                detail=f"{found.algorithm!r} (this version verifies {ALGORITHM!r}); upgrade trainer",
            )
            return cls(None, fd, report)
        check = cls(found, fd)
        if found.covered < OVERLAP_BYTES:
            return check  # hashed by result(): starting a thread would cost more
        if hasattr(mmap, "ACCESS_READ"):
            try:
                check._mapped = _MappedCheck.start(fd, found.covered, LOAD_THREADS)
            except (OSError, ValueError, EOFError) as exc:  # re-raised by result()
                check._error = exc
            return check
        check._thread = threading.Thread(  # pragma: no cover - platforms without mmap
            target=check._run, name="checkpoint-verify", daemon=True
        )
        check._thread.start()  # pragma: no cover
        return check  # pragma: no cover

    def _run(self) -> None:
        assert self._trailer is not None
        try:
            self._report = _verdict(self._trailer, file_digest(self._fd, self._trailer.covered))
        except BaseException as exc:  # re-raised by result() in the caller's thread
            self._error = exc

    def result(self) -> IntegrityReport:
        """Wait for the check and return its report (re-raising an I/O error it met)."""
        if self._mapped is not None:
            mapped, self._mapped = self._mapped, None
            assert self._trailer is not None
            try:
                self._report = _verdict(self._trailer, f"{mapped.result():08x}")
            except BaseException as exc:
                self._error = exc
        elif self._thread is not None:
            self._thread.join()
        elif self._report is None and self._error is None:
            self._run()
        if self._error is not None:
            raise self._error
        assert self._report is not None
        return self._report


def check_integrity(path: str | os.PathLike[str]) -> IntegrityReport:
    """Check the checksum of the file at ``path`` (without loading it)."""
    with open(path, "rb") as f:
        return Verification.start(f.fileno()).result()


def save_with_checksum(obj: Any, f: BinaryIO) -> None:
    """``torch.save(obj, f)`` with the checksum comment appended; every byte is hashed once.

    ``f`` must be a real file opened for reading and writing at its start (it has a ``fileno()``).
    Nothing is fsynced here: the caller flushes and fsyncs the file once afterwards (the data,
    the patched record CRCs and the checksum comment together).

    Raises:
        OSError: From the writes (e.g. ENOSPC); the file is then incomplete.
    """
    size, crc = write_archive(obj, f)
    comment = _comment(ALGORITHM, "0" * 8)
    length = struct.pack("<H", len(comment))
    digest = f"{crc32(length, crc):08x}"
    os.pwrite(f.fileno(), length + _comment(ALGORITHM, digest), size - 2)
    f.seek(0, os.SEEK_END)
