"""``torch.save``'s zip archive, written once, each byte hashed once, the hashing hidden in the write.

``torch.save`` computes the CRC-32 of every zip record itself (miniz, about 1 GB/s), and the
checkpoint's own checksum needs a CRC-32 of the whole file on top. :func:`write_archive` writes the
same archive through torch's zip writer with its CRCs off. Small writes (headers, the pickle) are
hashed as they go; each large one (tensor data) is hashed by a helper thread from the very buffer
being written, while the writing thread copies it into the file (both release the GIL; the write
waits for its hash before it returns, as the buffer is torch's), so the hashing costs no time of
its own where a core is free. Every 16 MiB the kernel is asked to start writing to disk
(``sync_file_range`` on Linux), so the disk works while the rest is written. Then each record's CRC-32 is put where torch
would have put it (its data descriptor and its central directory entry, so ``zipfile`` and ``unzip
-t`` still check every record), and the CRC of the whole file is combined from the pieces' CRCs
(:func:`~trainer.checkpoints.crc.crc32_combine`): only the few hundred bytes of headers and the
central directory are read back. Nothing is fsynced here: the caller's **one** fsync writes the
data and the patched pages together.

The result is byte for byte what ``torch.save`` writes. Where torch's private writer API is not
there (another torch version), :func:`write_archive` falls back to ``torch.save`` and hashes its
writes the same way.
"""

from __future__ import annotations

import bisect
import concurrent.futures
import contextlib
import ctypes
import functools
import logging
import os
import pickle
import struct
import sys
from collections.abc import Callable
from typing import Any, BinaryIO, cast

import torch

from trainer.checkpoints.crc import (
    crc32,
    crc32_combine,
    crc32_of_range,
    default_threads,
    pread_exact,
)

__all__ = ["write_archive"]

logger = logging.getLogger(__name__)

#: Writes at least this large are hashed by a helper thread while they are written.
DEFER_BYTES = 1 << 20
#: Pieces at least this large keep the CRC taken while writing; smaller ones are read back.
COMBINE_BYTES = 64 << 10
_LOCAL, _CENTRAL, _DESCRIPTOR = b"PK\x03\x04", b"PK\x01\x02", b"PK\x07\x08"
_EOCD, _ZIP64_EOCD, _ZIP64_LOCATOR = b"PK\x05\x06", b"PK\x06\x06", b"PK\x06\x07"
_FULL32 = 0xFFFFFFFF
#: Start the disk on each large write at once (Linux ``sync_file_range``), so the one fsync
#: at the end waits for what is left, not for the whole file.
START_WRITEBACK = True
#: ... in steps of this many bytes (a small file is left to the fsync: starting it costs more).
WRITEBACK_BYTES = 16 << 20
_SYNC_FILE_RANGE_WRITE = 2


