"""FitResult.status: a FitStatus value kept a plain str (it saves with weights_only=True)."""

from __future__ import annotations

import json
import pickle

import pytest
import torch

from trainer import FitResult, FitStatus


def test_status_is_a_plain_str_equal_to_the_enum(tmp_path) -> None:
    result = FitResult(FitStatus.PREEMPTED, epoch=1, global_step=40)
    assert type(result.status) is str and result.status == FitStatus.PREEMPTED == "preempted"
    assert json.dumps(result.status) == '"preempted"'
    assert FitResult(FitStatus.COMPLETED, 2, 80) == FitResult("completed", 2, 80)
    assert pickle.loads(pickle.dumps(result)) == result
    torch.save({"status": result.status}, tmp_path / "status.pt")
    assert torch.load(tmp_path / "status.pt", weights_only=True) == {"status": "preempted"}


def test_an_unknown_status_names_the_valid_ones() -> None:
    with pytest.raises(
        ValueError,
        match=r"'status' must be one of 'completed', 'preempted', 'already_complete' \(got 'done'\)",
    ):
        FitResult("done", epoch=0, global_step=0)
