"""Checksums: every written file carries one, every entry point verifies it, damage is named."""

from __future__ import annotations

import errno
import io
import itertools
import logging
import os
import random
import stat
import struct
import threading
import traceback
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

import trainer.checkpoints.archive as archive
import trainer.checkpoints.integrity as integrity
from trainer.__main__ import main
from trainer.checkpoints import (
    CheckpointError,
    CheckpointWriteError,
    build_payload,
    load_checkpoint,
    read_checkpoint,
    write_checkpoint,
)
from trainer.checkpoints.integrity import IntegrityStatus, check_integrity
from trainer.checkpoints.manager import CheckpointManager
from trainer.config import CheckpointConfig
from trainer.resume import ResumeState

BIG = "big"


def payload(step: int, fill: float | None = None) -> dict:
    torch.manual_seed(step)
    model = torch.nn.Linear(4, 3)
    model.register_buffer(BIG, torch.randn(64, 1024) if fill is None else torch.full((8,), fill))
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


def record_span(path: Path, suffix: str) -> tuple[int, int]:
    """(offset, size) of the data of the zip record whose name ends with ``suffix``."""
    with zipfile.ZipFile(path) as archive:
        infos = [i for i in archive.infolist() if i.filename.endswith(suffix)]
        assert len(infos) == 1, [i.filename for i in archive.infolist()]
        info = infos[0]
    with path.open("rb") as f:
        f.seek(info.header_offset)
        header = f.read(30)
    name_len, extra_len = struct.unpack("<HH", header[26:30])
    return info.header_offset + 30 + name_len + extra_len, info.file_size


def storage_record(path: Path) -> str:
    """The record name of the largest tensor storage (the 64 x 1024 buffer)."""
    with zipfile.ZipFile(path) as archive:
        return max(archive.infolist(), key=lambda i: i.file_size).filename


def damage(path: Path, kind: str) -> None:
    data = bytearray(path.read_bytes())
    rng = random.Random(kind)
    if kind in ("1 bit", "100 bits", "4 KiB zeroed"):
        start, size = record_span(path, storage_record(path))
    elif kind == "structure":
        start, size = record_span(path, "data.pkl")
    else:  # the central directory, between the last record and the end record
        start = data.rfind(b"PK\x01\x02")
        size = 46
    if kind == "4 KiB zeroed":
        offset = start + rng.randrange(0, size - 4096)
        data[offset : offset + 4096] = bytes(4096)
    else:
        for bit in rng.sample(range(size * 8), 100 if kind == "100 bits" else 1):
            data[start + bit // 8] ^= 1 << (bit % 8)
    path.write_bytes(bytes(data))


class Trainer:
    def checkpoint_payload(self) -> dict:
        raise NotImplementedError

    def restore_from_payload(self, payload: dict) -> int:
        return payload["global_step"]


def test_written_files_carry_a_checksum_and_load_with_plain_torch_load(tmp_path: Path) -> None:
    path = write_checkpoint(tmp_path / "a.ckpt", payload(3))
    report = check_integrity(path)
    assert report.status is IntegrityStatus.VERIFIED and report.algorithm == "crc32"
    assert report.stored == report.computed and len(report.stored) == 8
    assert report.covered_bytes == path.stat().st_size - len(zipfile.ZipFile(path).comment)
    assert (
        zipfile.ZipFile(path).comment == f"statefuldata-checksum v1 crc32 {report.stored}".encode()
    )
    assert zipfile.ZipFile(path).testzip() is None  # torch's own record CRCs still hold
    expected = payload(3)["model_state_dict"][BIG]
    for mmap in (False, True):
        loaded = torch.load(path, weights_only=True, mmap=mmap)
        assert torch.equal(loaded["model_state_dict"][BIG], expected)
    assert torch.equal(read_checkpoint(path)["model_state_dict"][BIG], expected)


@pytest.mark.parametrize("threaded", [False, True])
def test_large_files_are_hashed_in_a_thread_with_the_same_digest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, threaded: bool
) -> None:
    if threaded:  # the fsync and load overlap paths, without writing 16 MiB
        monkeypatch.setattr(integrity, "OVERLAP_BYTES", 1)
    path = write_checkpoint(tmp_path / "a.ckpt", payload(5))
    assert check_integrity(path).status is IntegrityStatus.VERIFIED
    assert read_checkpoint(path)["global_step"] == 5
    damage(path, "1 bit")
    with pytest.raises(CheckpointError, match="checksum mismatch"):
        read_checkpoint(path)


