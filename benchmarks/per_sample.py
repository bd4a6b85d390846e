"""What per-sample seeding costs, and so its default: an epoch of 50 µs items, on against off.

A map dataset whose item costs about 50 µs (a calibrated loop of 64-bit LCG rounds) and draws from
``torch.rand``, ``numpy.random`` and ``random`` like an augmentation; one epoch of it through
``make_loader(..., batch_size=32, num_workers=0)`` with ``per_sample_seed`` off and on, timed
interleaved; the time it adds per item is compared with 50 µs. The rule from the issue: the option
is on by default if it costs <= 5% on a 50 µs item, else off (``statefuldata.persample.PER_SAMPLE_SEED_DEFAULT``); the second headline checks that the
default in the code agrees with this run's measurement. The parts of the per-sample work (deriving
the seed; saving, seeding and restoring each RNG) are timed side by side in a second table.
"""

from __future__ import annotations

import random
import statistics
import time
from collections.abc import Callable

import attrs
import numpy as np
import torch
from torch.utils.data import Dataset

from benchmarks.data import item_value
from benchmarks.harness import Progress, Settings, interleave
from benchmarks.results import BenchmarkResult, Column, Figure, Headline, Panel, Series, Table
from statefuldata import derive_seed, make_loader, seeded_call
from statefuldata.persample import PER_SAMPLE_SEED_DEFAULT

__all__ = ["run"]

ITEM_SECONDS = 50e-6
BUDGET = 1.05
_GENERATOR = torch.default_generator


@attrs.frozen(kw_only=True)
class _Plan:
    n: int
    calls: int


FULL = _Plan(n=4_000, calls=4_000)
QUICK = _Plan(n=600, calls=500)


def _work(rounds: int, index: int) -> int:
    x = index
    for _ in range(rounds):
        x = item_value(x)
    return x


def _item_seconds(rounds: int, count: int = 400) -> float:
    dataset = BusyAugmented(count, rounds)
    samples = []
    for _ in range(5):
        start = time.perf_counter()
        for i in range(count):
            dataset[i]
        samples.append((time.perf_counter() - start) / count)
    return statistics.median(samples)


def calibrate(target: float = ITEM_SECONDS) -> int:
    """LCG rounds that make one whole item (its random draws included) take about ``target``."""
    fixed = _item_seconds(0)
    per_round = (_item_seconds(100) - fixed) / 100
    rounds = max(1, round((target - fixed) / per_round))
    measured = _item_seconds(rounds)  # one correction step, against drift in the first estimate
    return max(1, round(rounds * (target - fixed) / max(measured - fixed, 1e-9)))


class BusyAugmented(Dataset):
    """Item i: ``rounds`` LCG rounds plus three random draws (torch, numpy, random)."""

    def __init__(self, n: int, rounds: int) -> None:
        self.n, self.rounds = n, rounds

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> torch.Tensor:
        value = _work(self.rounds, index) & 0xFF
        noise = torch.rand(4) + float(np.random.rand()) + random.random()
        return noise + value


def _epoch(dataset: Dataset, per_sample_seed: bool) -> float:
    loader = make_loader(dataset, batch_size=32, seed=0, per_sample_seed=per_sample_seed)
    start = time.perf_counter()
    for _ in loader:
        pass
    return time.perf_counter() - start


def _bare(dataset: Dataset) -> float:
    start = time.perf_counter()
    for i in range(len(dataset)):
        dataset[i]
    return time.perf_counter() - start


def _parts() -> dict[str, Callable[[], object]]:
    py_state, np_state, torch_state = (
        random.getstate(),
        np.random.get_state(),
        _GENERATOR.get_state(),
    )

    def python() -> None:
        state = random.getstate()
        random.seed(12345678901)
        random.setstate(state)

    def numpy() -> None:
        state = np.random.get_state()
        np.random.seed(1234567890)
        np.random.set_state(state)

    def torch_cpu() -> None:
        state = _GENERATOR.get_state()
        _GENERATOR.manual_seed(12345678901)
        _GENERATOR.set_state(state)

    parts = {
        "derive_seed(seed, epoch, index)": lambda: derive_seed(0, 3, 12345),
        "python random: save, seed, restore": python,
        "numpy legacy global: save, seed, restore": numpy,
        "torch CPU generator: save, seed, restore": torch_cpu,
        "seeded_call(seed, no-op): all three RNGs": lambda: seeded_call(7, int),
    }
    random.setstate(py_state)
    np.random.set_state(np_state)
    _GENERATOR.set_state(torch_state)
    return parts


def _per_call(fn: Callable[[], object], calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - start) / calls


