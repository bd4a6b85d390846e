"""DataLoaderManager against the same loaders iterated by hand in the same order.

Three ``make_loader`` loaders over cheap items (an index; batch 64), mixed WEIGHTED 0.5/0.3/0.2 with
quotas equal to their lengths, so each loader makes exactly one pass per epoch. The hand loop gets
the manager's schedule precomputed and does ``next(iterators[i])`` for each entry: the least work
that yields the same batches. Each variant owns its own loaders (worker processes are persistent
when ``num_workers > 0``). A measurement is one whole epoch, including the manager building its
schedule. ``state_dict()`` is timed mid-epoch against collecting the three loaders' own states by
hand. Each round runs the two side by side (see :func:`benchmarks.harness.interleave`); the
headline is the median of the per-pair throughput ratios. The same run measures one loader's throughput against torch's plain ``DataLoader`` (see
:mod:`benchmarks.loader_throughput`).
"""

from __future__ import annotations

import collections
import itertools
from collections.abc import Callable
from functools import partial
from typing import Any

import attrs

from benchmarks.harness import Progress, Settings, Stat, clock, interleave
from benchmarks.loader_throughput import (
    ZERO_WORKER_ROUNDS,
    loader_headline,
    loader_table,
    loader_throughput,
    paired_throughput,
)
from benchmarks.results import BenchmarkResult, Column, Figure, Headline, Panel, Series, Table
from statefuldata import DataLoaderManager, MultiDataLoaderConfig, make_loader

__all__ = ["run"]

MANAGER, HAND = "DataLoaderManager", "by hand"
WEIGHTS = (0.5, 0.3, 0.2)


@attrs.frozen(kw_only=True)
class _Plan:
    lengths: tuple[int, ...]
    batch_size: int
    workers: tuple[int, ...]
    min_repeats: int
    state_calls: int
    loader_batches: int


FULL = _Plan(
    lengths=(1500, 900, 600),
    batch_size=64,
    workers=(0, 2),
    min_repeats=11,
    state_calls=200,
    loader_batches=2000,
)
QUICK = _Plan(
    lengths=(150, 90, 60),
    batch_size=64,
    workers=(0,),
    min_repeats=5,
    state_calls=20,
    loader_batches=100,
)


def _loaders(plan: _Plan, workers: int) -> list[Any]:
    return [
        make_loader(
            range(length * plan.batch_size),
            batch_size=plan.batch_size,
            shuffle=True,
            seed=i,
            num_workers=workers,
            persistent_workers=workers > 0,
        )
        for i, length in enumerate(plan.lengths)
    ]


def _config() -> MultiDataLoaderConfig:
    return MultiDataLoaderConfig(sampling_strategy="weighted", dataloader_weights=WEIGHTS)


def _manager_epoch(manager: DataLoaderManager, epochs: Any) -> float:
    epoch = next(epochs)
    return clock(lambda: collections.deque(manager.create_epoch_iterator("train", epoch), maxlen=0))


def _hand_epoch(loaders: list[Any], schedule: list[int]) -> float:
    def work() -> None:
        iterators = [iter(loader) for loader in loaders]
        for index in schedule:
            next(iterators[index])

    return clock(work)


def _calls(fn: Callable[[], object], count: int) -> float:
    return clock(lambda: [fn() for _ in range(count)]) / count