@pytest.mark.parametrize("hashing", ["by a helper thread", "inline"])
def test_large_writes_hashed_while_written_give_torch_saves_bytes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, hashing: str
) -> None:
    monkeypatch.setattr(archive, "DEFER_BYTES", 1024)  # every tensor hashed apart
    if hashing == "inline":  # no helper threads (an exiting interpreter)
        monkeypatch.setattr(archive, "_pool", lambda: None)
    data = payload(6)
    data["model_state_dict"]["more"] = torch.arange(5000.0)
    path = write_checkpoint(tmp_path / "a.ckpt", data)
    buffer = io.BytesIO()
    torch.save(dict(data), buffer)  # to a file object, as ours: the same archive name
    with zipfile.ZipFile(path) as ours, zipfile.ZipFile(buffer) as theirs:
        layout = [(i.filename, i.header_offset, i.file_size) for i in ours.infolist()]
        assert layout == [(i.filename, i.header_offset, i.file_size) for i in theirs.infolist()]
        for info in ours.infolist():  # the same records with torch's CRCs (the id is per save)
            if not info.filename.endswith("serialization_id"):
                other = theirs.getinfo(info.filename)
                assert (info.CRC, ours.read(info)) == (other.CRC, theirs.read(other))
        assert ours.testzip() is None
    assert check_integrity(path).status is IntegrityStatus.VERIFIED


