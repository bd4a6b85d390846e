"""The interleaving harness: rotation, baseline pairs and the paired ratio (no timing: the
variants return made-up seconds)."""

from __future__ import annotations

import gc
import statistics
import weakref

import pytest

from benchmarks.harness import Stat, clock, interleave, thaw


def _drifting(factors: dict[str, float], speeds: list[float], per_round: int):
    """Variants whose seconds are ``factor * speed of the round``: the machine's speed drifts
    between rounds and not within one. Also returns the call log."""
    calls: list[str] = []

    def variant(name: str):
        def run() -> float:
            speed = speeds[len(calls) // per_round]
            calls.append(name)
            return factors[name] * speed

        return run

    return {name: variant(name) for name in factors}, calls


def test_paired_ratio_cancels_drift_between_rounds() -> None:
    speeds = [1.0, 3.0, 1.0, 3.0, 3.0, 1.0, 3.0]  # 1 warm-up round, then 6 kept
    factors = {"hand": 1.0, "ours": 1.1, "peer": 2.0}
    variants, calls = _drifting(factors, speeds, per_round=4)
    stats = interleave(variants, repeats=6, warmup=1, baseline="hand")
    assert stats["ours"].ratios == pytest.approx((1.1,) * 6)
    assert stats["ours"].paired_ratio == pytest.approx(1.1)
    assert stats["peer"].paired_ratio == pytest.approx(2.0)
    assert stats["hand"].ratios == () and stats["hand"].paired_ratio is None
    # the baseline runs beside every other variant, on alternating sides, others rotate
    rounds = [calls[i : i + 4] for i in range(0, len(calls), 4)]
    assert rounds[:3] == [
        ["hand", "ours", "hand", "peer"],
        ["peer", "hand", "ours", "hand"],
        ["hand", "ours", "hand", "peer"],
    ]
    assert len(stats["hand"].samples) == 12 and len(stats["ours"].samples) == 6
    assert stats["ours"].to_dict()["paired_ratio"] == pytest.approx(1.1)


def test_without_a_baseline_each_round_runs_every_variant_once_rotating() -> None:
    variants, calls = _drifting({"a": 1.0, "b": 2.0}, [1.0] * 4, per_round=2)
    stats = interleave(variants, repeats=3, warmup=1)
    assert calls == ["a", "b", "b", "a", "a", "b", "b", "a"]
    assert stats["b"].ratios == () and stats["b"].median == 2.0
    assert "paired_ratio" not in stats["b"].to_dict()


def test_an_unknown_baseline_is_refused_with_the_names() -> None:
    with pytest.raises(ValueError, match=r"baseline must be one of \['a'\] \(got 'z'\)"):
        interleave({"a": lambda: 1.0}, repeats=5, warmup=1, baseline="z")


def test_stat_paired_ratio_is_the_median_of_the_pairs() -> None:
    stat = Stat.of([1.0, 2.0, 3.0], [1.0, 1.5, 0.9])
    assert stat.paired_ratio == statistics.median([1.0, 1.5, 0.9]) == 1.0


def test_clock_keeps_the_heap_frozen_until_thaw_frees_what_it_froze() -> None:
    class Node:
        pass

    thaw()
    enabled_before = gc.isenabled()
    cycle = Node()
    cycle.self = cycle  # freed only by a collection
    alive = weakref.ref(cycle)
    seen: list[tuple[int, bool]] = []
    clock(lambda: seen.append((gc.get_freeze_count(), gc.isenabled())))
    # inside: the surviving heap (the cycle too) is frozen, and the collector stays on
    assert seen[0][0] > 0 and seen[0][1] is True
    del cycle
    gc.collect()
    assert alive() is not None  # frozen: the next clock() does not walk it again
    assert gc.get_freeze_count() > 0
    thaw()
    assert alive() is None and gc.get_freeze_count() == 0 and gc.isenabled() is enabled_before
