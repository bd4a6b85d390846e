"""ShuffleBuffer: exact resume at every point, each item once per epoch, new order each epoch, small state."""

from __future__ import annotations

import io
import statistics

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.data import IterableDataset

from statefuldata import (
    IncompatibleStateError,
    LoaderSpec,
    ShuffleBuffer,
    make_loader,
    verify_resume,
)
from tests.data import CountingStream, Ids, PlainStream

SOURCES = {"plain": PlainStream, "checkpointable": CountingStream}


def _round_trip(state: dict) -> dict:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def _take(buffer: ShuffleBuffer, passes: int, count: int | None = None) -> tuple[list[int], int]:
    """Up to ``count`` items over ``passes`` passes, as a loader would; returns the passes left."""
    out: list[int] = []
    it = None
    while passes > 0 and (count is None or len(out) < count):
        if it is None:
            it = iter(buffer)
        try:
            out.append(next(it))
        except StopIteration:
            it, passes = None, passes - 1
    return out, passes


@settings(max_examples=60, deadline=None)
@given(
    source=st.sampled_from(sorted(SOURCES)),
    n=st.integers(0, 40),
    buffer_size=st.integers(1, 12),
    data=st.data(),
)
def test_resume_at_any_point_equals_uninterrupted(source, n, buffer_size, data) -> None:
    reference, _ = _take(ShuffleBuffer(SOURCES[source](n), buffer_size, seed=3), 2)
    k = data.draw(st.integers(0, len(reference)), label="k")
    first = ShuffleBuffer(SOURCES[source](n), buffer_size, seed=3)
    taken, passes_left = _take(first, 2, k)
    resumed = ShuffleBuffer(SOURCES[source](n), buffer_size, seed=3)
    resumed.load_state_dict(_round_trip(first.state_dict()))
    rest, _ = _take(resumed, passes_left)
    assert taken + rest == reference
    assert sorted(reference) == sorted(list(range(n)) * 2)


@pytest.mark.parametrize("num_workers", [0, pytest.param(2, marks=pytest.mark.slow)])
@pytest.mark.parametrize("source", sorted(SOURCES))
def test_loader_resumes_exactly_at_every_point(source: str, num_workers: int) -> None:
    def factory():
        return make_loader(
            SOURCES[source](16),
            batch_size=3,
            shuffle=True,
            shuffle_buffer_size=5,
            seed=1,
            num_workers=num_workers,
        )

    report = verify_resume(factory, epochs=2)
    assert report.ok, report.first_mismatch
    assert report.points == tuple(range(report.total_batches + 1))


@pytest.mark.slow
@settings(max_examples=4, deadline=None)
@given(buffer_size=st.integers(1, 9), k=st.integers(0, 16))
def test_loader_with_workers_resumes_at_drawn_points(buffer_size: int, k: int) -> None:
    def factory():
        return make_loader(
            CountingStream(20),
            batch_size=3,
            shuffle=True,
            shuffle_buffer_size=buffer_size,
            num_workers=2,
        )

    report = verify_resume(factory, points=[k], epochs=2)
    assert report.ok, report.first_mismatch


@pytest.mark.slow
def test_persistent_workers_resume_across_epochs() -> None:
    def factory():
        return make_loader(
            PlainStream(14),
            batch_size=2,
            shuffle=True,
            shuffle_buffer_size=4,
            num_workers=2,
            persistent_workers=True,
        )

    report = verify_resume(factory, epochs=3, points=[0, 1, 3, 7, 8, 9, 15, 16])
    assert report.ok, report.first_mismatch


@pytest.mark.parametrize("num_workers", [0, pytest.param(2, marks=pytest.mark.slow)])
def test_each_item_once_per_epoch_and_orders_differ(num_workers: int) -> None:
    loader = make_loader(
        PlainStream(40), batch_size=4, shuffle=True, shuffle_buffer_size=8, num_workers=num_workers
    )
    epochs = [[i for batch in loader for i in batch.tolist()] for _ in range(3)]
    for order in epochs:
        assert sorted(order) == list(range(40))
        assert order != list(range(40)) and order != sorted(order, key=lambda i: (i % 2, i))
    assert len({tuple(order) for order in epochs}) == 3