def test_a_save_fsyncs_the_file_once_and_the_folder_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    manager = CheckpointManager(CheckpointConfig(root_dir=tmp_path, max_checkpoints=1))
    manager.write_payload(payload(1), epoch=0, global_step=1, metrics=None)
    manager.wait()
    synced: list[str] = []
    real = os.fsync

    def spy(fd: int) -> None:
        synced.append("folder" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file")
        real(fd)

    monkeypatch.setattr(os, "fsync", spy)
    monkeypatch.setattr(archive, "DEFER_BYTES", 1024)  # the large-write path, on a small file
    path = manager.write_payload(payload(2), epoch=0, global_step=2, metrics=None)
    manager.wait()  # rotation (one unlink, no fsync)
    assert synced == ["file", "folder"]
    assert [p.name for p in sorted(tmp_path.glob("*.ckpt"))] == sorted([path.name, "latest.ckpt"])
    assert read_checkpoint(tmp_path / "latest.ckpt")["global_step"] == 2


def test_an_fsync_error_fails_the_save(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_checkpoint(tmp_path / "a.ckpt", payload(1))

    def failing(fd: int) -> None:
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(archive, "DEFER_BYTES", 1024)
    monkeypatch.setattr(os, "fsync", failing)
    with pytest.raises(CheckpointWriteError, match="Input/output error"):
        write_checkpoint(tmp_path / "a.ckpt", payload(2))
    monkeypatch.undo()
    assert read_checkpoint(tmp_path / "a.ckpt")["global_step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["a.ckpt"]


DAMAGE = ["1 bit", "100 bits", "4 KiB zeroed", "structure", "directory"]


@pytest.mark.parametrize("kind", DAMAGE)
def test_damage_is_caught_by_every_entry_point(
    tmp_path: Path, kind: str, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture
) -> None:
    manager = CheckpointManager(CheckpointConfig(root_dir=tmp_path))
    good = manager.write_payload(payload(1), epoch=0, global_step=1, metrics=None)
    bad = manager.write_payload(payload(2), epoch=0, global_step=2, metrics=None)
    damage(bad, kind)
    report = check_integrity(bad)
    assert report.status is IntegrityStatus.MISMATCH and report.stored != report.computed
    pattern = (
        rf"Cannot read checkpoint {bad}: checksum mismatch: crc32 stored .* corrupt or truncated"
    )
    with pytest.raises(CheckpointError, match=pattern):
        read_checkpoint(bad)
    with pytest.raises(CheckpointError, match="checksum mismatch"):
        load_checkpoint(bad, Trainer())
    with caplog.at_level(logging.WARNING):
        assert manager.find_latest_valid() == good.resolve()
        model = torch.nn.Linear(4, 3)
        model.register_buffer(BIG, torch.zeros(64, 1024))
        assert manager.restore_from_checkpoint(model, [], [])[1] == 1
    skipped = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert skipped and all("Skipping checkpoint" in m and "checksum mismatch" in m for m in skipped)
    assert torch.equal(model.big, payload(1)["model_state_dict"][BIG])
    capsys.readouterr()
    assert main(["inspect", str(bad)]) == 1
    out = capsys.readouterr().out
    assert f"checksum        checksum mismatch: crc32 stored {report.stored}, computed" in out
    if kind in ("1 bit", "100 bits", "4 KiB zeroed"):
        assert f"{storage_record(bad)} (tensor storage" in out and "Bad CRC-32" in out
    elif kind == "structure":
        assert "data.pkl (the pickled structure" in out


def test_damaged_end_and_unknown_algorithm_are_named(tmp_path: Path, capsys) -> None:
    path = write_checkpoint(tmp_path / "a.ckpt", payload(1))
    data = path.read_bytes()
    path.write_bytes(data[:-3] + bytes([data[-3] ^ 0x40]) + data[-2:])  # a digest char not hex
    with pytest.raises(CheckpointError, match=r"damaged or truncated end of file: the zip end"):
        read_checkpoint(path)
    path.write_bytes(data[:-30])
    with pytest.raises(CheckpointError, match=r"damaged or truncated end of file.*corrupt"):
        read_checkpoint(path)
    assert main(["inspect", str(path), "--json"]) == 1
    assert '"status": "damaged or truncated end of file"' in capsys.readouterr().out
    path.write_bytes(data.replace(b" crc32 ", b" crc64 "))
    with pytest.raises(CheckpointError, match=r"unknown checksum algorithm: 'crc64'.*upgrade"):
        read_checkpoint(path)
    path.write_bytes(data.replace(b"checksum v1 ", b"checksum v2 "))
    with pytest.raises(CheckpointError, match=r"checksum format v2 \(this version reads v1\)"):
        read_checkpoint(path)


def test_files_without_a_checksum_load_with_one_warning(tmp_path: Path, caplog) -> None:
    path = tmp_path / "old.ckpt"
    torch.save(payload(4), path)  # as every file written before checksums
    assert check_integrity(path).status is IntegrityStatus.NO_CHECKSUM
    with caplog.at_level(logging.WARNING):
        assert read_checkpoint(path)["global_step"] == 4
        assert read_checkpoint(path)["global_step"] == 4
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "carries no checksum" in warnings[0] and str(path) in warnings[0]


class Custom:
    pass


@pytest.mark.parametrize(
    ("value", "blocked"),
    [
        (np.zeros(3), r"numpy\.(_core|core)\.multiarray\._reconstruct"),
        (np.float64(1.5), r"numpy\.(_core|core)\.multiarray\.scalar"),
        (Custom(), r"\S*test_integrity\.Custom"),
    ],
)
def test_forbidden_pickles_name_the_global_and_never_suggest_unsafe_loading(
    tmp_path: Path, value: object, blocked: str
) -> None:
    path = tmp_path / "unsafe.ckpt"
    torch.save({**payload(1), "metrics_history": {"x": value}}, path)
    with pytest.raises(
        CheckpointError, match=rf"holds a pickled {blocked}.*torch\.from_numpy"
    ) as info:
        read_checkpoint(path)
    text = "".join(traceback.format_exception(info.value))  # the whole traceback a user sees
    assert "weights_only=False" not in text and "weights_only` set to `False" not in text
    assert info.value.__cause__ is None and info.value.__suppress_context__


def test_crc32_jobs_started_in_the_background_give_zlibs_crc_and_raise_their_errors(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from trainer.checkpoints import crc

    monkeypatch.setattr(crc, "PARALLEL_MIN_BYTES", 1000)  # split 100 kB among the threads
    data = random.Random(3).randbytes(100_003)
    for threads, start in itertools.product((1, 2, 3, None), (0, 0xDEADBEEF)):
        job = crc.Crc32Job.start(memoryview(data), threads=threads, start=start)
        assert job.result() == zlib.crc32(data, start)
    assert crc.Crc32Job.start(memoryview(b""), threads=2, start=9).result() == 9
    words = memoryview(np.arange(1000, dtype=np.int64))  # cast to bytes as a file's map is
    assert crc.Crc32Job.start(words, threads=2).result() == zlib.crc32(words.tobytes())

    def fail(part: object, value: int = 0) -> int:
        raise OSError(errno.EIO, "Input/output error reading the mapped file")

    monkeypatch.setattr(crc, "_isal_crc32", fail)
    job = crc.Crc32Job.start(memoryview(data), threads=2)
    with pytest.raises(OSError, match="Input/output error reading the mapped file"):
        job.result()
    monkeypatch.undo()

    started = []

    def start_once(self: threading.Thread) -> None:  # the second thread cannot be started
        if started:
            raise RuntimeError("can't start new thread")
        started.append(self)
        original_start(self)

    original_start = threading.Thread.start
    monkeypatch.setattr(threading.Thread, "start", start_once)
    monkeypatch.setattr(crc, "PARALLEL_MIN_BYTES", 1000)
    mapped = integrity.mmap.mmap(-1, len(data))
    mapped[:] = data
    whole = memoryview(mapped)
    with pytest.raises(RuntimeError, match="can't start new thread") as info:
        crc.Crc32Job.start(whole, threads=2)
    started[0].join()
    whole.release()
    mapped.close()  # a BufferError if the failed start left a part exported
    assert mapped.closed and info.traceback  # (the traceback, kept alive, still holds the parts)


def test_a_large_files_map_is_closed_once_checked_and_its_errors_come_from_result(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(integrity, "OVERLAP_BYTES", 1)  # the mapped path, without 16 MiB
    path = write_checkpoint(tmp_path / "a.ckpt", payload(5))
    with open(path, "rb") as f:
        check = integrity.Verification.start(f.fileno())
        mapped = check._mapped
        assert mapped is not None and not mapped._mapped.closed
        assert check.result().status is IntegrityStatus.VERIFIED
        assert mapped._mapped.closed and check.result().status is IntegrityStatus.VERIFIED

    def refuse(*args: object, **kwargs: object) -> None:
        raise OSError(errno.ENODEV, "No such device (mmap refused)")

    monkeypatch.setattr(integrity.mmap, "mmap", refuse)
    with open(path, "rb") as f:
        check = integrity.Verification.start(f.fileno())  # no error yet: the load goes on
        with pytest.raises(OSError, match=r"No such device \(mmap refused\)"):
            check.result()


def test_our_crc32_is_zlibs_whichever_computes_it_combined_parallel_and_from_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from trainer.checkpoints import crc

    monkeypatch.setattr(crc, "PARALLEL_MIN_BYTES", 1000)  # split 300 kB among the threads
    rng = random.Random(7)
    data = rng.randbytes(300_001)
    for implementation in (crc._isal_crc32, None):  # ISA-L's (where installed), zlib's
        monkeypatch.setattr(crc, "_isal_crc32", implementation)
        for start in (0, 1, 0xDEADBEEF):
            assert crc.crc32(data, start) == zlib.crc32(data, start)
            assert crc.crc32(memoryview(data)[17:], start) == zlib.crc32(data[17:], start)
    monkeypatch.undo()
    monkeypatch.setattr(crc, "PARALLEL_MIN_BYTES", 1000)
    for cut in (0, 1, 4096, 300_000, 300_001):
        a, b = data[:cut], data[cut:]
        assert crc.crc32_combine(zlib.crc32(a), zlib.crc32(b), len(b)) == zlib.crc32(data)
    view = memoryview(data)
    for threads in (1, 2, 3):
        assert crc.crc32_parallel(view, threads=threads, start=5) == zlib.crc32(data, 5)
    (tmp_path / "f").write_bytes(data)
    fd = os.open(tmp_path / "f", os.O_RDONLY)
    try:
        assert crc.crc32_of_range(fd, 10, 300_001, 3) == zlib.crc32(data[10:], 3)
        assert crc.pread_exact(fd, 5, 299_990) == data[299_990:299_995]
        with pytest.raises(EOFError, match=r"file ended at byte 300001 \(expected 300002\)"):
            crc.crc32_of_range(fd, 0, 300_002)
    finally:
        os.close(fd)


def test_writeback_is_started_in_steps_over_the_data_and_the_file_stays_exact(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    started: list[tuple[int, int]] = []
    real = archive._start_writeback

    def spy(fd: int, offset: int, size: int) -> None:
        started.append((offset, size))
        real(fd, offset, size)  # the real sync_file_range where there is one

    monkeypatch.setattr(archive, "_start_writeback", spy)
    monkeypatch.setattr(archive, "DEFER_BYTES", 1024)
    monkeypatch.setattr(archive, "WRITEBACK_BYTES", 8192)
    data = payload(4)
    data["model_state_dict"].update({f"t{i}": torch.full((3000,), float(i)) for i in range(5)})
    path = write_checkpoint(tmp_path / "a.ckpt", data)
    assert len(started) >= 2 and started[0][0] == 0
    assert all(a + n == b for (a, n), (b, _) in itertools.pairwise(started))  # contiguous steps
    assert all(n >= 8192 for _, n in started) and sum(started[-1]) <= path.stat().st_size
    assert check_integrity(path).status is IntegrityStatus.VERIFIED
    loaded = read_checkpoint(path)["model_state_dict"]
    assert all(torch.equal(loaded[f"t{i}"], torch.full((3000,), float(i))) for i in range(5))
    started.clear()
    monkeypatch.setattr(archive, "WRITEBACK_BYTES", 1 << 40)  # a small file: left to the fsync
    write_checkpoint(tmp_path / "b.ckpt", data)
    assert started == []
