"""ShuffledSampler against materialised permutations: epoch start, peak memory, steady-state rate.

* First batch of a new epoch (32 indices) and its peak memory, for ``ShuffledSampler`` (lazy Feistel
  order), ``torch.randperm`` (baseline) and torchdata's stateful ``RandomSampler`` (``randperm`` then
  ``tolist``). Memory is measured in a fresh interpreter per point (see :mod:`benchmarks.memprobe`).
* Indices per second over a whole epoch, consumed through ``torch.utils.data.BatchSampler`` (batch
  32) as a DataLoader does, for ``ShuffledSampler`` against ``torch.utils.data.RandomSampler``
  (baseline), plus diagnostic variants that split where ShuffledSampler's time goes. Note that
  torch's ``RandomSampler`` draws two permutations per epoch (the second for the ``num_samples % n``
  remainder, sliced to nothing), so one materialised ``randperm(n).tolist()`` is listed as well.
"""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import attrs
import torch
from torch.utils.data import RandomSampler

from benchmarks.harness import Progress, Settings, clock, interleave, memory_available_bytes
from benchmarks.report import power_label
from benchmarks.results import BenchmarkResult, Column, Figure, Headline, Panel, Series, Table
from benchmarks.sampler_variants import (
    FIRST_BATCH,
    OURS,
    RANDPERM,
    TORCHDATA,
    epoch_seconds,
    feistel_seconds,
    permutation_list_seconds,
)
from statefuldata import ShuffledSampler

__all__ = ["run"]

_BYTES_PER_INDEX = {OURS: 0, RANDPERM: 8, TORCHDATA: 8 + 8 + 32}  # tensor, list slot, int object
_ROOT = Path(__file__).resolve().parent.parent


@attrs.frozen(kw_only=True)
class _Plan:
    first_ns: tuple[int, ...]
    memory_ns: tuple[int, ...]
    rate_ns: tuple[int, ...]
    per_call_cap: float
    memory_variants: tuple[str, ...] = (OURS, RANDPERM, TORCHDATA)


FULL = _Plan(
    first_ns=(10**6, 10**7, 10**8),
    memory_ns=(10**6, 10**7, 10**8),
    rate_ns=(10**6, 10**7),
    per_call_cap=30.0,
)
QUICK = _Plan(
    first_ns=(10**4, 10**5),
    memory_ns=(10**5,),
    rate_ns=(10**5,),
    per_call_cap=2.0,
    memory_variants=(OURS, RANDPERM),
)