def run(settings: Settings) -> BenchmarkResult:
    plan = QUICK if settings.quick else FULL
    rounds = calibrate()
    dataset = BusyAugmented(plan.n, rounds)
    with Progress(settings, "per_sample_seed") as progress:
        epochs = interleave(
            {
                "bare": lambda: _bare(dataset),
                "off": lambda: _epoch(dataset, False),
                "on": lambda: _epoch(dataset, True),
            },
            repeats=settings.repeats,
            warmup=settings.warmup,
            progress=progress,
        )
        parts = interleave(
            {name: (lambda fn=fn: _per_call(fn, plan.calls)) for name, fn in _parts().items()},
            repeats=settings.repeats,
            warmup=settings.warmup,
            progress=progress,
        )
    item = epochs["bare"].median / plan.n
    off, on = epochs["off"].median, epochs["on"].median
    ratio = on / off
    added = (on - off) / plan.n  # side by side, so independent of how well the item was calibrated
    share = added / ITEM_SECONDS
    cheap = share <= BUDGET - 1
    rows = [
        {"variant": "dataset[i] alone (the item)", "epoch_s": epochs["bare"].median, "ratio": None},
        {"variant": "make_loader, per_sample_seed=False", "epoch_s": off, "ratio": 1.0},
        {"variant": "make_loader, per_sample_seed=True", "epoch_s": on, "ratio": ratio},
    ]
    for row in rows:
        row["per_item_s"] = row["epoch_s"] / plan.n
    part_rows = [
        {"part": name, "per_call_s": stat.median, "share_of_item": stat.median / item}
        for name, stat in parts.items()
    ]
    chosen = "on" if cheap else "off"
    notes = [
        f"Item cost measured: {item * 1e6:.1f} µs ({rounds} LCG rounds); per_sample_seed adds "
        f"{added * 1e6:.1f} µs per item: {100 * share:.0f}% of a 50 µs item, "
        f"epoch on / off {ratio:.2f}×.",
        f"Rule: on by default if <= {100 * (BUDGET - 1):.0f}% on a 50 µs item; this run says "
        f"{chosen}; the code's default is {'on' if PER_SAMPLE_SEED_DEFAULT else 'off'}.",
    ]
    figure = Figure(
        filename="per_sample_seed.png",
        title="Per-sample seeding cost (50 µs item, 0 workers)",
        panels=[
            Panel(
                title="time per item",
                series=[Series(label="µs per item", x=(), y=[r["per_item_s"] * 1e6 for r in rows])],
                ylabel="µs",
                categories=["item alone", "loader, off", "loader, on"],
            ),
            Panel(
                title="parts of the per-sample work",
                series=[
                    Series(label="µs per call", x=(), y=[r["per_call_s"] * 1e6 for r in part_rows])
                ],
                ylabel="µs",
                categories=["derive_seed", "python", "numpy", "torch", "seeded_call"],
            ),
        ],
    )
    return BenchmarkResult(
        name="per_sample_seed",
        title="Per-sample seeding: cost and default",
        method=(__doc__ or "").split("\n", 1)[1].strip().replace("\n", " "),
        tables=[
            Table(
                title=f"One epoch of {plan.n:,} items, batch 32, 0 workers (median)",
                columns=[
                    Column("variant", "variant"),
                    Column("epoch_s", "epoch", "seconds"),
                    Column("per_item_s", "per item", "seconds"),
                    Column("ratio", "/ off", "ratio"),
                ],
                rows=rows,
            ),
            Table(
                title="Parts of the per-sample work (median per call)",
                columns=[
                    Column("part", "part"),
                    Column("per_call_s", "per call", "seconds"),
                    Column("share_of_item", "/ item cost", "ratio"),
                ],
                rows=part_rows,
            ),
        ],
        headlines=[
            Headline(
                key="per_sample_seed_overhead",
                label="per_sample_seed: added time per item / a 50 µs item (0 workers)",
                value=share,
                op="<=",
                threshold=round(BUDGET - 1, 6),
                detail=f"not met means the default is off; epoch on / off {ratio:.2f} with a "
                f"{item * 1e6:.0f} µs item",
            ),
            Headline(
                key="per_sample_seed_default",
                label="the code's default agrees with this measurement (1 = yes)",
                value=float(cheap == PER_SAMPLE_SEED_DEFAULT),
                op="==",
                threshold=1.0,
                detail=f"measured: {chosen}; PER_SAMPLE_SEED_DEFAULT = {PER_SAMPLE_SEED_DEFAULT}",
            ),
        ],
        figures=[figure],
        notes=notes,
    )
