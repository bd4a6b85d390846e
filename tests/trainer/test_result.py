"""FitResult.status is a FitStatus (a str enum): it compares, prints and serialises as its value."""

from __future__ import annotations

import json
import pickle

import pytest

from trainer import FitResult, FitStatus


def test_status_is_the_enum_and_still_equals_its_string() -> None:
    result = FitResult("preempted", epoch=1, global_step=40)
    assert result.status is FitStatus.PREEMPTED
    assert result.status == "preempted" and f"{result.status}" == "preempted"
    assert str(result.status) == "preempted" and json.dumps(result.status) == '"preempted"'
    assert FitResult(FitStatus.COMPLETED, 2, 80) == FitResult("completed", 2, 80)
    assert pickle.loads(pickle.dumps(result)) == result


def test_an_unknown_status_names_the_valid_ones() -> None:
    with pytest.raises(
        ValueError,
        match=r"'status' must be one of 'completed', 'preempted', 'already_complete' \(got 'done'\)",
    ):
        FitResult("done", epoch=0, global_step=0)
