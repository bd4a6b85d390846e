"""The restore benchmark's curve predictions: what is measured and how an estimate is labelled."""

from __future__ import annotations

from benchmarks.curves import Curve
from benchmarks.harness import Stat


def _curve(flat: bool, **points: float) -> Curve:
    curve = Curve(per_call_cap=20.0, budget=60.0, repeats=3, flat=flat)
    for k, seconds in points.items():
        curve.add(int(k[1:]), Stat.of([seconds]), seconds)
    return curve


def test_a_flat_curve_with_one_point_is_predicted_flat_and_labelled_so() -> None:
    curve = _curve(True, k10=20.7)  # one call over the cap: no second point is measured
    assert not curve.should_measure(1_000_000)
    seconds, estimated, basis = curve.value(1_000_000)
    assert (seconds, estimated) == (20.7, True)
    assert basis == "extrapolated: flat from k=10"


def test_a_sloped_curve_with_one_point_is_predicted_proportional_to_k() -> None:
    seconds, estimated, basis = _curve(False, k10=2.0).value(100)
    assert (seconds, estimated) == (20.0, True)
    assert basis == "extrapolated: proportional to k from k=10"


def test_two_points_give_a_line_and_values_between_them_are_interpolated() -> None:
    curve = _curve(False, k10=1.0, k100=10.0)
    assert curve.value(1000)[0] == 100.0
    assert curve.value(55) == (5.5, True, "interpolated between k=10 and k=100")
    assert curve.value(10) == (1.0, False, "measured")