def test_standalone_epochs_follow_set_epoch_and_advance_by_themselves() -> None:
    buffer = ShuffleBuffer(PlainStream(30), 6, seed=0)
    first, second = list(buffer), list(buffer)
    assert sorted(first) == sorted(second) == list(range(30)) and first != second
    buffer.set_epoch(0)
    assert list(buffer) == first
    other_seed = ShuffleBuffer(PlainStream(30), 6, seed=1)
    assert list(other_seed) != first


class _Tensors(IterableDataset):
    """A checkpointable stream of large tensors (4 kB each)."""

    def __init__(self, n: int) -> None:
        self.stream = CountingStream(n)

    def __iter__(self):
        return (torch.full((1000,), float(i)) for i in iter(self.stream))

    def state_dict(self):
        return self.stream.state_dict()

    def load_state_dict(self, state) -> None:
        self.stream.load_state_dict(state)


def _state_bytes(buffer: ShuffleBuffer, items: int) -> int:
    it = iter(buffer)
    for _ in range(items):
        next(it)
    blob = io.BytesIO()
    torch.save(buffer.state_dict(), blob)
    return blob.getbuffer().nbytes


def test_state_holds_positions_only_and_its_size_is_bounded() -> None:
    """Documented bound: upstream state + a few ints, whatever buffer_size and position."""
    small = _state_bytes(ShuffleBuffer(_Tensors(10**6), 4, seed=0), 3)
    large = _state_bytes(ShuffleBuffer(_Tensors(10**6), 512, seed=0), 5_000)
    upstream = io.BytesIO()
    torch.save(CountingStream(10).state_dict(), upstream)
    assert abs(small - large) <= 32, (small, large)
    assert large < upstream.getbuffer().nbytes + 1_200  # a 512-item window holds 2 MB of tensors
    state = ShuffleBuffer(_Tensors(10), 4, seed=0).state_dict()
    assert set(state) == {"epoch", "window", "offset", "source", "fingerprint"}
    assert state["source"] == {"position": 0}


def test_restore_reads_at_most_one_window() -> None:
    class Reads(CountingStream):
        reads = 0

        def _generate(self):
            for item in super()._generate():
                Reads.reads += 1
                yield item

    buffer = ShuffleBuffer(Reads(1000), 50, seed=2)
    it = iter(buffer)
    head = [next(it) for _ in range(437)]
    state = buffer.state_dict()
    rest = list(it)
    Reads.reads = 0
    resumed = ShuffleBuffer(Reads(1000), 50, seed=2)
    resumed.load_state_dict(state)
    first = next(iter(resumed))
    assert first == rest[0] and Reads.reads <= 50
    assert sorted(head + rest) == list(range(1000))


def test_mean_displacement_is_about_a_third_of_the_buffer() -> None:
    """The quality the docstring states: mean |displacement| ~ buffer_size / 3 (full shuffle: n / 3)."""
    order = list(ShuffleBuffer(PlainStream(20_000), 300, seed=5))
    mean = statistics.fmean(abs(pos - item) for pos, item in enumerate(order))
    assert 80 <= mean <= 110, mean
    assert max(abs(pos - item) for pos, item in enumerate(order)) < 2 * 300


def test_live_iterator_raises_after_load_state_dict() -> None:
    buffer = ShuffleBuffer(CountingStream(20), 4, seed=0)
    it = iter(buffer)
    next(it)
    buffer.load_state_dict(buffer.state_dict())
    with pytest.raises(RuntimeError, match=r"superseded by load_state_dict\(\)"):
        next(it)


def test_set_epoch_reaches_the_stream_through_the_loader() -> None:
    seen: list[int] = []

    class EpochStream(CountingStream):
        def set_epoch(self, epoch: int) -> None:
            seen.append(epoch)

    loader = make_loader(EpochStream(6), batch_size=2, shuffle=True, shuffle_buffer_size=3)
    for _ in range(2):
        list(loader)
    assert seen == [0, 1]


