"""Cost curves over a position ``k``: measure while affordable, extrapolate linearly beyond.

Skip-based restores cost time proportional to the position, so at large ``k`` they are not measured
but predicted from a straight line through the two largest measured points, and labelled so. States
at a large ``k`` are synthesised the same way: every integer counter of a state grows linearly with
``k`` (batches, samples, positions), everything else is constant; the synthesis is checked against
real states taken at small ``k``.
"""

from __future__ import annotations

from typing import Any

import attrs

from benchmarks.harness import Stat
from statefuldata.testing import equal as states_equal

__all__ = ["Curve", "extrapolate_state", "states_equal"]


@attrs.define(kw_only=True)
class Curve:
    """Medians of one variant against ``k``, with the time budget that decides what is measured.

    Attributes:
        per_call_cap: A point is measured only if one measurement is predicted to take at most this.
        budget: Seconds this curve may spend in total.
        flat: The cost is a constant plus little: it is predicted flat from a single point, and
            only the per-call cap limits what is measured.
    """

    per_call_cap: float
    budget: float
    repeats: int
    flat: bool = False
    points: dict[int, Stat] = attrs.field(factory=dict)
    spent: float = 0.0

    def add(self, k: int, stat: Stat, seconds_spent: float) -> None:
        self.points[k] = stat
        self.spent += seconds_spent

    def _line(self) -> tuple[float, float] | None:
        """Intercept and slope through the two largest measured ``k`` (slope clamped at >= 0)."""
        if len(self.points) < 2:
            return None
        (k1, s1), (k2, s2) = sorted(self.points.items())[-2:]
        slope = max(0.0, (s2.median - s1.median) / (k2 - k1))
        return s2.median - slope * k2, slope

    def predict(self, k: int) -> float:
        line = self._line()
        if line is not None:
            return line[0] + line[1] * k
        if not self.points:
            raise ValueError("cannot predict a curve with no measured point; measure one first")
        (k1, s1) = next(iter(self.points.items()))
        if self.flat:  # a constant cost: the one point is the prediction
            return s1.median
        return s1.median * max(1.0, k / k1)  # one point: cost proportional to k (pessimistic)

    def established(self) -> bool:
        """Whether the measured cost has risen clearly above its constant part (the largest
        measured point costs at least twice the smallest), so a line through the two largest
        points is a slope and not noise."""
        if len(self.points) < 2:
            return False
        measured = sorted(self.points.items())
        return measured[-1][1].median >= 2 * measured[0][1].median

    def should_measure(self, k: int) -> bool:
        """Whether to measure ``k``: one call must be predicted to fit the per-call cap, and once
        the slope is established the curve must stay within its budget (before that, points are
        measured while the cap allows, so the extrapolation has a real slope to follow)."""
        if self.flat or len(self.points) < 2:
            return all(s.median <= self.per_call_cap for s in self.points.values())
        predicted = self.predict(k)
        if predicted > self.per_call_cap:
            return False
        return not self.established() or self.spent + predicted * self.repeats <= self.budget

    def value(self, k: int) -> tuple[float, bool, str]:
        """``(seconds, estimated, basis)`` at ``k``: measured, interpolated or extrapolated."""
        if k in self.points:
            return self.points[k].median, False, "measured"
        measured = sorted(self.points)
        below = [m for m in measured if m < k]
        above = [m for m in measured if m > k]
        if below and above:
            (k1, k2) = below[-1], above[0]
            t1, t2 = self.points[k1].median, self.points[k2].median
            seconds = t1 + (t2 - t1) * (k - k1) / (k2 - k1)
            return seconds, True, f"interpolated between k={k1:,} and k={k2:,}"
        if len(measured) >= 2:
            basis = f"extrapolated: line through k={measured[-2]:,} and k={measured[-1]:,}"
        elif self.flat:
            basis = f"extrapolated: flat from k={measured[0]:,}"
        else:
            basis = f"extrapolated: proportional to k from k={measured[0]:,}"
        return self.predict(k), True, basis


def extrapolate_state(s1: Any, k1: int, s2: Any, k2: int, k: int, where: str = "state") -> Any:
    """The state at ``k`` from states at ``k1`` and ``k2``: ints move linearly, the rest is equal.

    Raises ValueError where a non-integer leaf differs between the two states or an integer does
    not land on an integer (the state is then not linear in ``k`` and cannot be synthesised).
    """
    if isinstance(s1, dict):
        if not isinstance(s2, dict) or set(s1) != set(s2):
            raise ValueError(f"{where}: keys differ between k={k1} and k={k2}")
        return {key: extrapolate_state(s1[key], k1, s2[key], k2, k, f"{where}.{key}") for key in s1}
    if isinstance(s1, (list, tuple)):
        if type(s1) is not type(s2) or len(s1) != len(s2):
            raise ValueError(f"{where}: sequences differ between k={k1} and k={k2}")
        items = [
            extrapolate_state(a, k1, b, k2, k, f"{where}[{i}]")
            for i, (a, b) in enumerate(zip(s1, s2))
        ]
        return type(s1)(items)
    if isinstance(s1, int) and not isinstance(s1, bool):
        step, rest = divmod((s2 - s1) * (k - k1), k2 - k1)
        if rest:
            raise ValueError(f"{where}: {s1} -> {s2} over k {k1} -> {k2} is not linear in k")
        return s1 + step
    if not states_equal(s1, s2):
        raise ValueError(f"{where}: a non-integer value changes between k={k1} and k={k2}")
    return s1
