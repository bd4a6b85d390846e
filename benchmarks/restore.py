"""Restore cost against the position k: fresh objects + load state, to the first batch."""

from __future__ import annotations

from functools import partial
from typing import Any

import attrs

from benchmarks.curves import Curve, states_equal
from benchmarks.harness import Progress, Settings, interleave, quiet_logs
from benchmarks.report import format_value, power_label
from benchmarks.restore_trainer import (
    FULL_PLAN,
    QUICK_PLAN,
    trainer_method,
    trainer_restore,
    trainer_restore_headline,
    trainer_restore_table,
)
from benchmarks.restore_ways import WAYS, measure, prepare
from benchmarks.results import BenchmarkResult, Column, Figure, Headline, Panel, Series, Table

__all__ = ["run"]


@attrs.frozen(kw_only=True)
class _Plan:
    n: int
    batch_size: int
    ks: tuple[int, ...]
    workers: tuple[int, ...]
    real_limit: int
    per_call_cap: float
    curve_budget: float


FULL = _Plan(
    n=30_000_000,
    batch_size=16,
    ks=(10, 100, 1_000, 10_000, 100_000, 1_000_000),
    workers=(0, 2),
    real_limit=1_000,
    per_call_cap=20.0,
    curve_budget=60.0,
)
QUICK = attrs.evolve(
    FULL, n=300_000, ks=(10, 100, 1_000), workers=(0,), per_call_cap=0.4, curve_budget=2.0
)

METHOD = """\
Each measurement builds fresh objects (dataset, loader), loads the state (deserialised with
`torch.load(weights_only=True)` from bytes) and takes the first batch; shutting worker processes down
is not timed. The naive way builds a seeded `DataLoader` and discards k batches. Items cost about
1 µs each (four rounds of a 64-bit LCG in Python). Map dataset: `SyntheticMap(n)`; iterable: a stream
without state methods (`PlainStream`, wrapped by make_loader in `SkipFallback`) or the same stream
with an O(1) `state_dict`/`load_state_dict` (`CheckpointedStream`). Batch size {batch}: k = 10^6
batches is then {max_samples:,} samples, inside one epoch of {n:,} (batch 32 would pass the end of
the epoch). States for k <= {real:,} come from real runs; beyond, every integer counter is
extrapolated linearly from the states at k = 4 and 8, which is checked to reproduce the real states
at k = 10 .. {real:,} exactly. The first batch of every restore from a real state is compared with
the batch the uninterrupted run yielded (MISMATCH would be printed). A way is measured at the next k
only while one measurement is predicted to take <= {cap:g} s and its curve stays within {budget:g} s;
beyond, its time is extrapolated along the line through its two largest measured points (`~`,
"extrapolated"). torchdata's map restore costs about the same at every k (it regenerates
`randperm(n).tolist()` three times: iterator creation, `load_state_dict`, batch-sampler reload,
then skips), so it is measured at the first and last k only and interpolated between. Warm-up: one
discarded round at the first k of each group; the variants run interleaved."""


def _group(kind: str, plan: _Plan, workers: int, settings: Settings, progress: Progress) -> dict:
    ways = WAYS[kind]
    sizes = (plan.n, plan.batch_size, workers)
    prepared = {w.key: prepare(w, *sizes, plan.ks, plan.real_limit) for w in ways}
    curves = {
        w.key: Curve(
            per_call_cap=plan.per_call_cap,
            budget=plan.curve_budget,
            repeats=settings.repeats,
            flat=w.flat,
        )
        for w in ways
    }
    exact: dict[tuple[str, int], bool] = {}
    for i, k in enumerate(plan.ks):
        sink: dict[str, Any] = {}
        active = {
            w.key: partial(measure, w, *sizes, k, prepared[w.key][0].get(k), sink)
            for w in ways
            if w.key == "state"  # the baseline is measured everywhere
            or ((k in (plan.ks[0], plan.ks[-1]) or not w.flat) and curves[w.key].should_measure(k))
        }
        warmup = settings.warmup if i == 0 else 0
        stats = interleave(active, repeats=settings.repeats, warmup=warmup, progress=progress)
        for key, stat in stats.items():
            curves[key].add(k, stat, sum(stat.samples) * (1 + warmup / settings.repeats))
            reference = prepared[key][1].get(k)
            if reference is not None:
                exact[key, k] = states_equal(sink[key], reference)
    return {"curves": curves, "exact": exact}