@functools.cache
def _sync_file_range() -> Callable[[int, int, int, int], int] | None:
    """libc's ``sync_file_range`` (Linux), or None where there is none."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        function = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):  # pragma: no cover - a libc without it
        return None
    function.argtypes = (ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint)
    function.restype = ctypes.c_int
    return cast(Callable[[int, int, int, int], int], function)


def _start_writeback(fd: int, offset: int, size: int) -> None:
    """Ask the kernel to start writing ``[offset, offset + size)`` to disk, without waiting.

    Only a head start: durability still comes from the caller's fsync (an error here is ignored,
    the fsync reports it).
    """
    function = _sync_file_range() if START_WRITEBACK else None
    if function is not None:
        function(fd, offset, size, _SYNC_FILE_RANGE_WRITE)


def _pool() -> concurrent.futures.ThreadPoolExecutor | None:
    """The process's hashing threads (kept: a thread start costs milliseconds on a busy machine);
    None when the interpreter is exiting (no new threads: the writer hashes itself)."""
    global _POOL
    if _POOL is None:
        with contextlib.suppress(RuntimeError):
            _POOL = concurrent.futures.ThreadPoolExecutor(
                max_workers=max(1, default_threads() - 1), thread_name_prefix="checkpoint-hash"
            )
    return _POOL


_POOL: concurrent.futures.ThreadPoolExecutor | None = None


class _HashingFile:
    """The file object torch's zip writer writes to: each write goes on, and is hashed.

    Small writes (headers, the pickle) are hashed at once; large ones (tensor data) by a helper
    thread while this thread writes them. Each write waits for its hash before it returns: the
    buffer is torch's, valid only during the call.
    """

    def __init__(self, f: BinaryIO) -> None:
        self._f = f
        self._fd = f.fileno()
        self.offset = 0
        self._started = 0  # writeback was started for the bytes before this offset
        self.pieces: list[tuple[int, int, int]] = []  # (offset, size, crc32) of every write

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        size = view.nbytes
        pool = _pool() if size >= DEFER_BYTES else None
        hashing: concurrent.futures.Future[int] | None = None
        if pool is not None:
            with contextlib.suppress(RuntimeError):  # the interpreter is exiting: hash here
                hashing = pool.submit(crc32, view)
        try:
            self._f.write(view)
        finally:
            crc = crc32(view) if hashing is None else hashing.result()  # never left running
        self.pieces.append((self.offset, size, crc))
        self.offset += size
        if size >= DEFER_BYTES and self.offset - self._started >= WRITEBACK_BYTES:
            self._f.flush()  # (a no-op: a large write goes through the buffer)
            _start_writeback(self._fd, self._started, self.offset - self._started)
            self._started = self.offset
        return size

    def flush(self) -> None:
        self._f.flush()


def _layout_error(what: str) -> RuntimeError:
    return RuntimeError(  # torch changed its layout: refuse rather than write a bad file
        f"torch's zip writer produced an unexpected archive ({what}); this torch version is not "
        "supported by trainer.checkpoints yet: report it with the torch version"
    )


def _central_directory(fd: int, size: int) -> tuple[int, int, int]:
    """``(offset, size, entries)`` of the central directory, from the (zip64) end records."""
    end = pread_exact(fd, 22, size - 22)
    if end[:4] != _EOCD or end[-2:] != b"\x00\x00":
        raise _layout_error(f"no empty zip end record at its end (got {end!r})")
    entries, cd_size, cd_offset = struct.unpack_from("<HII", end, 10)
    if _FULL32 in (cd_size, cd_offset) or entries == 0xFFFF:
        locator = pread_exact(fd, 20, size - 42)
        if locator[:4] != _ZIP64_LOCATOR:
            raise _layout_error("a zip64 archive without its locator")
        (record_at,) = struct.unpack_from("<Q", locator, 8)
        record = pread_exact(fd, 56, record_at)
        if record[:4] != _ZIP64_EOCD:
            raise _layout_error("a zip64 locator pointing at no zip64 end record")
        entries, cd_size, cd_offset = struct.unpack_from("<QQQ", record, 32)
    return cd_offset, cd_size, entries


def _zip64_values(extra: bytes, wanted: list[bool]) -> list[int]:
    """The zip64 extra field's values for the 32-bit fields marked in ``wanted`` (in order)."""
    at = 0
    while at + 4 <= len(extra):
        tag, length = struct.unpack_from("<HH", extra, at)
        if tag == 1:
            values = struct.unpack_from(f"<{sum(wanted)}Q", extra, at + 4)
            return list(values)
        at += 4 + length
    raise _layout_error("a zip64 field is missing from a central directory entry")


class _Pieces:
    """The writes of one archive, looked up by offset."""

    def __init__(self, pieces: list[tuple[int, int, int]]) -> None:
        self.pieces = pieces
        self.index = {offset: i for i, (offset, _, _) in enumerate(pieces)}

    def crc(self, fd: int, start: int, size: int) -> int:
        """CRC-32 of ``[start, start + size)`` from the writes' CRCs (read back if they do not align)."""
        i, crc, at, end = self.index.get(start), 0, start, start + size
        while i is not None and i < len(self.pieces) and at < end:
            offset, length, piece = self.pieces[i]
            if offset != at or at + length > end:
                break
            crc, at, i = crc32_combine(crc, piece, length), at + length, i + 1
        return crc if at == end else crc32_of_range(fd, start, end)


