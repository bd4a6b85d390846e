from __future__ import annotations

import logging

import pytest

from statefuldata import IncompatibleStateError, SkipFallback, checkpointable, make_loader
from tests.data import CountingStream, Ids, PlainStream, ShortStream


def test_checkpointable_keeps_map_style_and_protocol_iterables() -> None:
    ids, counting = Ids(3), CountingStream(3)
    assert checkpointable(ids) is ids
    assert checkpointable(counting) is counting
    wrapped = checkpointable(PlainStream(3))
    assert isinstance(wrapped, SkipFallback) and wrapped.name == "PlainStream"


def test_checkpointable_rejects_non_iterables_and_one_shot_iterators() -> None:
    with pytest.raises(TypeError, match=r"needs a map-style dataset .* \(got int\)"):
        checkpointable(3)
    with pytest.raises(
        TypeError, match=r"re-iterable source, got a one-shot iterator \(generator\)"
    ):
        checkpointable(i for i in range(3))


def _restore_and_read(dataset, state, caplog):
    loader = make_loader(dataset, batch_size=2)
    loader.load_state_dict(state)
    with caplog.at_level(logging.WARNING):
        return [b.tolist() for b in loader]


def test_fallback_warns_exactly_once_per_restore_with_the_fix(caplog) -> None:
    loader = make_loader(PlainStream(10), batch_size=2)
    it = iter(loader)
    next(it), next(it)
    state = loader.state_dict()
    with caplog.at_level(logging.WARNING):
        for _ in make_loader(PlainStream(10), batch_size=2):
            pass
    assert not caplog.records  # no restore, no warning
    rest = _restore_and_read(PlainStream(10), state, caplog)
    assert rest == [[4, 5], [6, 7], [8, 9]]
    ours = [r for r in caplog.records if r.name == "statefuldata.fallback"]
    assert len(ours) == 1 and ours[0].levelno == logging.WARNING
    message = ours[0].getMessage()
    assert "'PlainStream'" in message and "skipping 4 items" in message
    assert "implement state_dict()/load_state_dict() on PlainStream" in message
    assert "naively fast-forwarding" not in caplog.text  # torchdata's own replay is not used


def test_too_short_stream_names_dataset_and_both_counts() -> None:
    ds = SkipFallback(ShortStream(5), name="short")
    ds.load_state_dict({"items_yielded": 9})
    with pytest.raises(
        RuntimeError,
        match=r"cannot restore 'short': the stream ended after 5 items while skipping to the saved position of 9 items",
    ):
        list(ds)


def test_loading_state_invalidates_a_live_iterator() -> None:
    ds = SkipFallback(PlainStream(6))
    it = iter(ds)
    next(it)
    ds.load_state_dict({"items_yielded": 3})
    with pytest.raises(RuntimeError, match="superseded by load_state_dict"):
        next(it)
    assert list(ds) == [3, 4, 5]


def test_bad_state() -> None:
    with pytest.raises(
        IncompatibleStateError, match=r"must have the key 'items_yielded' \(got \['position'\]\)"
    ):
        SkipFallback(PlainStream(3)).load_state_dict({"position": 1})
    with pytest.raises(IncompatibleStateError, match=r"must be an int >= 0 \(got -1\)"):
        SkipFallback(PlainStream(3)).load_state_dict({"items_yielded": -1})