def _group(plan: _Plan, workers: int, repeats: int, settings: Settings, progress: Progress) -> dict:
    manager = DataLoaderManager(_loaders(plan, workers), train_config=_config())
    hand = _loaders(plan, workers)
    schedule = list(
        DataLoaderManager(hand, train_config=_config()).create_epoch_iterator().schedule
    )
    epochs = itertools.count()
    # an epoch at 0 workers takes ~0.1 s: more pairs for the headline, still a few seconds
    rounds = repeats * ZERO_WORKER_ROUNDS if workers == 0 and not settings.quick else repeats
    throughput = interleave(
        {
            MANAGER: partial(_manager_epoch, manager, epochs),
            HAND: partial(_hand_epoch, hand, schedule),
        },
        repeats=rounds,
        warmup=settings.warmup,
        progress=progress,
        baseline=HAND,
    )
    live = manager.create_epoch_iterator("train", next(epochs))
    collections.deque(itertools.islice(live, len(schedule) // 3), maxlen=0)
    loaders = manager.loaders()
    state_cost = interleave(
        {
            f"{MANAGER}.state_dict()": partial(_calls, manager.state_dict, plan.state_calls),
            "[loader.state_dict() for 3 loaders]": partial(
                _calls, lambda: [ld.state_dict() for ld in loaders], plan.state_calls
            ),
        },
        repeats=repeats,
        warmup=settings.warmup,
        progress=progress,
    )
    collections.deque(live, maxlen=0)  # finish the epoch so worker processes wind down cleanly
    return {"batches": len(schedule), "throughput": throughput, "state": state_cost}


def _rows(plan: _Plan, groups: dict[int, dict]) -> tuple[list[dict], list[dict]]:
    epoch_rows, state_rows = [], []
    for workers, group in groups.items():
        stats: dict[str, Stat] = group["throughput"]
        hand_s, batches = stats[HAND].median, group["batches"]
        for name, stat in stats.items():
            epoch_rows.append(
                {
                    "workers": workers,
                    "variant": name,
                    "seconds": stat.median,
                    "batches_per_s": batches / stat.median,
                    "throughput_ratio": hand_s / stat.median,
                    "paired": paired_throughput(stat),
                    "stat": stat.to_dict(),
                }
            )
        per_batch = hand_s / batches
        state: dict[str, Stat] = group["state"]
        base = state[f"[loader.state_dict() for {len(plan.lengths)} loaders]"].median
        for name, stat in state.items():
            state_rows.append(
                {
                    "workers": workers,
                    "variant": name,
                    "seconds": stat.median,
                    "ratio": stat.median / base,
                    "per_batch_ratio": stat.median / per_batch,
                    "stat": stat.to_dict(),
                }
            )
    return epoch_rows, state_rows


def run(settings: Settings) -> BenchmarkResult:
    plan = QUICK if settings.quick else FULL
    repeats = max(settings.repeats, plan.min_repeats)
    with Progress(settings, "scheduler") as progress:
        groups = {w: _group(plan, w, repeats, settings, progress) for w in plan.workers}
        single = loader_throughput(plan.loader_batches, plan.workers, repeats, settings, progress)
    epoch_rows, state_rows = _rows(plan, groups)
    epoch_table = Table(
        title=f"One epoch of {sum(plan.lengths):,} batches over 3 loaders (throughput ratio: "
        "manager / hand, higher is better)",
        columns=[
            Column("workers", "workers", "int"),
            Column("variant", "variant"),
            Column("seconds", "epoch (median)", "seconds"),
            Column("batches_per_s", "batches/s", "text"),
            Column("throughput_ratio", "throughput / hand (ratio of medians)", "ratio"),
            Column("paired", "median of per-pair throughput ratios", "ratio"),
        ],
        rows=[{**r, "batches_per_s": f"{r['batches_per_s']:,.0f}"} for r in epoch_rows],
    )
    state_table = Table(
        title="state_dict() per call, mid-epoch",
        columns=[
            Column("workers", "workers", "int"),
            Column("variant", "variant"),
            Column("seconds", "per call (median)", "seconds"),
            Column("ratio", "/ loaders by hand", "ratio"),
            Column("per_batch_ratio", "/ one batch (hand loop)", "ratio"),
        ],
        rows=state_rows,
    )
    worker_labels = [f"num_workers={w}" for w in plan.workers]
    panel = Panel(
        title="batches per second",
        categories=worker_labels,
        series=[
            Series(
                label=name,
                x=range(len(plan.workers)),
                y=[r["batches_per_s"] for r in epoch_rows if r["variant"] == name],
            )
            for name in (MANAGER, HAND)
        ],
        ylabel="batches/s",
    )
    first = next(
        r for r in epoch_rows if r["workers"] == plan.workers[0] and r["variant"] == MANAGER
    )
    return BenchmarkResult(
        name="scheduler",
        title="Multi-loader scheduler overhead",
        method=__doc__ or "",
        tables=[epoch_table, state_table, loader_table(plan.loader_batches, single)],
        headlines=[
            Headline(
                key="scheduler_throughput",
                label=f"batches/s, DataLoaderManager / by hand ({plan.workers[0]} workers; median of "
                "per-pair ratios)",
                value=first["paired"],
                op=">=",
                threshold=0.98,
            ),
            loader_headline(single),
        ],
        figures=[
            Figure(filename="scheduler.png", title="DataLoaderManager vs hand loop", panels=[panel])
        ],
    )
