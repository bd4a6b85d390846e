"""The scheduler's state records: strict reading, exact round trips, plain types only."""

from __future__ import annotations

import io

import pytest
import torch

from statefuldata import DataLoaderManager, DataLoaderState, IncompatibleStateError, make_loader
from statefuldata.state import (
    KEYS_ITERATOR,
    STATE_VERSION,
    IteratorState,
    join_loader_state,
    split_loader_state,
)
from tests.data import CountingStream, Ids

# The v1 "Iterator State Structure" (CHECKPOINT_FORMAT_V1.md) plus epoch, fingerprint, version and
# the per-loader counts: the key names are the format, not ours to rename.
V1_ITERATOR_KEYS = {
    "schedule_position",
    "loader_states",
    "total_batches",
    "loader_cycles",
    "prefetched_batches",
    "epoch",
    "fingerprint",
    "version",
    "loader_batches",
    "loader_samples",
}


def _iterator_state(steps: int = 3) -> dict:
    manager = DataLoaderManager(
        [make_loader(Ids(8), batch_size=2, shuffle=True, seed=4), make_loader(CountingStream(6))]
    )
    iterator = manager.create_epoch_iterator("train", 0)
    for _ in range(steps):
        next(iterator)
    return iterator.state_dict()


def test_the_key_constants_are_the_v1_names() -> None:
    assert set(KEYS_ITERATOR) == V1_ITERATOR_KEYS
    assert set(_iterator_state()) == V1_ITERATOR_KEYS
    assert set(DataLoaderState.KEYS) == {
        "batch_idx",
        "exhausted",
        "sampler_state",
        "dataset_state",
        "loader_state",
    }


def test_iterator_state_round_trips_exactly_and_loads_weights_only() -> None:
    state = _iterator_state()
    record = IteratorState.from_dict(state, "train")
    assert record.schedule_position == 3 and record.epoch == 0
    assert all(isinstance(entry, DataLoaderState) for entry in record.loader_states)
    assert record.to_dict() == state
    buf = io.BytesIO()
    torch.save(record.to_dict(), buf)
    buf.seek(0)
    assert IteratorState.from_dict(torch.load(buf, weights_only=True), "train") == record


def test_iterator_state_is_read_strictly() -> None:
    state = _iterator_state()
    with pytest.raises(IncompatibleStateError, match=r"val iterator state must have keys \["):
        IteratorState.from_dict({**state, "extra": 1}, "val")
    with pytest.raises(IncompatibleStateError, match=r"got list"):
        IteratorState.from_dict([], "train")
    with pytest.raises(
        IncompatibleStateError,
        match=rf"has version {STATE_VERSION + 1}, this library reads version {STATE_VERSION}",
    ):
        IteratorState.from_dict({**state, "version": STATE_VERSION + 1}, "train")
    bad_entry = {**state, "loader_states": [{"batch_idx": 0}, *state["loader_states"][1:]]}
    with pytest.raises(IncompatibleStateError, match=r"a loader state must have keys"):
        IteratorState.from_dict(bad_entry, "train")


def test_check_compatible_names_both_values_and_the_way_out() -> None:
    record = IteratorState.from_dict(_iterator_state(), "train")
    fingerprint = record.fingerprint
    record.check_compatible("train", n_loaders=2, fingerprint=fingerprint, strict=True)
    with pytest.raises(
        IncompatibleStateError, match=r"train state has 2 loaders, this manager has 3"
    ):
        record.check_compatible("train", n_loaders=3, fingerprint=fingerprint, strict=True)
    other = {**fingerprint, "seeds": [5, None]}
    with pytest.raises(
        IncompatibleStateError,
        match=r"'seeds': \{'saved': \[4, None\], 'current': \[5, None\]\}.*strict=False",
    ):
        record.check_compatible("train", n_loaders=2, fingerprint=other, strict=True)
    record.check_compatible("train", n_loaders=2, fingerprint=other, strict=False)


def test_is_complete_compares_the_position_with_the_epoch_length() -> None:
    record = IteratorState.from_dict(_iterator_state(steps=3), "train")
    assert not record.is_complete(4) and record.is_complete(3) and record.is_complete(2)


def test_loader_state_split_moves_sampler_state_and_joins_back() -> None:
    loader = make_loader(Ids(10), batch_size=2, shuffle=True, seed=1)
    iterator = iter(loader)
    next(iterator), next(iterator)
    own = loader.state_dict()
    entry = split_loader_state(own)
    assert entry.sampler_state is not None and entry.sampler_state["position"] == 4
    assert DataLoaderState.from_dict(entry.to_dict()) == entry
    rest = next(iterator).tolist()
    fresh = make_loader(Ids(10), batch_size=2, shuffle=True, seed=1)
    fresh.load_state_dict(join_loader_state(entry))
    assert next(iter(fresh)).tolist() == rest
    assert join_loader_state(DataLoaderState()) is None


def test_data_loader_state_is_read_strictly() -> None:
    with pytest.raises(
        IncompatibleStateError, match=r"a loader state must have keys .*got \['x'\]"
    ):
        DataLoaderState.from_dict({"x": 1})