def _patch_crcs(fd: int, pieces: _Pieces, size: int) -> list[tuple[int, int]]:
    """Write every record's CRC-32 where a zip reader checks it; return the patched byte ranges."""
    cd_offset, cd_size, entries = _central_directory(fd, size)
    directory = bytearray(pread_exact(fd, cd_size, cd_offset))
    patched: list[tuple[int, int]] = [(cd_offset, cd_size)]
    at = 0
    for _ in range(entries):
        if directory[at : at + 4] != _CENTRAL:
            raise _layout_error(f"central directory entry at +{at} has a bad signature")
        method, comp, plain, n_name, n_extra, n_comment = struct.unpack_from(
            "<H8xIIHHH", directory, at + 10
        )
        (local,) = struct.unpack_from("<I", directory, at + 42)
        if _FULL32 in (comp, plain, local):
            values = _zip64_values(
                bytes(directory[at + 46 + n_name : at + 46 + n_name + n_extra]),
                [plain == _FULL32, comp == _FULL32, local == _FULL32],
            )
            plain = values.pop(0) if plain == _FULL32 else plain
            comp = values.pop(0) if comp == _FULL32 else comp
            local = values.pop(0) if local == _FULL32 else local
        if method != 0 or comp != plain:
            raise _layout_error(f"a compressed record (method {method})")
        header = pread_exact(fd, 30, local)
        if header[:4] != _LOCAL:
            raise _layout_error(f"no local header at byte {local}")
        (flags,) = struct.unpack_from("<H", header, 6)
        name_len, extra_len = struct.unpack_from("<HH", header, 26)
        data = local + 30 + name_len + extra_len
        crc = struct.pack("<I", pieces.crc(fd, data, comp))
        if flags & 0x8:  # a data descriptor follows the data: signature, then the CRC
            if pread_exact(fd, 4, data + comp) != _DESCRIPTOR:
                raise _layout_error(f"no data descriptor after the record at byte {local}")
            os.pwrite(fd, crc, data + comp + 4)
            patched.append((data + comp + 4, 4))
        else:
            os.pwrite(fd, crc, local + 14)
            patched.append((local + 14, 4))
        directory[at + 16 : at + 20] = crc
        at += 46 + n_name + n_extra + n_comment
    os.pwrite(fd, bytes(directory), cd_offset)
    return patched


def _file_crc(fd: int, pieces: _Pieces, patched: list[tuple[int, int]], end: int) -> int:
    """CRC-32 of bytes ``[0, end)``: large unpatched writes by their CRC, the rest read back."""
    dirty = sorted(patched)  # disjoint ranges
    starts = [lo for lo, _ in dirty]

    def touched(offset: int, length: int) -> bool:
        last = bisect.bisect_left(starts, offset + length) - 1  # the last range starting before
        return last >= 0 and dirty[last][0] + dirty[last][1] > offset

    crc, at = 0, 0
    for offset, length, piece in pieces.pieces:
        if offset >= end:
            break
        if length >= COMBINE_BYTES and offset + length <= end and not touched(offset, length):
            crc = crc32_combine(crc32_of_range(fd, at, offset, crc), piece, length)
            at = offset + length
    return crc32_of_range(fd, at, end, crc)


def _save_with_torch_writer(obj: Any, f: _HashingFile) -> bool:
    """Save through torch's zip writer with its CRCs off; False when that API is not there."""
    writer_type = getattr(torch._C, "PyTorchFileWriter", None)
    save = getattr(torch.serialization, "_save", None)
    alignment = getattr(torch.serialization, "_get_storage_alignment", lambda: 64)
    if writer_type is None or save is None:
        return False
    try:
        writer = writer_type(f, False, alignment())
    except TypeError:  # an older signature
        return False
    try:
        save(obj, writer, pickle, torch.serialization.DEFAULT_PROTOCOL, False)
    except BaseException:
        # finalize now (as torch.save does), or the writer's destructor writes the end again
        # later, from the garbage collector, where a second error aborts the process
        with contextlib.suppress(Exception):
            writer.write_end_of_file()
        raise
    writer.write_end_of_file()
    return True


def write_archive(obj: Any, f: BinaryIO) -> tuple[int, int]:
    """Write ``obj`` as ``torch.save`` would, to the real file ``f`` (open for reading too).

    Nothing is fsynced here: the caller fsyncs once, after appending the checksum comment.

    Returns:
        ``(size, crc)``: the archive's size and the CRC-32 of its bytes before the last two (the
        zip comment's length, which the caller sets when it appends the checksum comment).

    Raises:
        OSError: From the writes (e.g. ENOSPC); the file is then incomplete.
        RuntimeError: The archive torch wrote is not laid out as expected (nothing is patched).
    """
    hashing = _HashingFile(f)
    own_crcs = _save_with_torch_writer(obj, hashing)
    if not own_crcs:
        logger.debug("torch's zip writer API is not available; using torch.save")
        torch.save(obj, cast(BinaryIO, hashing))  # it only writes and flushes
    f.flush()
    fd, size = f.fileno(), hashing.offset
    pieces = _Pieces(hashing.pieces)
    if own_crcs:
        patched = _patch_crcs(fd, pieces, size)
    else:
        _central_directory(fd, size)  # the same layout checks
        patched = []
    return size, _file_crc(fd, pieces, patched, size - 2)
