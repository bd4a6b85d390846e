"""Shared machinery: run settings, interleaved timing, medians and ratios, progress, machine info.

Every comparison goes through :func:`interleave`: the variants run in rounds, each round runs every
variant once (the order rotates each round: A B, B A, A B, ...), the first ``warmup`` rounds are
discarded, and each variant keeps one sample per remaining round. A number is reported as a median
next to the median of a named baseline, never alone.
"""

from __future__ import annotations

import gc
import logging
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

import attrs
from tqdm.auto import tqdm

__all__ = [
    "Progress",
    "Settings",
    "Stat",
    "clock",
    "interleave",
    "load_average",
    "machine_info",
    "memory_available_bytes",
    "quiet_logs",
    "ratio",
]

Variant = Callable[[], float]
"""Runs one measurement and returns the seconds of its timed region (setup and teardown excluded)."""


@attrs.frozen(kw_only=True)
class Settings:
    """How a benchmark run is sized and shown.

    Attributes:
        quick: Reduced sizes for the CI smoke test (the whole run fits in about a minute).
        repeats: Kept samples per variant and point (at least 5).
        warmup: Discarded rounds before the kept ones, at the first point of each comparison.
        progress: Show tqdm progress bars (on stderr).
        out_dir: Where results and plots are written.
    """

    quick: bool = False
    repeats: int = attrs.field(default=5, validator=attrs.validators.ge(5))
    warmup: int = attrs.field(default=1, validator=attrs.validators.ge(1))
    progress: bool = True
    out_dir: Path = attrs.field(default=Path("benchmarks/results"), converter=Path)


@attrs.frozen
class Stat:
    """Median and quartiles of the kept samples of one variant at one point."""

    median: float
    q1: float
    q3: float
    samples: tuple[float, ...]

    @classmethod
    def of(cls, samples: list[float]) -> Stat:
        if not samples:
            raise ValueError("a Stat needs at least one sample (got none)")
        ordered = sorted(samples)
        if len(ordered) >= 2:
            q1, _, q3 = statistics.quantiles(ordered, n=4, method="inclusive")
        else:
            q1 = q3 = ordered[0]
        return cls(statistics.median(ordered), q1, q3, tuple(samples))

    def to_dict(self) -> dict[str, Any]:
        return {
            "median": self.median,
            "q1": self.q1,
            "q3": self.q3,
            "n": len(self.samples),
            "samples": list(self.samples),
        }


def ratio(value: float, baseline: float) -> float:
    """``value / baseline``; ``inf`` when the baseline is 0 and the value is not."""
    if baseline == 0:
        return 1.0 if value == 0 else float("inf")
    return value / baseline


def clock(fn: Callable[[], object]) -> float:
    """Seconds taken by ``fn()`` (garbage collected before, not during)."""
    gc.collect()
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


class Progress(AbstractContextManager["Progress"]):
    """One tqdm bar counting measurements; a no-op bar when progress is off."""

    def __init__(self, settings: Settings, description: str) -> None:
        self._bar = tqdm(
            desc=description, unit="run", disable=not settings.progress, file=sys.stderr, leave=True
        )

    def step(self, label: str = "") -> None:
        if label:
            self._bar.set_postfix_str(label, refresh=False)
        self._bar.update(1)

    def __exit__(self, *exc: object) -> None:
        self._bar.close()


def interleave(
    variants: Mapping[str, Variant],
    *,
    repeats: int,
    warmup: int,
    progress: Progress | None = None,
) -> dict[str, Stat]:
    """Run the variants in rotating rounds; return each one's :class:`Stat` over the kept rounds."""
    names = list(variants)
    if not names:
        return {}
    samples: dict[str, list[float]] = {name: [] for name in names}
    for round_index in range(warmup + repeats):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            seconds = variants[name]()
            if round_index >= warmup:
                samples[name].append(seconds)
            if progress is not None:
                progress.step(name)
    return {name: Stat.of(values) for name, values in samples.items()}


@contextmanager
def quiet_logs(*names: str) -> Iterator[None]:
    """Raise the named loggers to ERROR for the block (skip-based restores warn on every restore)."""
    loggers = [logging.getLogger(name) for name in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def load_average() -> list[float] | None:
    """The 1, 5 and 15 minute load averages (None where the platform has none)."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def memory_available_bytes() -> int | None:
    """``MemAvailable`` from /proc/meminfo (None where unreadable)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def machine_info() -> dict[str, Any]:
    """CPU count, usable cores, memory, library versions and the load when the run started."""
    import numpy
    import torch
    import torchdata

    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    return {
        "cpu_count": os.cpu_count(),
        "usable_cpus": usable,
        "cpu_model": _cpu_model(),
        "torch_threads": torch.get_num_threads(),
        "memory_available_bytes": memory_available_bytes(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchdata": torchdata.__version__,
        "numpy": numpy.__version__,
        "load_average_at_start": load_average(),
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
