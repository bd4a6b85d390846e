"""Bytes of the data state against the dataset size, and what restoring that state costs.

For each n: a map dataset of n samples, batch 32, three batches taken, then the loader's
``state_dict()`` saved with ``torch.save``. Ours: ``make_loader(..., shuffle=True)`` (a
``ShuffledSampler`` whose state is ``(epoch, position)``). torchdata: ``StatefulDataLoader(...,
shuffle=True)`` (its ``RandomSampler`` state holds the torch generator state, a 5 kB tensor, and a
count). Both stay small; the difference is the restore: torchdata rebuilds ``randperm(n).tolist()``
three times and skips, ours evaluates the Feistel order at the saved position. The restore (fresh
loader, ``torch.load(weights_only=True)`` of the bytes, ``load_state_dict``, first batch) is timed
interleaved; torchdata's restore is extrapolated linearly in n where one call would exceed the cap.
"""

from __future__ import annotations

import io
import time
from functools import partial

import attrs
import torch

from benchmarks.curves import Curve
from benchmarks.data import SyntheticMap
from benchmarks.harness import Progress, Settings, interleave, memory_available_bytes
from benchmarks.report import format_value, power_label
from benchmarks.results import BenchmarkResult, Column, Figure, Headline, Panel, Series, Table
from statefuldata import make_loader
from statefuldata.loader import quiet_stateful_dataloader

__all__ = ["run"]

BATCH, TAKEN = 32, 3
_TORCHDATA_BYTES_PER_SAMPLE = 48  # randperm tensor + list slot + int object, while iterating


@attrs.frozen(kw_only=True)
class _Plan:
    ns: tuple[int, ...]
    per_call_cap: float
    budget: float


FULL = _Plan(ns=tuple(10**e for e in range(3, 9)), per_call_cap=15.0, budget=60.0)
QUICK = _Plan(ns=(10**3, 10**5), per_call_cap=1.0, budget=5.0)

BUILD = {
    "ours": lambda n: make_loader(SyntheticMap(n), batch_size=BATCH, shuffle=True, seed=0),
    "torchdata": lambda n: quiet_stateful_dataloader(
        SyntheticMap(n), batch_size=BATCH, shuffle=True
    ),
}


def _state_bytes(kind: str, n: int) -> bytes:
    loader = BUILD[kind](n)
    iterator = iter(loader)
    for _ in range(TAKEN):
        next(iterator)
    buffer = io.BytesIO()
    torch.save(loader.state_dict(), buffer)
    return buffer.getvalue()


def _restore(kind: str, n: int, blob: bytes) -> float:
    start = time.perf_counter()
    loader = BUILD[kind](n)
    loader.load_state_dict(torch.load(io.BytesIO(blob), weights_only=True))
    next(iter(loader))
    return time.perf_counter() - start


def _fits(n: int) -> bool:
    available = memory_available_bytes()
    return available is None or _TORCHDATA_BYTES_PER_SAMPLE * n * 2 < available / 2


def run(settings: Settings) -> BenchmarkResult:
    plan = QUICK if settings.quick else FULL
    curves = {
        k: Curve(per_call_cap=plan.per_call_cap, budget=plan.budget, repeats=settings.repeats)
        for k in BUILD
    }
    sizes: dict[tuple[str, int], int] = {}
    notes = []
    with Progress(settings, "state_size") as progress:
        for i, n in enumerate(plan.ns):
            blobs = {"ours": _state_bytes("ours", n)}
            if _fits(n):
                blobs["torchdata"] = _state_bytes("torchdata", n)
            else:
                notes.append(f"torchdata at n={n:,} skipped: it would not fit in memory")
            sizes |= {(kind, n): len(blob) for kind, blob in blobs.items()}
            variants = {
                kind: partial(_restore, kind, n, blob)
                for kind, blob in blobs.items()
                if kind == "ours" or curves[kind].should_measure(n)
            }
            warmup = settings.warmup if i == 0 else 0
            stats = interleave(variants, repeats=settings.repeats, warmup=warmup, progress=progress)
            for kind, stat in stats.items():
                curves[kind].add(n, stat, sum(stat.samples))
    n_min, n_max = plan.ns[0], plan.ns[-1]
    rows = []
    for n in plan.ns:
        ours_s = curves["ours"].value(n)[0]
        td_s, td_estimated, td_basis = curves["torchdata"].value(n)
        rows.append(
            {
                "n": n,
                "ours_bytes": sizes["ours", n],
                "ours_bytes_ratio": sizes["ours", n] / sizes["ours", n_min],
                "torchdata_bytes": sizes.get(("torchdata", n)),
                "ours_restore_s": ours_s,
                "torchdata_restore_s": td_s,
                "torchdata_restore": ("~" if td_estimated else "")
                + format_value(td_s, "seconds")
                + (" extrapolated" if td_estimated else ""),
                "torchdata_basis": td_basis,
                "restore_ratio": td_s / ours_s,
            }
        )
    columns = [
        Column("n", "n (samples)", "int"),
        Column("ours_bytes", "ours: bytes", "int"),
        Column("ours_bytes_ratio", f"ours / ours at n={n_min:,}", "ratio"),
        Column("torchdata_bytes", "torchdata: bytes", "int"),
        Column("ours_restore_s", "ours: restore", "seconds"),
        Column("torchdata_restore", "torchdata: restore"),
        Column("restore_ratio", "restore torchdata / ours", "ratio"),
    ]
    panels = [
        Panel(
            title="torch.save bytes of the loader state",
            series=[
                Series(
                    label=kind, x=plan.ns, y=[sizes.get((kind, n), float("nan")) for n in plan.ns]
                )
                for kind in BUILD
            ],
            xlabel="n (samples)",
            ylabel="bytes",
            logx=True,
        ),
        Panel(
            title="restore to first batch",
            series=[
                Series(
                    label=kind,
                    x=plan.ns,
                    y=[curves[kind].value(n)[0] for n in plan.ns],
                    estimated=[curves[kind].value(n)[1] for n in plan.ns],
                )
                for kind in BUILD
            ],
            xlabel="n (samples)",
            ylabel="seconds",
            logx=True,
            logy=True,
        ),
    ]
    ratio = sizes["ours", n_max] / sizes["ours", n_min]
    return BenchmarkResult(
        name="state_size",
        title="Data state size against dataset size",
        method=(__doc__ or "").split("\n", 1)[1].strip().replace("\n", " "),
        tables=[
            Table(
                title="State bytes (torch.save) and restore time against n",
                columns=columns,
                rows=rows,
            )
        ],
        headlines=[
            Headline(
                key="state_bytes_ratio",
                label=f"ours: state bytes at n={power_label(n_max)} / at n={power_label(n_min)}",
                value=ratio,
                op="==",
                threshold=1.0,
                detail=f"{sizes['ours', n_max]} B vs {sizes['ours', n_min]} B",
            )
        ],
        figures=[
            Figure(
                filename="state_size.png",
                title="State size and restore cost vs dataset size",
                panels=panels,
            )
        ],
        notes=notes,
    )
