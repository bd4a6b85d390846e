"""Checkpoint save, asynchronous save, load and restore, side by side with the peers.

Payload: a v1 checkpoint (``build_payload``) of a model made of float32 tensors of 4 MiB (fewer,
smaller ones below 4 MiB), ~4 MB and ~400 MB (``--quick``: 1 MB and 8 MB). **save**: the same bytes
written raw in 4 MiB chunks and fsynced (the floor, the baseline), ``torch.save`` + fsync,
each save after an untimed ``os.sync()`` (so none pays for the dirty pages or freed blocks of the
one before) and at least 9 kept rounds, each of which runs the floor beside every other variant
(the headline is the median of the per-pair ratios: the disk's speed drifts between rounds),
``torch.save`` through an atomic write (temp file, fsync, rename, fsync of the folder; no checksum),
ours (``CheckpointManager.write_payload``: atomic, checksummed, ``latest`` moved, one fsync of the
folder; it keeps 2 files, so rotation fires, in the background; its manager holds the folder's
writer lock throughout, as ``fit()`` does), DCP ``save`` and Fabric ``save``.
**async save**: the time a training loop is blocked, for ours (the snapshot to host memory) and DCP's
``async_save``, and the time until the file is durable, against our synchronous save. **async save
in a training step** (:mod:`benchmarks.async_step`): a model of the same size trained by SGD, the
loop's blocked time for each way to save and the whole step's time. **load**: a
file ours wrote, by ``torch.load(mmap=True)`` (the baseline), ``torch.load``, ours
(``read_checkpoint``: memory-mapped, the checksum verified before it returns), Fabric's ``load``,
one CRC-32 pass over the file (the floor of any exact check) and one plain read of every byte
through a map (the memory floor); at least 15 kept rounds, each load after an untimed
``gc.collect()``, every repeat and the load average listed.
**restore**: load and copy into a model (``load_state_dict``); ours (``restore_from_checkpoint``)
checks the checksum while it copies; DCP loads into the model's tensors; warm and cold page cache
(cold: ``posix_fadvise(DONTNEED)`` before each). **hash**: checksum candidates over the largest
file in memory. Every section is timed interleaved (rotating rounds); medians.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import attrs
import torch

from benchmarks import async_step
from benchmarks import checkpoint_peers as peers
from benchmarks.checkpoint_load import (
    CRC_PASS,
    LOAD_REPEATS,
    MMAP_LOAD,
    OURS_LOAD,
    PLAIN_LOAD,
    load_rows,
    load_table,
    load_variants,
    section_panel,
    section_rows,
)
from benchmarks.checksums import HASHERS, hash_in_threads
from benchmarks.harness import (
    Progress,
    Settings,
    clock,
    interleave,
    quiet_logs,
    ratio,
    thaw,
)
from benchmarks.results import BenchmarkResult, Column, Figure, Headline, Table
from trainer.checkpoints import build_payload, write_checkpoint
from trainer.resume import ResumeState
from trainer.rng import capture_rng_states

__all__ = ["run"]

TENSOR_BYTES = 4 << 20
#: Kept rounds (at least) of the sections that write to disk.
DISK_REPEATS = 9
STEP_SECTION, STEP_TIME_SECTION = "async save in a training step", "training step time with a save"
_DISK_SECTIONS = ("save", "async save", STEP_SECTION)
RAW, TORCH_SAVE, ATOMIC, OURS_SYNC = (
    "raw write + fsync",
    "torch.save + fsync",
    "torch.save, atomic, no checksum",
    "ours: sync save",
)
STALL, DURABLE = "ours: async save, stall", "ours: async save, until durable"
MMAP_RESTORE, OURS_RESTORE = (
    "torch.load(mmap=True) + load_state_dict",
    "ours: restore_from_checkpoint (verified)",
)
Variant = Callable[[], float]


@attrs.frozen(kw_only=True)
class _Plan:
    sizes: tuple[int, ...]


FULL = _Plan(sizes=(4_000_000, 400_000_000))
QUICK = _Plan(sizes=(1_000_000, 8_000_000))


def _model(size: int, fill: bool = True) -> torch.nn.Module:
    floats, chunk = size // 4, TENSOR_BYTES // 4
    make = torch.randn if fill else torch.zeros
    return torch.nn.ParameterList(
        torch.nn.Parameter(make(min(chunk, floats - start)), requires_grad=False)
        for start in range(0, floats, chunk)
    )


def _payload(model: torch.nn.Module) -> dict[str, Any]:
    return build_payload(
        model=model,
        optimizers=[],
        schedulers=[],
        scaler_state=None,
        rng_states=capture_rng_states(),
        dataloader_manager_state=None,
        resume_state=ResumeState(global_step=1),
        epoch=0,
        global_step=1,
    )


@contextlib.contextmanager
def _folder() -> Iterator[Path]:
    base = Path.cwd() if os.access(Path.cwd(), os.W_OK) else None  # a real disk, not a tmpfs
    with tempfile.TemporaryDirectory(prefix=".bench-checkpoint-", dir=base) as name:
        yield Path(name)


def _save_variants(p: peers.Peers, payload: dict, data: bytes, folder: Path) -> dict[str, Variant]:
    path = folder / "save.ckpt"
    variants: dict[str, Variant] = {
        RAW: partial(peers.raw_write, data, path),
        TORCH_SAVE: partial(peers.torch_save_fsync, payload, path),
        ATOMIC: partial(peers.torch_save_atomic, payload, path),
        OURS_SYNC: partial(p.ours_sync, payload),
    }
    if p.dcp is not None:
        variants["DCP save"] = partial(p.dcp_save, payload)
    if p.fabric is not None:
        variants["Fabric save (no fsync)"] = partial(p.fabric_save, payload)
    return variants


def _async_variants(p: peers.Peers, payload: dict) -> dict[str, Variant]:
    variants: dict[str, Variant] = {
        OURS_SYNC: partial(p.ours_sync, payload),
        STALL: partial(p.ours_async, payload, until_durable=False),
        DURABLE: partial(p.ours_async, payload, until_durable=True),
    }
    if p.dcp is not None:
        variants["DCP async_save, stall"] = partial(p.dcp_async, payload, until_durable=False)
        variants["DCP async_save, until durable"] = partial(
            p.dcp_async, payload, until_durable=True
        )
    return variants


def _restore_variants(
    p: peers.Peers, target: torch.nn.Module, path: Path, dcp_folder: Path | None
) -> dict[str, Variant]:
    variants: dict[str, Variant] = {
        MMAP_RESTORE: partial(peers.torch_restore, target, path, mmap=True),
        "torch.load + load_state_dict": partial(peers.torch_restore, target, path, mmap=False),
        OURS_RESTORE: partial(peers.ours_restore, p.manager("reader"), target, path),
        "ours: read_checkpoint, then load_state_dict": partial(
            peers.ours_read_then_restore, target, path
        ),
    }
    if dcp_folder is not None:
        variants["DCP load (into the model)"] = partial(p.dcp_load, target, dcp_folder)
    if p.fabric is not None:
        variants["Fabric load (into the model)"] = partial(p.fabric_restore, target, path)
    return variants


def _settled(variant: Variant) -> float:
    """``variant()`` after an untimed ``os.sync()``: no save pays for dirty pages (or freed blocks)
    left by the one before it, whichever variant that was."""
    if hasattr(os, "sync"):
        os.sync()
    return variant()


def _cold(variant: Variant, path: Path) -> float:
    peers.evict(path)
    return variant()


def _measure(settings: Settings, plan: _Plan) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    with _folder() as folder, Progress(settings, "checkpoint") as progress, quiet_logs("trainer"):
        p = peers.Peers(folder)
        try:
            rows += _measure_sizes(settings, plan, p, folder, progress)
        finally:
            p.close()
    return rows


def _measure_sizes(
    settings: Settings, plan: _Plan, p: peers.Peers, folder: Path, progress: Progress
) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    cold = hasattr(os, "posix_fadvise")
    for i, size in enumerate(plan.sizes):
        model, target = _model(size), _model(size, fill=False)
        payload, path = _payload(model), folder / f"ours-{size}.ckpt"
        write_checkpoint(path, payload)
        data = path.read_bytes()
        dcp_folder = None
        if p.dcp is not None:
            dcp_folder = folder / f"dcp-{size}"
            p.write_dcp(payload, dcp_folder)
        common: dict[str, Any] = {
            "repeats": settings.repeats,
            "warmup": settings.warmup if i == 0 else 1,
            "progress": progress,
        }
        sections: list[tuple[str, dict[str, Variant]]] = [
            ("save", _save_variants(p, payload, data, folder)),
            ("async save", _async_variants(p, payload)),
            ("load", load_variants(p, path)),
            ("restore", _restore_variants(p, target, path, dcp_folder)),
        ]
        if cold:
            restores = _restore_variants(p, target, path, None)
            chosen = (MMAP_RESTORE, "torch.load + load_state_dict", OURS_RESTORE)
            evicted = {n: partial(_cold, restores[n], path) for n in chosen}
            sections.append(("restore, cold cache", evicted))
        for section, variants in sections:
            baseline, kept = next(iter(variants)), common
            if section in _DISK_SECTIONS:  # the disk is noisy: settle, and more rounds
                variants = {n: partial(_settled, v) for n, v in variants.items()}
                kept = {**common, "repeats": max(settings.repeats, DISK_REPEATS)}
            if section == "load":
                rows += load_rows(
                    size, variants, {**common, "repeats": max(settings.repeats, LOAD_REPEATS)}
                )
                continue
            if section == "save":  # the disk drifts: the floor runs beside every variant
                kept = {**kept, "baseline": baseline}
            rows += section_rows(section, size, interleave(variants, **kept), baseline)
        rows += _step_rows(settings, p, size, common, progress)
        if size == plan.sizes[-1]:
            hashes = {n: partial(clock, partial(_hash, h, data)) for n, h in HASHERS.items()}
            hashes["crc32, threads (ours, on load)"] = partial(
                clock, partial(hash_in_threads, data)
            )
            rows += section_rows("hash in memory", size, interleave(hashes, **common), "crc32")
        del payload, data, model, target
        thaw()  # this size's models and buffers may sit in frozen cycles: free them now
    return rows


def _step_rows(
    settings: Settings, p: peers.Peers, size: int, common: dict[str, Any], progress: Progress
) -> list[dict[str, Any]]:
    """The blocked times (/ the sync save) and the step times (/ the step without a save)."""
    bench = async_step.StepBench(p, size)
    variants = {n: partial(_settled, v) for n, v in async_step.variants(bench).items()}
    kept = {**common, "repeats": max(settings.repeats, DISK_REPEATS)}
    blocked = interleave(variants, **kept)
    del blocked[async_step.NO_SAVE]  # its value is the step's time, in the second section
    steps = bench.step_stats(kept["warmup"])
    steps = {async_step.NO_SAVE: steps.pop(async_step.NO_SAVE), **steps}
    rows = section_rows(STEP_SECTION, size, blocked, async_step.SYNC)
    return rows + section_rows(STEP_TIME_SECTION, size, steps, async_step.NO_SAVE)


def _hash(new: Callable[[], Any], data: bytes) -> None:
    new().update(data)


_HEADLINES = (
    ("save_floor_ratio", "save", OURS_SYNC, RAW, 1.1, "sync save / raw write + fsync"),
    ("save_verify_ratio", "save", OURS_SYNC, ATOMIC, 1.15, "save with checksum / without"),
    (
        "async_stall_ratio",
        STEP_SECTION,
        async_step.DEFERRED,
        async_step.SYNC,
        0.15,
        "async save stall in a training step (the trainer's deferred copy) / sync save",
    ),
    ("load_mmap_ratio", "load", OURS_LOAD, MMAP_LOAD, 1.2, "load verified / torch.load(mmap)"),
    (
        "restore_mmap_ratio",
        "restore",
        OURS_RESTORE,
        MMAP_RESTORE,
        1.2,
        "restore verified / torch.load(mmap) + load_state_dict",
    ),
    ("load_verify_ratio", "load", OURS_LOAD, PLAIN_LOAD, 1.15, "load verified / unverified"),
    (
        "load_floor_ratio",
        "load",
        OURS_LOAD,
        CRC_PASS,
        1.2,
        "load verified / one CRC-32 pass over the file",
    ),
)


def _headlines(rows: list[dict[str, Any]]) -> list[Headline]:
    size = max(r["size"] for r in rows)
    found = {(r["section"], r["variant"]): r for r in rows if r["size"] == size}
    out = []
    for key, section, ours, base, target, label in _HEADLINES:
        mine, theirs = found[(section, ours)], found[(section, base)]
        paired = mine.get("paired") if theirs.get("paired") == 1.0 else None
        detail = f"{mine['median_s']:.3g} s vs {theirs['median_s']:.3g} s (medians)"
        if paired is not None:  # ran beside the baseline: the median of the per-pair ratios
            label += " (median of per-pair ratios)"
            detail += f"; ratio of the medians {ratio(mine['median_s'], theirs['median_s']):.3g}"
        out.append(
            Headline(
                key=key,
                label=f"{label} at {size / 1e6:,.0f} MB",
                value=ratio(mine["median_s"], theirs["median_s"]) if paired is None else paired,
                op="<=",
                threshold=target,
                detail=detail,
            )
        )
    return out


NOTES = [
    "ratio column: / the first variant of the section (hash: / crc32); rate: payload bytes per "
    "second (M/s = MB/s)",
    "Fabric's save writes with torch.save to memory, then one write, without fsync; DCP saves "
    "the model state only (a folder of two files, fsynced) and loads into the model's tensors",
    "load: an exact checksum reads every byte, which torch.load(mmap=True) does not (its tensors "
    "are read when used), so 1.2x of it is out of reach for a verified load on 2 cores: the "
    "CRC-32 pass (its row: both cores, ISA-L's where the optional isal package is installed, "
    "zlib's otherwise; see the hash rows) keeps both cores busy on the memory bus, one core reads "
    "the bytes no faster than the read row (no checksum at all), and torch.load's unpickler needs "
    "a core of its own for as long as the baseline takes, so a verified load takes at least "
    "(2 x CRC-32 pass + torch.load(mmap=True)) / 2. Ours maps the file and starts its hashing "
    "threads before torch.load, so the unpickler runs meanwhile. Restore copies every byte anyway, "
    "and ours checks the checksum meanwhile",
    "save: ours writes each tensor while a helper thread hashes it, asks the kernel to start "
    "writing it to disk at once (sync_file_range on Linux; the raw baseline only fsyncs at the "
    "end) and fsyncs the file once and the folder once",
    "async save: ours keeps one host copy of the state between saves (reused buffers); the "
    "stall is that copy",
    "async save in a training step: the trainer defers the copy of the parameters and optimizer "
    "state to the writer thread, during the next forward and backward, and waits for it before "
    "optimizer.step(): the stall is the save call plus that wait. On 2 CPU cores the copy and the "
    "write take cores from the forward and backward, which the step-time rows show; on a GPU the "
    "step would not share them",
]


def run(settings: Settings) -> BenchmarkResult:
    rows = _measure(settings, QUICK if settings.quick else FULL)
    columns = [
        Column("section", "section"),
        Column("size", "payload bytes", "bytes"),
        Column("variant", "variant"),
        Column("median_s", "median", "seconds"),
        Column("q1_s", "q1", "seconds"),
        Column("q3_s", "q3", "seconds"),
        Column("ratio", "/ first variant", "ratio"),
        Column("paired", "median of per-pair ratios", "ratio"),
        Column("rate", "bytes/s", "rate"),
    ]
    sections = list(dict.fromkeys(r["section"] for r in rows))
    return BenchmarkResult(
        name="checkpoint",
        title="Checkpoint save, async save, load and restore against torch, DCP and Fabric",
        method=(__doc__ or "").split("\n", 1)[1].strip().replace("\n", " "),
        tables=[
            Table(title="Times by section and variant", columns=columns, rows=rows),
            load_table(rows),
        ],
        headlines=_headlines(rows),
        figures=[
            Figure(
                filename="checkpoint.png",
                title="Checkpoint paths: time / the first variant of each section",
                panels=[section_panel(rows, s) for s in sections],
            )
        ],
        notes=NOTES,
    )
