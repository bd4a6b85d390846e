"""``python -m benchmarks [NAME ...] [--quick] [--out DIR] [--no-progress]``.

Runs the named benchmarks (default: all, in order) one after another in this process, then writes
``results.json``, ``results.md`` and the PNG figures to ``--out``. The exit status is 0 when every
benchmark ran (a missed target is reported, not an error) and 1 when one of them failed.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import logging
import sys
import time
import traceback
import warnings
from collections.abc import Sequence
from pathlib import Path

from benchmarks.harness import Settings, load_average, machine_info, thaw
from benchmarks.report import headline_table, write_report
from benchmarks.results import BenchmarkResult

logger = logging.getLogger("benchmarks")

RESULTS_DIR = Path(__file__).resolve().parent / "results"

BENCHMARKS: dict[str, str] = {
    "restore": "benchmarks.restore",
    "sampler": "benchmarks.sampler",
    "scheduler": "benchmarks.scheduler",
    "trainer": "benchmarks.trainer_step",
    "state_size": "benchmarks.state_size",
    "checkpoint": "benchmarks.checkpoint",
    "per_sample_seed": "benchmarks.per_sample",
    "shuffle_buffer": "benchmarks.shuffle_buffer",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Interleaved benchmarks of statefuldata and trainer against what users "
        "would otherwise use; medians and ratios, never lone times.",
    )
    parser.add_argument(
        "names",
        nargs="*",
        metavar="NAME",
        help=f"benchmarks to run (default: all of {list(BENCHMARKS)})",
    )
    parser.add_argument(
        "--quick", action="store_true", help="reduced sizes (CI smoke test, ~1 min)"
    )
    parser.add_argument(
        "--out", type=Path, default=Path("benchmarks/results"), help="output folder"
    )
    parser.add_argument("--repeats", type=int, default=5, help="kept repeats per point (>= 5)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    return parser


def _run_one(name: str, settings: Settings) -> BenchmarkResult:
    start, load_start = time.perf_counter(), load_average()
    try:
        module = importlib.import_module(BENCHMARKS[name])
        gc.collect()
        gc.freeze()  # long-lived objects leave the collector: a collection before each run is cheap
        try:
            result = module.run(settings)
        finally:
            thaw()  # what the benchmark froze (its clock() calls) goes back to the collector
    except Exception as exc:
        traceback.print_exc()
        result = BenchmarkResult(
            name=name, title=name, status=f"failed: {type(exc).__name__}: {exc}"
        )
    result.seconds = time.perf_counter() - start
    result.load_average = {"start": load_start, "end": load_average()}
    return result


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    unknown = [n for n in args.names if n not in BENCHMARKS]
    if unknown:
        print(f"unknown benchmark(s) {unknown}; choose from {list(BENCHMARKS)}", file=sys.stderr)
        return 2
    if args.repeats < 5:
        print(f"--repeats must be >= 5 (got {args.repeats})", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    warnings.filterwarnings("ignore", message="'set_vital' is deprecated", category=UserWarning)
    settings = Settings(
        quick=args.quick, repeats=args.repeats, progress=not args.no_progress, out_dir=args.out
    )
    machine = {**machine_info(), "quick": args.quick, "argv": sys.argv[1:]}
    results: list[BenchmarkResult] = []
    for name in args.names or list(BENCHMARKS):
        results.append(_run_one(name, settings))
        logger.info("%s: %s in %.0f s", name, results[-1].status, results[-1].seconds)
        # partial results survive a crash; each result's figures are drawn once, here
        write_report(settings.out_dir, results, machine, settings, draw=results[-1:])
    machine["load_average_at_end"] = load_average()
    write_report(settings.out_dir, results, machine, settings, draw=[])
    print("\n".join(headline_table(results)))
    print(f"\nwritten to {settings.out_dir}/ (results.json, results.md, *.png)")
    return 1 if any(r.status.startswith("failed") for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
