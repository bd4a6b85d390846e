"""Instructions per step under valgrind: the loop-overhead ratios without the machine's timing noise.

``python -m benchmarks.instructions [--jobs N]`` (needs ``valgrind``; about 6 minutes on 2 cores).

On a shared machine a step's time swings by 20-50% from one second to the next, more than the few
percent the trainer and loader targets are about. The instructions a step executes do not swing: each
workload runs twice under ``valgrind --tool=cachegrind --cache-sim=no``, at two lengths, and the
difference of the two totals divided by the difference of the lengths is the count per step (or per
batch), with interpreter start-up, imports and per-run setup cancelled out. BLAS and OpenMP are held
to one thread (``OPENBLAS_NUM_THREADS=1`` etc.), so no spinning thread adds to a count, and
``PYTHONHASHSEED=0`` makes the one-time costs of the two runs the same.

Workloads, the same as the timed benchmarks':

- ``hand loop`` and ``GenericTrainer``: :mod:`benchmarks.trainer_step`'s MLP, data and loader; the
  trainer with no periodic checkpoint and its default loggers; epochs of 250 steps, 1 and 3 epochs.
- ``torch DataLoader`` and ``make_loader``: :mod:`benchmarks.loader_throughput`'s shuffled
  ``SyntheticMap`` loaders at 0 workers, batch 64; 1 and 3 passes of 250 batches.
- ``loaders by hand`` and ``DataLoaderManager``: :mod:`benchmarks.scheduler`'s three loaders mixed
  WEIGHTED 0.5/0.3/0.2, of 125, 75 and 50 batches (an epoch of 250), at 0 workers; by hand is
  ``next(iterators[i])`` along the manager's schedule; 1 and 3 epochs.

A count is not a time: cache misses and branch mispredictions are not in it, so a ratio of counts
is a floor for the ratio of times, not a prediction of it.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

__all__ = ["PAIRS", "count_per_unit", "main"]

#: (what is measured, baseline, ours): each pair's ratio is ours / baseline.
PAIRS = (
    ("instructions per optimizer step", "hand loop", "GenericTrainer"),
    ("instructions per batch, 0 workers", "torch DataLoader", "make_loader"),
    ("instructions per batch, 3 loaders, 0 workers", "loaders by hand", "DataLoaderManager"),
)
SHORT, LONG = 1, 3  # epochs (or passes) of UNITS each
UNITS = 250
#: One BLAS/OpenMP thread; one string-hash seed, so that both lengths pay the same one-time costs
#: (with random seeds, dict probing during imports alone moves a count by ~5M instructions, i.e.
#: ~10,000 per unit of the difference).
_CHILD_ENV = {
    **{name: "1" for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")},
    "PYTHONHASHSEED": "0",
}
_REFS = re.compile(r"I\s+refs:\s+([\d,]+)")


def _run_workload(name: str, passes: int) -> int:
    """In the child interpreter: run ``name`` for ``passes`` epochs of :data:`UNITS` steps (or
    batches); return how many it ran."""
    import logging
    import warnings

    import torch

    warnings.filterwarnings("ignore")
    logging.disable(logging.INFO)
    torch.set_num_threads(1)
    if name in ("hand loop", "GenericTrainer"):
        from benchmarks import trainer_step
        from benchmarks.data import Regression

        plan = trainer_step._Plan(batches_per_epoch=UNITS, epochs=passes, min_repeats=1)
        dataset = Regression(UNITS * trainer_step.BATCH)
        if name == "hand loop":
            trainer_step._hand(plan, dataset)
        else:
            trainer_step._trainer(plan, dataset, None, {})
        return plan.steps
    if name in ("loaders by hand", "DataLoaderManager"):
        return _scheduler_workload(name, passes)
    from benchmarks import loader_throughput
    from benchmarks.data import SyntheticMap

    kind = loader_throughput.PLAIN if name == "torch DataLoader" else loader_throughput.OURS
    loader = loader_throughput._build(kind, SyntheticMap(UNITS * loader_throughput.BATCH), 0)
    return sum(1 for _ in range(passes) for _batch in loader)


def _scheduler_workload(name: str, passes: int) -> int:
    import collections

    import attrs

    from benchmarks import scheduler
    from statefuldata import DataLoaderManager

    lengths = (UNITS // 2, UNITS * 3 // 10, UNITS // 5)
    plan = attrs.evolve(scheduler.QUICK, lengths=lengths)
    loaders = scheduler._loaders(plan, 0)
    manager = DataLoaderManager(loaders, train_config=scheduler._config())
    if name == "DataLoaderManager":
        for epoch in range(passes):
            collections.deque(manager.create_epoch_iterator("train", epoch), maxlen=0)
        return passes * sum(lengths)
    schedule = list(manager.create_epoch_iterator("train", 0).schedule)
    for _ in range(passes):
        iterators = [iter(loader) for loader in loaders]
        for index in schedule:
            next(iterators[index])
    return passes * len(schedule)


def _instructions(name: str, passes: int, valgrind: str) -> int:
    """Instructions cachegrind counts for one child run of ``name``."""
    with tempfile.TemporaryDirectory(prefix="bench-instructions-") as tmp:
        command = [
            valgrind,
            "--tool=cachegrind",
            "--cache-sim=no",
            f"--cachegrind-out-file={Path(tmp) / 'out'}",
            sys.executable,
            "-m",
            "benchmarks.instructions",
            "--child",
            name,
            str(passes),
        ]
        done = subprocess.run(
            command,
            capture_output=True,
            text=True,
            env={**os.environ, **_CHILD_ENV},
            cwd=Path(__file__).resolve().parents[1],
            check=False,
        )
    found = _REFS.findall(done.stderr)
    if done.returncode != 0 or not found:
        raise RuntimeError(
            f"valgrind run of {name!r} ({passes} passes) failed with exit status "
            f"{done.returncode}: {done.stderr[-2000:]}"
        )
    return int(found[-1].replace(",", ""))


def count_per_unit(name: str, valgrind: str, jobs: int = 2) -> float:
    """Instructions per step (or batch) of ``name``: (long run - short run) / (steps between)."""
    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        short, long = pool.map(lambda p: _instructions(name, p, valgrind), (SHORT, LONG))
    return (long - short) / ((LONG - SHORT) * UNITS)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.instructions", description=__doc__)
    parser.add_argument("--jobs", type=int, default=2, help="valgrind runs at once (default 2)")
    parser.add_argument("--child", nargs=2, metavar=("WORKLOAD", "PASSES"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        _run_workload(args.child[0], int(args.child[1]))
        return 0
    valgrind = shutil.which("valgrind")
    if valgrind is None:
        print("valgrind is not installed (apt install valgrind); nothing measured", file=sys.stderr)
        return 1
    print("| measured | baseline | ours | ours / baseline |")
    print("|---|---|---|---|")
    for what, baseline, ours in PAIRS:
        base = count_per_unit(baseline, valgrind, args.jobs)
        mine = count_per_unit(ours, valgrind, args.jobs)
        print(
            f"| {what} | {baseline}: {base:,.0f} | {ours}: {mine:,.0f} "
            f"(+{mine - base:,.0f}) | {mine / base:.4f}x |",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
