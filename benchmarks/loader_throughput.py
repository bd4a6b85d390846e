"""One loader's throughput: ``make_loader`` against torch's plain ``DataLoader`` and torchdata's.

The same map-style dataset (:class:`~benchmarks.data.SyntheticMap`: an int per item, about a
microsecond of Python work), batch 64, shuffled, through three loaders built the same way:
``torch.utils.data.DataLoader(shuffle=True)`` (RandomSampler), torchdata's
``StatefulDataLoader(shuffle=True)`` (its defaults, snapshot every step) and ``make_loader(
shuffle=True)`` (our ShuffledSampler, seeded workers, epoch forwarding). With workers every loader
keeps them (``persistent_workers=True``), so a measurement is one steady-state pass: worker start-up
is paid once, in the warm-up round. Each round runs the plain DataLoader beside each of the other two;
the headline is the median of the per-pair throughput ratios. Part of ``python -m benchmarks
scheduler``.
"""

from __future__ import annotations

import collections
import statistics
from collections.abc import Callable
from functools import partial
from typing import Any

import torch
from torch.utils.data import DataLoader

from benchmarks.data import SyntheticMap
from benchmarks.harness import Progress, Settings, Stat, clock, interleave
from benchmarks.results import Column, Headline, Table
from statefuldata import make_loader
from statefuldata.loader import quiet_stateful_dataloader

__all__ = [
    "OURS",
    "PLAIN",
    "TORCHDATA",
    "ZERO_WORKER_ROUNDS",
    "loader_throughput",
    "paired_throughput",
]

PLAIN, TORCHDATA, OURS = (
    "torch DataLoader",
    "torchdata StatefulDataLoader",
    "make_loader",
)
BATCH = 64
#: Rounds per repeat at 0 workers, where a pass takes ~0.1 s (more pairs for the same few seconds).
ZERO_WORKER_ROUNDS = 3


def _build(name: str, dataset: SyntheticMap, workers: int) -> Any:
    common: dict[str, Any] = {"batch_size": BATCH, "num_workers": workers}
    if workers:
        common["persistent_workers"] = True
    if name == PLAIN:
        generator = torch.Generator().manual_seed(0)
        return DataLoader(dataset, shuffle=True, generator=generator, **common)
    if name == TORCHDATA:
        return quiet_stateful_dataloader(dataset, shuffle=True, **common)
    return make_loader(dataset, shuffle=True, seed=0, **common)


def _epoch(loader: Any) -> float:
    return clock(lambda: collections.deque(loader, maxlen=0))


def loader_throughput(
    batches: int, workers: tuple[int, ...], repeats: int, settings: Settings, progress: Progress
) -> dict[int, dict[str, Stat]]:
    """Per worker count, the interleaved epoch times of the three loaders over ``batches`` batches."""
    dataset = SyntheticMap(batches * BATCH)
    groups: dict[int, dict[str, Stat]] = {}
    for count in workers:
        loaders = {name: _build(name, dataset, count) for name in (PLAIN, TORCHDATA, OURS)}
        variants: dict[str, Callable[[], float]] = {
            name: partial(_epoch, loader) for name, loader in loaders.items()
        }
        more = count == 0 and not settings.quick  # ~0.1 s a pass: more pairs (not in --quick)
        rounds = repeats * ZERO_WORKER_ROUNDS if more else repeats
        groups[count] = interleave(
            variants, repeats=rounds, warmup=settings.warmup, progress=progress, baseline=PLAIN
        )
        for loader in loaders.values():
            iterator = getattr(loader, "_iterator", None)
            shutdown = getattr(iterator, "_shutdown_workers", None)
            if callable(shutdown):
                shutdown()
    return groups


def paired_throughput(stat: Stat) -> float:
    """Median over the pairs of (baseline time / this time beside it): a throughput ratio; 1.0
    for the baseline itself."""
    if not stat.ratios:
        return 1.0
    return statistics.median(1.0 / r for r in stat.ratios)


def loader_table(batches: int, groups: dict[int, dict[str, Stat]]) -> Table:
    """Epoch time and throughput of each loader, relative to torch's plain DataLoader."""
    rows = []
    for workers, stats in groups.items():
        plain = stats[PLAIN].median
        for name, stat in stats.items():
            rows.append(
                {
                    "workers": workers,
                    "variant": name,
                    "seconds": stat.median,
                    "batches_per_s": f"{batches / stat.median:,.0f}",
                    "throughput_ratio": plain / stat.median,
                    "paired": paired_throughput(stat),
                    "stat": stat.to_dict(),
                }
            )
    return Table(
        title=f"One loader, one shuffled pass of {batches:,} batches of {BATCH} (throughput ratio: "
        "/ torch DataLoader, higher is better)",
        columns=[
            Column("workers", "workers", "int"),
            Column("variant", "variant"),
            Column("seconds", "epoch (median)", "seconds"),
            Column("batches_per_s", "batches/s", "text"),
            Column("throughput_ratio", "throughput / torch DataLoader (ratio of medians)", "ratio"),
            Column("paired", "median of per-pair throughput ratios", "ratio"),
        ],
        rows=rows,
    )


def loader_headline(groups: dict[int, dict[str, Stat]]) -> Headline:
    """make_loader's throughput over the plain DataLoader's at 0 workers (target >= 0.97)."""
    stats = groups[0]
    return Headline(
        key="loader_throughput",
        label="batches/s, make_loader / torch DataLoader (0 workers; median of per-pair ratios)",
        value=paired_throughput(stats[OURS]),
        op=">=",
        threshold=0.97,
    )
