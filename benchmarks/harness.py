"""Shared machinery: run settings, interleaved timing, medians and ratios, progress, machine info.

Every comparison goes through :func:`interleave`: the variants run in rounds, each round runs every
variant once (the order rotates each round: A B, B A, A B, ...), the first ``warmup`` rounds are
discarded, and each variant keeps one sample per remaining round. A number is reported as a median
next to the median of a named baseline, never alone.

With a ``baseline``, each round runs the baseline next to every other variant in turn (pairs
``baseline, v`` and ``v, baseline`` alternate), and each sample of ``v`` keeps its ratio to the
baseline run beside it: :attr:`Stat.paired_ratio`, the median of these per-pair ratios, cancels the
machine's drift between rounds (a shared machine's speed wanders by 10-30% over seconds), where the
ratio of the two medians pairs a fast round of one with a slow round of the other.
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
    "thaw",
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
    """Median and quartiles of the kept samples of one variant at one point.

    ``ratios``: with a baseline (see :func:`interleave`), each sample over the baseline's run
    beside it; empty for the baseline itself and without one.
    """

    median: float
    q1: float
    q3: float
    samples: tuple[float, ...]
    ratios: tuple[float, ...] = ()

    @classmethod
    def of(cls, samples: list[float], ratios: list[float] | None = None) -> Stat:
        if not samples:
            raise ValueError("a Stat needs at least one sample (got none)")
        ordered = sorted(samples)
        if len(ordered) >= 2:
            q1, _, q3 = statistics.quantiles(ordered, n=4, method="inclusive")
        else:
            q1 = q3 = ordered[0]
        return cls(statistics.median(ordered), q1, q3, tuple(samples), tuple(ratios or ()))

    @property
    def paired_ratio(self) -> float | None:
        """Median over the pairs of (this sample / the baseline's run beside it); None without."""
        return statistics.median(self.ratios) if self.ratios else None

    def to_dict(self) -> dict[str, Any]:
        out = {
            "median": self.median,
            "q1": self.q1,
            "q3": self.q3,
            "n": len(self.samples),
            "samples": list(self.samples),
        }
        if self.ratios:
            out["paired_ratio"] = self.paired_ratio
            out["ratios"] = list(self.ratios)
        return out


def ratio(value: float, baseline: float) -> float:
    """``value / baseline``; ``inf`` when the baseline is 0 and the value is not."""
    if baseline == 0:
        return 1.0 if value == 0 else float("inf")
    return value / baseline


def clock(fn: Callable[[], object]) -> float:
    """Seconds taken by ``fn()``, every variant from the same garbage-collector state.

    Before the timed region the heap is collected and what survives is frozen (``gc.freeze``), so
    the collector stays on during ``fn()`` (its allocations are paid for, young collections
    included) but a full collection inside it walks only the objects ``fn()`` made, not the
    ~170k objects that importing torch left: such a collection otherwise lands in a random
    repeat and adds ~0.1 s to it. The heap stays frozen afterwards, so the next call collects only
    what was made since (~0.1 s a call otherwise); :func:`thaw` gives the frozen objects back.
    """
    gc.collect()
    gc.freeze()
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def thaw() -> None:
    """Give the objects frozen by :func:`clock` back to the collector, and collect them.

    Call it where a benchmark drops long-lived state (between its sizes, at its end): frozen objects
    in reference cycles are otherwise never freed.
    """
    gc.unfreeze()
    gc.collect()


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
    baseline: str | None = None,
) -> dict[str, Stat]:
    """Run the variants in rotating rounds; return each one's :class:`Stat` over the kept rounds.

    With ``baseline`` (one of the names), a round runs the baseline beside each other variant
    (``baseline, v`` in even rounds, ``v, baseline`` in odd ones; the other variants' order still
    rotates) and every other variant's Stat gets its per-pair ratios to the baseline.
    """
    names = list(variants)
    if not names:
        return {}
    if baseline is not None and baseline not in variants:
        raise ValueError(f"baseline must be one of {names} (got {baseline!r})")
    samples: dict[str, list[float]] = {name: [] for name in names}
    ratios: dict[str, list[float]] = {name: [] for name in names}

    def measure(name: str, keep: bool) -> float:
        seconds = variants[name]()
        if keep:
            samples[name].append(seconds)
        if progress is not None:
            progress.step(name)
        return seconds

    others = [name for name in names if name != baseline]
    for round_index in range(warmup + repeats):
        keep = round_index >= warmup
        if baseline is None or not others:
            shift = round_index % len(names)
            for name in names[shift:] + names[:shift]:
                measure(name, keep)
            continue
        shift = round_index % len(others)
        for name in others[shift:] + others[:shift]:
            if round_index % 2 == 0:
                base, seconds = measure(baseline, keep), measure(name, keep)
            else:
                seconds, base = measure(name, keep), measure(baseline, keep)
            if keep:
                ratios[name].append(ratio(seconds, base))
    return {name: Stat.of(values, ratios[name]) for name, values in samples.items()}


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
