"""verify_resume says which part of a batch differs (ids vs values) and suggests the fix."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from torch.utils.data import IterableDataset

from statefuldata import Difference, make_loader, verify_resume
from statefuldata.diagnose import diagnose
from tests.data import CountingStream

IDS = torch.tensor([3, 1, 2])
X = torch.zeros(3, 4)


@pytest.mark.parametrize(
    ("expected", "got", "difference", "fix"),
    [
        ((IDS, X), (IDS, X + 1), Difference.VALUES, "per_sample_seed=True"),
        ((IDS, X), (IDS + 1, X), Difference.IDS, "shuffle_buffer_size=N"),
        ((IDS, X), (IDS + 1, X + 1), Difference.IDS, "ShuffleBuffer"),
        ({"id": [1, 2], "x": X}, {"id": [1, 2], "x": X - 1}, Difference.VALUES, "sample_rng"),
        ({"__key__": ["a", "b"]}, {"__key__": ["a", "c"]}, Difference.IDS, "state_dict"),
        (IDS, IDS.flip(0), Difference.IDS, "ShuffleBuffer"),
        (X, X + 1, Difference.VALUES, "no id-like field"),
        # an integer image batch is values, not ids
        (
            (IDS, torch.zeros(3, 2, 2, dtype=torch.uint8)),
            (IDS, torch.ones(3, 2, 2, dtype=torch.uint8)),
            Difference.VALUES,
            "per_sample_seed",
        ),
        ((np.arange(3), np.zeros(3)), (np.arange(3), np.ones(3)), Difference.VALUES, "seed"),
        ({"id": IDS}, {"idx": IDS}, Difference.STRUCTURE, "configured differently"),
        ((IDS, X), (IDS, X[:, :2]), Difference.STRUCTURE, "shapes"),
        ((IDS, X), (IDS[:2], X[:2]), Difference.IDS, "ShuffleBuffer"),
        ({"key": ["a", "b"]}, {"key": ["a"]}, Difference.IDS, "ShuffleBuffer"),
        ((IDS, X), (IDS, X.double()), Difference.STRUCTURE, "dtypes"),
    ],
)
def test_diagnose_names_the_part_and_the_fix(expected, got, difference, fix) -> None:
    found, suggestion = diagnose(expected, got)
    assert found is difference
    assert fix in suggestion


class SelfShuffling(IterableDataset):
    """A stream shuffling itself with the global RNG, as unseeded shuffle buffers do."""

    def __init__(self, n: int) -> None:
        self.stream = CountingStream(n)

    def __iter__(self):
        items = list(iter(self.stream))
        random.shuffle(items)
        return iter(items)

    def state_dict(self):
        return self.stream.state_dict()

    def load_state_dict(self, state) -> None:
        self.stream.load_state_dict(state)


def test_a_self_shuffling_stream_is_reported_as_ids_with_the_shuffle_buffer_fix() -> None:
    report = verify_resume(lambda: make_loader(SelfShuffling(12), batch_size=3), points=[1, 2])
    assert not report.ok
    assert report.first_mismatch.difference is Difference.IDS
    assert (
        "make_loader(stream, shuffle=True, shuffle_buffer_size=N)"
        in report.first_mismatch.suggestion
    )


class Restored:
    """A loader that misbehaves once restored: it yields nothing, or raises."""

    def __init__(self, fail: bool) -> None:
        self.loader, self.fail, self.restored = (
            make_loader(CountingStream(6), batch_size=2),
            fail,
            False,
        )

    def __iter__(self):
        if self.restored and self.fail:
            raise OSError("disk gone")
        return iter([]) if self.restored else iter(self.loader)

    def state_dict(self):
        return self.loader.state_dict()

    def load_state_dict(self, state) -> None:
        self.restored = True


def test_batch_count_and_error_mismatches_are_labelled() -> None:
    short = verify_resume(lambda: Restored(fail=False), points=[1], epochs=1).first_mismatch
    assert short.difference is Difference.BATCH_COUNT and "state_dict" in short.suggestion
    error = verify_resume(lambda: Restored(fail=True), points=[1], epochs=1).first_mismatch
    assert error.difference is Difference.ERROR and "OSError: disk gone" in error.reason


def test_an_off_by_one_restore_is_reported_as_ids() -> None:
    report = verify_resume(
        lambda: make_loader(CountingStream(12, restore_shift=1), batch_size=5), points=[2]
    )
    assert not report.ok and report.first_mismatch.difference is Difference.IDS
