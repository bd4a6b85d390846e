"""The resume-equivalence checker is itself tested: it must catch broken pipelines."""

from __future__ import annotations

import pytest

from statefuldata import ResumeMismatchError, make_loader, verify_resume
from tests.data import CountingStream, Ids


def test_off_by_one_restore_is_caught() -> None:
    report = verify_resume(lambda: make_loader(CountingStream(12, restore_shift=1), batch_size=2))
    assert not report.ok
    mismatch = report.first_mismatch
    assert mismatch is not None and mismatch.point == 0 and mismatch.batch_index == 0
    assert mismatch.expected.tolist() == [0, 1] and mismatch.got.tolist() == [1, 2]


def test_raise_on_mismatch() -> None:
    with pytest.raises(ResumeMismatchError, match=r"resume at point 0 differs at batch 0"):
        verify_resume(
            lambda: make_loader(CountingStream(12, restore_shift=1), batch_size=2),
            raise_on_mismatch=True,
        )


class Exploding:
    """A loader whose restored run raises."""

    def __init__(self) -> None:
        self.loader = make_loader(Ids(6), batch_size=2)
        self.restored = False

    def __iter__(self):
        if self.restored:
            raise OSError("disk gone")
        return iter(self.loader)

    def state_dict(self):
        return self.loader.state_dict()

    def load_state_dict(self, state):
        self.restored = True


def test_exception_in_resumed_run_is_a_mismatch_unless_asked_to_raise() -> None:
    report = verify_resume(Exploding, points=[1])
    assert not report.ok and "OSError: disk gone" in report.first_mismatch.reason
    with pytest.raises(OSError, match="disk gone"):
        verify_resume(Exploding, points=[1], raise_on_mismatch=True)


def test_missing_batches_are_reported() -> None:
    class Truncating(Exploding):
        def __iter__(self):
            it = iter(self.loader)
            return iter([]) if self.restored else it

    report = verify_resume(Truncating, points=[1], epochs=1)
    assert (
        not report.ok and "yielded 0 batches where 1 were expected" in report.first_mismatch.reason
    )


def test_points_and_factory_validation() -> None:
    with pytest.raises(
        TypeError, match=r"'factory' must be a zero-argument callable .* \(got list\)"
    ):
        verify_resume([1, 2])
    with pytest.raises(ValueError, match=r"points must be ints in \[0, 6\] \(got \[7\]\)"):
        verify_resume(lambda: make_loader(Ids(6), batch_size=2), points=[0, 7])
    with pytest.raises(ValueError, match=r"'epochs' must be an int >= 1 \(got 0\)"):
        verify_resume(lambda: make_loader(Ids(6), batch_size=2), epochs=0)


def test_default_points_cover_boundaries_for_long_runs() -> None:
    report = verify_resume(lambda: make_loader(Ids(120), batch_size=2, shuffle=True))
    assert report.ok and report.total_batches == 120
    assert {0, 1, 59, 60, 61, 120} <= set(report.points) and len(report.points) < 60


def test_default_points_are_exactly_the_documented_48() -> None:
    report = verify_resume(
        lambda: make_loader(Ids(60), batch_size=2, shuffle=True, num_workers=0), epochs=2
    )
    points = set(report.points)
    assert report.ok and report.total_batches == 60 and len(points) == 48
    assert {0, 1} | {29, 30, 31, 59, 60} <= points  # start, then around both epoch boundaries
    gaps = [b - a for a, b in zip(report.points, report.points[1:])]
    assert max(gaps) <= 3  # an even spread over the rest


def test_points_all_checks_every_batch() -> None:
    report = verify_resume(lambda: make_loader(Ids(120), batch_size=2), points="all", epochs=1)
    assert report.ok and report.points == tuple(range(61))
    with pytest.raises(
        ValueError, match=r"points must be 'all', None or a list of ints \(got 'every'\)"
    ):
        verify_resume(lambda: make_loader(Ids(6), batch_size=2), points="every")


def test_an_unknown_cause_gives_no_hint() -> None:
    report = verify_resume(lambda: make_loader(CountingStream(12, restore_shift=1), batch_size=2))
    assert not report.ok and report.hint == "" and report.first_mismatch.hint == ""