def _cell(seconds: float, base: float, estimated: bool, basis: str, exact: bool | None) -> str:
    ratio = format_value(seconds / base, "ratio")
    text = f"{'~' if estimated else ''}{format_value(seconds, 'seconds')} ({ratio})"
    if estimated:
        return text + (" interpolated" if basis.startswith("interpolated") else " extrapolated")
    return text + (" MISMATCH" if exact is False else "")


def _report(kind: str, plan: _Plan, groups: dict[int, dict]) -> tuple[Table, list[Panel]]:
    ways = WAYS[kind]
    rows, panels = [], []
    for workers, group in groups.items():
        curves, exact = group["curves"], group["exact"]
        for k in plan.ks:
            base = curves["state"].value(k)[0]
            row: dict[str, Any] = {"workers": workers, "k": k}
            for way in ways:
                seconds, estimated, basis = curves[way.key].value(k)
                ok = exact.get((way.key, k))
                row[way.key] = _cell(seconds, base, estimated, basis, ok)
                row |= {f"{way.key}_seconds": seconds, f"{way.key}_ratio": seconds / base}
                row |= {f"{way.key}_basis": basis, f"{way.key}_first_batch_exact": ok}
            rows.append(row)
        series = []
        for way in ways:
            points = [curves[way.key].value(k) for k in plan.ks]
            y, estimated = [p[0] for p in points], [p[1] for p in points]
            series.append(Series(label=way.label, x=plan.ks, y=y, estimated=estimated))
        panels.append(
            Panel(
                title=f"{kind} dataset, num_workers={workers}",
                series=series,
                xlabel="k (batches into the epoch)",
                ylabel="restore to first batch (s)",
                logx=True,
                logy=True,
            )
        )
    columns = [Column("workers", "workers", "int"), Column("k", "k (batches)", "int")]
    columns += [Column(way.key, way.label) for way in ways]
    title = (
        f"{kind} dataset of {plan.n:,} samples, batch {plan.batch_size}: median restore time "
        "(ratio to ours: state)"
    )
    return Table(title=title, columns=columns, rows=rows), panels


def _headlines(plan: _Plan, results: dict[str, dict[int, dict]]) -> list[Headline]:
    k_max, k_min, workers = plan.ks[-1], plan.ks[0], plan.workers[0]
    stream = results["iterable"][workers]["curves"]
    table = results["map"][workers]["curves"]
    state, ours_map = stream["state"].value(k_max)[0], table["state"].value(k_max)[0]
    skip, _, skip_basis = stream["skip"].value(k_max)
    torchdata, _, torchdata_basis = table["torchdata"].value(k_max)
    where = f"{workers} workers"
    return [
        Headline(
            key="restore_skip_over_state",
            label=f"restore at k={power_label(k_max)}: skip fallback / state (stream, {where})",
            value=skip / state,
            op=">=",
            threshold=10.0,
            basis=skip_basis,
        ),
        Headline(
            key="restore_torchdata_over_state",
            label=f"restore at k={power_label(k_max)}: torchdata default / ours (map, {where})",
            value=torchdata / ours_map,
            op=">=",
            threshold=10.0,
            basis=torchdata_basis,
        ),
        Headline(
            key="restore_state_flatness",
            label=f"ours: restore at k={power_label(k_max)} / at k={power_label(k_min)} (map, {where})",
            value=ours_map / table["state"].value(k_min)[0],
            op="<=",
            threshold=1.25,
        ),
    ]


def run(settings: Settings) -> BenchmarkResult:
    plan = QUICK if settings.quick else FULL
    results: dict[str, dict[int, dict]] = {}
    with quiet_logs("statefuldata", "torchdata"), Progress(settings, "restore") as progress:
        for kind in WAYS:
            results[kind] = {w: _group(kind, plan, w, settings, progress) for w in plan.workers}
        through = QUICK_PLAN if settings.quick else FULL_PLAN
        resumed = trainer_restore(through, settings, progress)
    tables, panels = [], []
    for kind, groups in results.items():
        table, kind_panels = _report(kind, plan, groups)
        tables.append(table)
        panels += kind_panels
    method = METHOD.format(
        batch=plan.batch_size,
        max_samples=plan.ks[-1] * plan.batch_size,
        n=plan.n,
        real=plan.real_limit,
        cap=plan.per_call_cap,
        budget=plan.curve_budget,
    )
    figure = Figure(
        filename="restore.png", title="Restore to first batch vs position k", panels=panels
    )
    return BenchmarkResult(
        name="restore",
        title="Restore time against position",
        method=method.replace("\n", " ") + " Through GenericTrainer: " + trainer_method(),
        tables=[*tables, trainer_restore_table(through, resumed)],
        figures=[figure],
        headlines=[*_headlines(plan, results), trainer_restore_headline(resumed)],
    )
