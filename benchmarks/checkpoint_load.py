"""The checkpoint benchmark's rows, and its load section (see :mod:`benchmarks.checkpoint`)."""

from __future__ import annotations

import gc
import mmap
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import checkpoint_peers as peers
from benchmarks.harness import Stat, interleave, load_average, ratio
from benchmarks.results import Column, Panel, Series, Table

__all__ = [
    "CRC_PASS",
    "LOAD_REPEATS",
    "MMAP_LOAD",
    "OURS_LOAD",
    "PLAIN_LOAD",
    "READ_PASS",
    "load_rows",
    "load_table",
    "load_variants",
    "section_panel",
    "section_rows",
]

Variant = Callable[[], float]
MMAP_LOAD, PLAIN_LOAD, OURS_LOAD, CRC_PASS, READ_PASS = (
    "torch.load(mmap=True)",
    "torch.load",
    "ours: read_checkpoint (mmap, verified)",
    "one CRC-32 pass over the file (the floor of an exact check)",
    "one read of every byte of the mapped file, no checksum (the memory floor)",
)
#: Kept rounds (at least) of the load section: each is short, and the machine may be shared.
LOAD_REPEATS = 15


def section_rows(
    section: str, size: int, stats: dict[str, Stat], baseline: str
) -> list[dict[str, Any]]:
    """One row per variant of a section: median, quartiles, ratio to ``baseline``, bytes/s, and
    the median of the per-pair ratios where the section ran ``baseline`` beside each variant."""
    base = stats[baseline].median
    paired = any(stat.ratios for stat in stats.values())  # the baseline ran beside each variant
    return [
        {
            "section": section,
            "size": size,
            "variant": name,
            "median_s": stat.median,
            "q1_s": stat.q1,
            "q3_s": stat.q3,
            "ratio": ratio(stat.median, base),
            "paired": 1.0 if name == baseline and paired else stat.paired_ratio,
            "rate": size / stat.median if stat.median else float("inf"),
        }
        for name, stat in stats.items()
    ]


def load_variants(p: peers.Peers, path: Path) -> dict[str, Variant]:
    """The load variants of ``path``, the mmap baseline first, each after a ``gc.collect()``."""
    variants: dict[str, Variant] = {
        MMAP_LOAD: partial(peers.torch_load, path, mmap=True),
        PLAIN_LOAD: partial(peers.torch_load, path, mmap=False),
        OURS_LOAD: partial(peers.ours_load, path),
        CRC_PASS: partial(peers.crc_pass, path),
        READ_PASS: partial(_read_pass, path),
    }
    if p.fabric is not None:
        variants["Fabric load"] = partial(p.fabric_load, path)
    return {name: partial(_collected, variant) for name, variant in variants.items()}


def load_rows(
    size: int, variants: dict[str, Variant], kept: dict[str, Any]
) -> list[dict[str, Any]]:
    """The load section's rows, each with every kept repeat (in the order run) and the load
    average before and after the section (the machine may be shared)."""
    before = load_average()
    stats = interleave(variants, **kept)
    after = load_average()
    rows = section_rows("load", size, stats, MMAP_LOAD)
    for row in rows:
        row["samples_ms"] = " ".join(f"{1e3 * x:.3g}" for x in stats[row["variant"]].samples)
        row["load_average"] = f"{before} -> {after}"
    return rows


def _read_pass(path: Path) -> float:
    """Read every byte of the file once through a map (a sum of 64-bit words, on one core): what
    any check that reads the bytes costs on this machine's memory, before the checksum's own work."""
    start = time.perf_counter()
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
        words = np.frombuffer(mapped, dtype=np.uint64, count=len(mapped) // 8)
        words.sum()
        del words  # the map closes only once no array views it
    return time.perf_counter() - start


def _collected(variant: Variant) -> float:
    """``variant()`` after an untimed ``gc.collect()`` and ``gc.freeze()``, as
    :func:`benchmarks.harness.clock` does: no load pays for a collection of the objects the one
    before it unpickled, and the collection walks only those."""
    gc.collect()
    gc.freeze()
    return variant()


def load_table(rows: list[dict[str, Any]]) -> Table:
    """Every kept repeat of the load section, in the order run, and the load average."""
    return Table(
        title="load: every kept repeat (ms, in the order run) and the load average",
        columns=[
            Column("size", "payload bytes", "bytes"),
            Column("variant", "variant"),
            Column("samples_ms", "repeats (ms)"),
            Column("load_average", "load average before -> after"),
        ],
        rows=[r for r in rows if r["section"] == "load"],
    )


def section_panel(rows: list[dict[str, Any]], section: str) -> Panel:
    """One panel of the figure: each variant of ``section`` / its first variant, per size."""
    chosen = [r for r in rows if r["section"] == section]
    names = list(dict.fromkeys(r["variant"] for r in chosen))
    series = [
        Series(
            label=f"{size / 1e6:,.0f} MB",
            x=range(len(names)),
            y=[
                next(r["ratio"] for r in chosen if r["size"] == size and r["variant"] == n)
                for n in names
            ],
        )
        for size in sorted({r["size"] for r in chosen})
    ]
    return Panel(title=section, series=series, ylabel="/ first variant", categories=names)