def test_bad_input_is_refused_with_the_way_out() -> None:
    with pytest.raises(TypeError, match=r"ShuffleBuffer shuffles streams; Ids is map-style"):
        ShuffleBuffer(Ids(5), 2, seed=0)
    with pytest.raises(TypeError, match=r"needs a re-iterable stream \(got list_iterator\)"):
        ShuffleBuffer(iter([1, 2]), 2, seed=0)
    with pytest.raises(ValueError, match=r"'buffer_size' must be an int >= 1 \(got 0\)"):
        ShuffleBuffer(PlainStream(5), 0, seed=0)
    with pytest.raises(ValueError, match=r"'seed' must be an int >= 0 \(got -1\)"):
        ShuffleBuffer(PlainStream(5), 2, seed=-1)
    saved = ShuffleBuffer(PlainStream(5), 2, seed=0).state_dict()
    with pytest.raises(
        IncompatibleStateError,
        match=r"taken under \{'buffer_size': 2, 'seed': 0, 'rank': 0\} but this buffer is "
        r"\{'buffer_size': 3, 'seed': 0, 'rank': 0\}",
    ):
        ShuffleBuffer(PlainStream(5), 3, seed=0).load_state_dict(saved)
    with pytest.raises(IncompatibleStateError, match=r"must have keys .* \(got \['position'\]\)"):
        ShuffleBuffer(PlainStream(5), 2, seed=0).load_state_dict({"position": 1})


def test_make_loader_shuffle_options_are_checked() -> None:
    with pytest.raises(
        ValueError,
        match=r"shuffle=True on PlainStream, an iterable dataset, needs shuffle_buffer_size=N "
        r"\(got shuffle_buffer_size=None\)",
    ):
        make_loader(PlainStream(5), shuffle=True)
    with pytest.raises(
        ValueError, match=r"shuffle_buffer_size applies to iterable datasets; Ids is map-style"
    ):
        make_loader(Ids(5), shuffle=True, shuffle_buffer_size=4)
    with pytest.raises(ValueError, match=r"shuffle_buffer_size=4 was given with shuffle=False"):
        make_loader(PlainStream(5), shuffle_buffer_size=4)
    with pytest.raises(ValueError, match=r"'shuffle_buffer_size' must be an int >= 1 or None"):
        make_loader(PlainStream(5), shuffle=True, shuffle_buffer_size=0)


def test_hugging_face_stream_shuffles_and_resumes_exactly() -> None:
    datasets = pytest.importorskip("datasets", reason="Hugging Face datasets is optional")

    def rows():
        for i in range(30):
            yield {"id": i}

    def factory():
        stream = datasets.IterableDataset.from_generator(rows)
        return make_loader(stream, batch_size=4, shuffle=True, shuffle_buffer_size=7, seed=2)

    report = verify_resume(factory, epochs=2, points=[0, 3, 8, 9, 12])
    assert report.ok, report.first_mismatch
    loader = factory()
    orders = [[i for b in loader for i in b["id"].tolist()] for _ in range(2)]
    assert all(sorted(o) == list(range(30)) for o in orders) and orders[0] != orders[1]


def test_loader_spec_builds_the_same_shuffled_stream() -> None:
    spec = LoaderSpec(
        name="s", dataset=PlainStream(20), batch_size=3, shuffle=True, shuffle_buffer_size=6
    )
    assert spec.to_dict()["shuffle_buffer_size"] == 6
    loader = spec.build(seed=4)
    declared = [b.tolist() for _ in range(2) for b in loader]
    imperative = make_loader(
        PlainStream(20), batch_size=3, shuffle=True, shuffle_buffer_size=6, seed=4
    )
    assert declared == [b.tolist() for _ in range(2) for b in imperative]
    assert isinstance(loader.dataset.dataset, ShuffleBuffer)
    report = verify_resume(lambda: spec.build(seed=4), epochs=2, points=[0, 2, 6, 7, 8, 11])
    assert report.ok, report.first_mismatch
