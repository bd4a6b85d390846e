"""``torch.save``'s zip archive, written once, each byte hashed once, the hashing hidden in the fsync.

``torch.save`` computes the CRC-32 of every zip record itself (miniz, about 1 GB/s), and the
checkpoint's own checksum needs a CRC-32 of the whole file on top. :func:`write_archive` writes the
same archive through torch's zip writer with its CRCs off. Small writes (headers, the pickle) are
hashed as they go; the large ones (tensor data) are hashed afterwards from the file's pages, on the
usable cores, while a helper thread fsyncs the file: the disk is the bottleneck then and the cores
are idle, so a checksummed save costs what the write and the fsync cost. Then each record's CRC-32
is put where torch would have put it (its data descriptor and its central directory entry, so
``zipfile`` and ``unzip -t`` still check every record), and the CRC of the whole file is combined
from the pieces' CRCs (:func:`~trainer.checkpoints.crc.crc32_combine`): only the few hundred bytes of
headers and the central directory are read back. The caller's own fsync then writes those few
patched pages.

The result is byte for byte what ``torch.save`` writes. Where torch's private writer API is not
there (another torch version), :func:`write_archive` falls back to ``torch.save`` and hashes its
writes the same way.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import logging
import mmap
import os
import pickle
import struct
import zlib
from typing import Any, BinaryIO, cast

import torch

from trainer.checkpoints.crc import crc32_combine, default_threads

__all__ = ["write_archive"]

logger = logging.getLogger(__name__)

#: Writes at least this large are hashed after the write, while the file is fsynced.
DEFER_BYTES = 1 << 20
#: Below this many deferred bytes they are hashed before the caller's one fsync instead (hashing
#: 8 MiB costs about what the extra fsync of the patched headers would).
OVERLAP_BYTES = 8 << 20
#: Pieces at least this large keep the CRC taken while writing; smaller ones are read back.
COMBINE_BYTES = 64 << 10
_LOCAL, _CENTRAL, _DESCRIPTOR = b"PK\x03\x04", b"PK\x01\x02", b"PK\x07\x08"
_EOCD, _ZIP64_EOCD, _ZIP64_LOCATOR = b"PK\x05\x06", b"PK\x06\x06", b"PK\x06\x07"
_FULL32 = 0xFFFFFFFF


def _pool() -> concurrent.futures.ThreadPoolExecutor:
    """The process's checkpoint helper threads (kept: a thread start costs milliseconds on a busy
    machine): one fsyncs a file while the others hash it."""
    global _POOL
    if _POOL is None:
        _POOL = concurrent.futures.ThreadPoolExecutor(
            max_workers=default_threads(), thread_name_prefix="checkpoint-save"
        )
    return _POOL


_POOL: concurrent.futures.ThreadPoolExecutor | None = None


class _HashingFile:
    """The file object torch's zip writer writes to: each write goes on, and is recorded.

    Small writes (headers, the pickle) are hashed at once; large ones (tensor data) are hashed
    later, from the file's pages, while the disk writes them (:func:`_hash_while_syncing`).
    """

    def __init__(self, f: BinaryIO) -> None:
        self._f = f
        self.offset = 0
        self.pieces: list[tuple[int, int, int | None]] = []  # (offset, size, crc32 or None)

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        size = view.nbytes
        self._f.write(view)
        self.pieces.append((self.offset, size, None if size >= DEFER_BYTES else zlib.crc32(view)))
        self.offset += size
        return size

    def flush(self) -> None:
        self._f.flush()


def _crc_spans(fd: int, size: int, spans: list[tuple[int, int]]) -> list[int]:
    """The CRC-32 of each ``(offset, length)`` of the file, through a read-only map."""
    try:
        mapped = mmap.mmap(fd, size, access=mmap.ACCESS_READ)
    except (OSError, ValueError, AttributeError):  # no map here: positional reads
        return [_crc_of_range(fd, offset, offset + length) for offset, length in spans]
    with mapped:
        crcs = []
        with memoryview(mapped) as view:
            for offset, length in spans:
                with view[offset : offset + length] as part:
                    crcs.append(zlib.crc32(part))
        return crcs


def _hash_while_syncing(
    fd: int, pieces: list[tuple[int, int, int | None]], size: int
) -> list[tuple[int, int, int]]:
    """Fill in the CRCs of the large writes, hashing the file while a helper thread fsyncs it.

    The fsync keeps the disk busy and leaves the cores free, so the hashing (over the usable
    cores) costs no time of its own. An fsync error is raised here: the caller's later fsync
    could succeed after the kernel dropped the unwritten pages.
    """
    todo = [(offset, length) for offset, length, crc in pieces if crc is None]
    if sum(length for _, length in todo) < OVERLAP_BYTES:
        found = iter(_crc_spans(fd, size, todo) if todo else [])
        return [(o, n, next(found) if c is None else c) for o, n, c in pieces]
    groups = max(1, min(default_threads() - 1, len(todo)))
    per = -(-len(todo) // groups)
    parts = [todo[i : i + per] for i in range(0, len(todo), per)]
    futures: list[concurrent.futures.Future[Any]] = []
    try:
        pool = _pool()
        futures.append(pool.submit(os.fsync, fd))
        futures += [pool.submit(_crc_spans, fd, size, part) for part in parts[1:]]
    except RuntimeError:  # the interpreter is exiting (no new threads): one after the other
        concurrent.futures.wait(futures)
        if not futures:
            os.fsync(fd)
        futures = futures[:1]
        parts = [todo]
    try:
        crcs = _crc_spans(fd, size, parts[0])
        for future in futures[1:]:
            crcs += future.result()
    finally:
        concurrent.futures.wait(futures)
    if futures:
        futures[0].result()  # the fsync's error, if any
    found = iter(crcs)
    return [(o, n, next(found) if c is None else c) for o, n, c in pieces]


def _pread(fd: int, size: int, offset: int) -> bytes:
    data = os.pread(fd, size, offset)
    while len(data) < size:
        more = os.pread(fd, size - len(data), offset + len(data))
        if not more:
            raise EOFError(f"file ended at byte {offset + len(data)} (expected {offset + size})")
        data += more
    return data


def _crc_of_range(fd: int, start: int, end: int, crc: int = 0) -> int:
    while start < end:
        chunk = _pread(fd, min(end - start, 1 << 20), start)
        crc = zlib.crc32(chunk, crc)
        start += len(chunk)
    return crc


def _layout_error(what: str) -> RuntimeError:
    return RuntimeError(  # torch changed its layout: refuse rather than write a bad file
        f"torch's zip writer produced an unexpected archive ({what}); this torch version is not "
        "supported by trainer.checkpoints yet: report it with the torch version"
    )


def _central_directory(fd: int, size: int) -> tuple[int, int, int]:
    """``(offset, size, entries)`` of the central directory, from the (zip64) end records."""
    end = _pread(fd, 22, size - 22)
    if end[:4] != _EOCD or end[-2:] != b"\x00\x00":
        raise _layout_error(f"no empty zip end record at its end (got {end!r})")
    entries, cd_size, cd_offset = struct.unpack_from("<HII", end, 10)
    if _FULL32 in (cd_size, cd_offset) or entries == 0xFFFF:
        locator = _pread(fd, 20, size - 42)
        if locator[:4] != _ZIP64_LOCATOR:
            raise _layout_error("a zip64 archive without its locator")
        (record_at,) = struct.unpack_from("<Q", locator, 8)
        record = _pread(fd, 56, record_at)
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
        return crc if at == end else _crc_of_range(fd, start, end)


def _patch_crcs(fd: int, pieces: _Pieces, size: int) -> list[tuple[int, int]]:
    """Write every record's CRC-32 where a zip reader checks it; return the patched byte ranges."""
    cd_offset, cd_size, entries = _central_directory(fd, size)
    directory = bytearray(_pread(fd, cd_size, cd_offset))
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
        header = _pread(fd, 30, local)
        if header[:4] != _LOCAL:
            raise _layout_error(f"no local header at byte {local}")
        (flags,) = struct.unpack_from("<H", header, 6)
        name_len, extra_len = struct.unpack_from("<HH", header, 26)
        data = local + 30 + name_len + extra_len
        crc = struct.pack("<I", pieces.crc(fd, data, comp))
        if flags & 0x8:  # a data descriptor follows the data: signature, then the CRC
            if _pread(fd, 4, data + comp) != _DESCRIPTOR:
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
    dirty = sorted(patched)
    crc, at = 0, 0
    for offset, length, piece in pieces.pieces:
        if offset >= end:
            break
        touched = any(lo < offset + length and offset < lo + n for lo, n in dirty)
        if length >= COMBINE_BYTES and not touched and offset + length <= end:
            crc = crc32_combine(_crc_of_range(fd, at, offset, crc), piece, length)
            at = offset + length
    return _crc_of_range(fd, at, end, crc)


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

    The file's data is fsynced here (its large writes are hashed meanwhile); the caller fsyncs
    again after the checksum comment, which then writes only the patched header pages.

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
    pieces = _Pieces(_hash_while_syncing(fd, hashing.pieces, size))
    if own_crcs:
        patched = _patch_crcs(fd, pieces, size)
    else:
        _central_directory(fd, size)  # the same layout checks
        patched = []
    return size, _file_crc(fd, pieces, patched, size - 2)
