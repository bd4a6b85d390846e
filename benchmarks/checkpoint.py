"""Checkpoint save and load: what verifying a checksum costs, side by side with the same path without it.

Payload: a v1 checkpoint (``build_payload``) of a model made of float32 tensors of 4 MiB (fewer,
smaller ones below 4 MiB), ~4 MB and ~400 MB (``--quick``: 1 MB and 8 MB). **save**: an atomic write
(temp file, fsync, replace, fsync of the folder) with no checksum, against ours
(``write_checkpoint``: CRC-32 hashed from the page cache while a thread fsyncs, stored in the zip
comment) and other candidates: each algorithm hashed inline as torch.save writes, or overlapped with
the fsync. **load**: ``torch.load(weights_only=True)`` of the open file, against ours
(``read_checkpoint``: CRC-32 in a thread while torch.load reads the same file) and candidates
(hash first, then load; other algorithms in a thread); warm (file in the page cache) and cold
(evicted with ``posix_fadvise(DONTNEED)`` before each load). **hash**: each algorithm over the
largest payload in memory. Each section is a table of named variants, timed interleaved at every
size, so more ways to save or load (async save, mmap load, DCP, Fabric) are more entries.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from functools import partial
from pathlib import Path
from typing import Any

import attrs
import torch

from benchmarks.checksums import (
    HASHERS,
    load_hashing_in_thread,
    load_hashing_sequentially,
    save_hashing_inline,
    save_hashing_overlapped,
)
from benchmarks.harness import Progress, Settings, Stat, interleave, ratio
from benchmarks.results import BenchmarkResult, Column, Figure, Headline, Panel, Series, Table
from trainer.checkpoints import build_payload, read_checkpoint, write_checkpoint
from trainer.checkpoints.atomic import atomic_write
from trainer.resume import ResumeState

__all__ = ["LOAD_VARIANTS", "SAVE_VARIANTS", "run"]

TENSOR_BYTES = 4 << 20
TARGET = 1.15
SaveVariant = Callable[[Mapping[str, Any], Path], object]
LoadVariant = Callable[[Path], object]


def _plain_save(payload: Mapping[str, Any], path: Path) -> None:
    atomic_write(path, lambda f: torch.save(dict(payload), f))


def _plain_load(path: Path) -> Any:
    with open(path, "rb") as f:
        return torch.load(f, map_location="cpu", weights_only=True)


SAVE_BASELINE, SAVE_OURS = "no checksum", "ours: crc32 overlapped with fsync"
SAVE_VARIANTS: dict[str, SaveVariant] = {
    SAVE_BASELINE: _plain_save,
    SAVE_OURS: lambda payload, path: write_checkpoint(path, payload),
    **{f"{name} inline": partial(save_hashing_inline, algorithm=name) for name in HASHERS},
    "sha256 overlapped with fsync": partial(save_hashing_overlapped, algorithm="sha256"),
    "crc32 overlapped, mmap": partial(save_hashing_overlapped, algorithm="crc32", mapped=True),
}
LOAD_BASELINE, LOAD_OURS = "no verification", "ours: crc32 in a thread"
LOAD_VARIANTS: dict[str, LoadVariant] = {
    LOAD_BASELINE: _plain_load,
    LOAD_OURS: read_checkpoint,
    "crc32 before load": partial(load_hashing_sequentially, algorithm="crc32"),
    **{
        f"{name} in a thread": partial(load_hashing_in_thread, algorithm=name)
        for name in HASHERS
        if name != "crc32"
    },
    "crc32 in a thread, mmap": partial(load_hashing_in_thread, algorithm="crc32", mapped=True),
}
COLD_VARIANTS = (LOAD_BASELINE, LOAD_OURS, "crc32 before load")


@attrs.frozen(kw_only=True)
class _Plan:
    sizes: tuple[int, ...]


FULL = _Plan(sizes=(4_000_000, 400_000_000))
QUICK = _Plan(sizes=(1_000_000, 8_000_000))


def _payload(size: int) -> dict[str, Any]:
    floats, chunk = size // 4, TENSOR_BYTES // 4
    model = torch.nn.ParameterList(
        torch.nn.Parameter(torch.randn(min(chunk, floats - start)), requires_grad=False)
        for start in range(0, floats, chunk)
    )
    return build_payload(
        model=model,
        optimizers=[],
        schedulers=[],
        scaler_state=None,
        rng_states=None,
        dataloader_manager_state=None,
        resume_state=ResumeState(global_step=1),
        epoch=0,
        global_step=1,
    )


def _timed(fn: Callable[[], object], before: Callable[[], object] | None = None) -> float:
    if before is not None:
        before()
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _hash(new: Callable[[], Any], data: bytes) -> None:
    new().update(data)


def _evict(path: Path) -> None:
    with open(path, "rb") as f:
        os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)


@contextlib.contextmanager
def _folder() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="bench-checkpoint-") as name:
        yield Path(name)


def _rows(section: str, size: int, stats: dict[str, Stat], baseline: str) -> list[dict[str, Any]]:
    base = stats[baseline].median
    return [
        {
            "section": section,
            "size": size,
            "variant": name,
            "median_s": stat.median,
            "ratio": ratio(stat.median, base),
            "rate": size / stat.median,
        }
        for name, stat in stats.items()
    ]


def _measure(settings: Settings, plan: _Plan) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    cold = hasattr(os, "posix_fadvise")
    with _folder() as folder, Progress(settings, "checkpoint") as progress:
        for i, size in enumerate(plan.sizes):
            payload, path = _payload(size), folder / "c.ckpt"
            warmup = settings.warmup if i == 0 else 0
            common: dict[str, Any] = {
                "repeats": settings.repeats,
                "warmup": warmup,
                "progress": progress,
            }
            saves = {
                n: partial(_timed, partial(v, payload, path)) for n, v in SAVE_VARIANTS.items()
            }
            rows += _rows("save", size, interleave(saves, **common), SAVE_BASELINE)
            write_checkpoint(path, payload)
            loads = {n: partial(_timed, partial(v, path)) for n, v in LOAD_VARIANTS.items()}
            rows += _rows("load, warm cache", size, interleave(loads, **common), LOAD_BASELINE)
            if cold:
                evicted = {
                    n: partial(_timed, partial(LOAD_VARIANTS[n], path), partial(_evict, path))
                    for n in COLD_VARIANTS
                }
                rows += _rows(
                    "load, cold cache", size, interleave(evicted, **common), LOAD_BASELINE
                )
            if size == plan.sizes[-1]:
                data = path.read_bytes()
                hashes = {n: partial(_timed, partial(_hash, h, data)) for n, h in HASHERS.items()}
                rows += _rows("hash in memory", size, interleave(hashes, **common), "crc32")
            del payload
    return rows


def _headline(rows: list[dict[str, Any]], section: str, variant: str, label: str) -> Headline:
    size = max(r["size"] for r in rows)
    row = next(
        r for r in rows if (r["section"], r["size"], r["variant"]) == (section, size, variant)
    )
    return Headline(
        key=f"{section.split(',')[0]}_verify_ratio",
        label=f"{label} at {size / 1e6:,.0f} MB",
        value=row["ratio"],
        op="<=",
        threshold=TARGET,
        detail=f"{row['median_s']:.3g} s",
    )


def _panel(rows: list[dict[str, Any]], section: str, ylabel: str, key: str) -> Panel:
    chosen = [r for r in rows if r["section"] == section]
    names = list(dict.fromkeys(r["variant"] for r in chosen))
    sizes = sorted({r["size"] for r in chosen})
    series = [
        Series(
            label=f"{size / 1e6:,.0f} MB",
            x=range(len(names)),
            y=[
                next(r[key] for r in chosen if r["size"] == size and r["variant"] == n)
                for n in names
            ],
        )
        for size in sizes
    ]
    return Panel(title=section, series=series, ylabel=ylabel, categories=names)


def run(settings: Settings) -> BenchmarkResult:
    rows = _measure(settings, QUICK if settings.quick else FULL)
    columns = [
        Column("section", "section"),
        Column("size", "payload bytes", "bytes"),
        Column("variant", "variant"),
        Column("median_s", "median", "seconds"),
        Column("ratio", "/ baseline (first row; hash: / crc32)", "ratio"),
        Column("rate", "bytes/s", "rate"),
    ]
    sections = list(dict.fromkeys(r["section"] for r in rows))
    return BenchmarkResult(
        name="checkpoint",
        title="Checkpoint save and load with and without checksum verification",
        method=(__doc__ or "").split("\n", 1)[1].strip().replace("\n", " "),
        tables=[Table(title="Save, load and hash times by variant", columns=columns, rows=rows)],
        headlines=[
            _headline(rows, "save", SAVE_OURS, "save with checksum / without"),
            _headline(rows, "load, warm cache", LOAD_OURS, "load verified / unverified"),
        ],
        figures=[
            Figure(
                filename="checkpoint.png",
                title="Checksum cost: time / the variant without it",
                panels=[
                    _panel(rows, s, "/ crc32" if s.startswith("hash") else "/ no checksum", "ratio")
                    for s in sections
                ],
            )
        ],
        notes=[
            "rate column: bytes of payload per second in M/s (MB/s)",
            "the candidate variants compute their digest but do not store it; ours stores it",
        ],
    )