def _probe(variant: str, n: int) -> dict[str, Any]:
    command = [sys.executable, "-m", "benchmarks.memprobe", variant, str(n)]
    done = subprocess.run(command, cwd=_ROOT, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def _skip_reason(variant: str, n: int, last: dict[str, tuple[int, float]], cap: float) -> str:
    need, available = _BYTES_PER_INDEX[variant] * n, memory_available_bytes()
    if available is not None and need > available / 2:
        return f"skipped: needs ~{need / 1e9:.1f} GB, {available / 1e9:.1f} GB available"
    if variant in last and last[variant][1] * n / last[variant][0] > cap:
        return f"skipped: predicted > {cap:g} s per call"
    return ""


def _time_first(fn: Callable[[int, int], list[int]], n: int, epochs: Iterator[int]) -> float:
    epoch = next(epochs)
    return clock(lambda: fn(n, epoch))


def _first_batch(plan: _Plan, settings: Settings, progress: Progress) -> tuple[Table, Panel, dict]:
    epochs, last, rows, found = itertools.count(1), {}, [], {}
    for n in plan.first_ns:
        reasons = {v: _skip_reason(v, n, last, plan.per_call_cap) for v in FIRST_BATCH}
        variants = {
            v: partial(_time_first, fn, n, epochs)
            for v, fn in FIRST_BATCH.items()
            if not reasons[v]
        }
        stats = interleave(
            variants, repeats=settings.repeats, warmup=settings.warmup, progress=progress
        )
        memory = {
            v: _probe(v, n) for v in variants if n in plan.memory_ns and v in plan.memory_variants
        }
        progress.step(f"memory n={n:.0e}")
        for v in FIRST_BATCH:
            row: dict[str, Any] = {"n": n, "variant": v, "note": reasons[v]}
            if v in stats:
                last[v] = (n, stats[v].median)
                row |= {"seconds": stats[v].median, "stat": stats[v].to_dict()}
                row |= memory.get(v, {})
            rows.append(row)
        for row in rows[-len(FIRST_BATCH) :]:
            base = next((r for r in rows[-len(FIRST_BATCH) :] if r["variant"] == RANDPERM), {})
            for key in ("seconds", "rss_peak_bytes"):
                if row.get(key) is not None and base.get(key):
                    row[f"{key}_ratio"] = row[key] / base[key]
            found[n, row["variant"]] = row
    columns = [
        Column("n", "n", "int"),
        Column("variant", "variant"),
        Column("seconds", "first batch (median)", "seconds"),
        Column("seconds_ratio", "time / randperm", "ratio"),
        Column("rss_peak_bytes", "peak RSS rise", "bytes"),
        Column("rss_peak_bytes_ratio", "RSS / randperm", "ratio"),
        Column("tracemalloc_peak_bytes", "Python+numpy peak (tracemalloc)", "bytes"),
        Column("note", "note"),
    ]
    series = [
        Series(
            label=v,
            x=[n for n in plan.first_ns if (n, v) in found and "seconds" in found[n, v]],
            y=[found[n, v]["seconds"] for n in plan.first_ns if "seconds" in found.get((n, v), {})],
        )
        for v in FIRST_BATCH
    ]
    panel = Panel(
        title="first batch of a new epoch",
        series=series,
        xlabel="n",
        ylabel="seconds",
        logx=True,
        logy=True,
    )
    table = Table(
        title="Time to the first batch (32 indices) of a new epoch, and its peak memory",
        columns=columns,
        rows=rows,
    )
    return table, panel, found


def _rate(plan: _Plan, settings: Settings, progress: Progress) -> tuple[Table, Panel, dict]:
    rows, found = [], {}
    for n in plan.rate_ns:
        generator = torch.Generator().manual_seed(0)
        variants = {
            OURS: partial(epoch_seconds, ShuffledSampler(n, seed=0)),
            "torch RandomSampler": partial(
                epoch_seconds, RandomSampler(range(n), generator=generator)
            ),
            "randperm(n).tolist() (one permutation, no sampler)": partial(
                permutation_list_seconds, n, generator
            ),
            "diagnostic: Feistel numpy only": partial(feistel_seconds, n, False),
            "diagnostic: Feistel + tolist": partial(feistel_seconds, n, True),
        }
        stats = interleave(
            variants, repeats=settings.repeats, warmup=settings.warmup, progress=progress
        )
        base = stats["torch RandomSampler"].median
        for name, stat in stats.items():
            row = {"n": n, "variant": name, "seconds": stat.median, "rate": n / stat.median}
            row |= {"rate_ratio": base / stat.median, "stat": stat.to_dict()}
            rows.append(row)
            found[n, name] = row
    columns = [
        Column("n", "n", "int"),
        Column("variant", "variant"),
        Column("seconds", "epoch (median)", "seconds"),
        Column("rate", "indices/s", "rate"),
        Column("rate_ratio", "rate / RandomSampler", "ratio"),
    ]
    series = [
        Series(label=name, x=plan.rate_ns, y=[found[n, name]["rate"] for n in plan.rate_ns])
        for name in {name for _, name in found}
    ]
    panel = Panel(
        title="steady-state rate (BatchSampler, batch 32)",
        series=sorted(series, key=lambda s: s.label),
        xlabel="n",
        ylabel="indices per second",
        logx=True,
        logy=True,
    )
    title = "Indices per second over a whole epoch, drawn through BatchSampler(batch 32)"
    return Table(title=title, columns=columns, rows=rows), panel, found


def run(settings: Settings) -> BenchmarkResult:
    plan = QUICK if settings.quick else FULL
    with Progress(settings, "sampler") as progress:
        first_table, first_panel, first = _first_batch(plan, settings, progress)
        rate_table, rate_panel, rates = _rate(plan, settings, progress)
    n_mem = max(n for n in plan.memory_ns if "rss_peak_bytes" in first.get((n, RANDPERM), {}))
    n_time = max(n for n in plan.first_ns if "seconds" in first.get((n, RANDPERM), {}))
    n_rate = plan.rate_ns[-1]
    ours_rate = rates[n_rate, OURS]
    headlines = [
        Headline(
            key="sampler_first_batch_time",
            label=f"first batch at n={power_label(n_time)}: ShuffledSampler / randperm time",
            value=first[n_time, OURS]["seconds_ratio"],
            op="<=",
            threshold=0.01,
        ),
        Headline(
            key="sampler_first_batch_memory",
            label=f"first batch at n={power_label(n_mem)}: ShuffledSampler / randperm peak RSS",
            value=first[n_mem, OURS]["rss_peak_bytes_ratio"],
            op="<=",
            threshold=0.01,
        ),
        Headline(
            key="sampler_rate",
            label=f"epoch at n={power_label(n_rate)}: ShuffledSampler / RandomSampler indices per second",
            value=ours_rate["rate_ratio"],
            op=">=",
            threshold=1.0,
        ),
    ]
    return BenchmarkResult(
        name="sampler",
        title="Sampler epoch start, memory and rate",
        method=__doc__ or "",
        tables=[first_table, rate_table],
        headlines=headlines,
        figures=[
            Figure(
                filename="sampler.png",
                title="ShuffledSampler vs materialised permutations",
                panels=[first_panel, rate_panel],
            )
        ],
    )
