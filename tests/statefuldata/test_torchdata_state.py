"""Pins the installed torchdata's ``StatefulDataLoader`` state layout, and the split/join of it.

A torchdata upgrade that moves a key fails here with a message naming the key; then update
``statefuldata/torchdata_state.py`` (and the version range in ``pyproject.toml``).
"""

from __future__ import annotations

import copy
import types
from importlib.metadata import version
from typing import Any

import pytest
from torchdata.stateful_dataloader import StatefulDataLoader
from torchdata.stateful_dataloader.sampler import BatchSampler

from statefuldata import SequentialSampler, ShuffledSampler, make_loader, verify_resume
from statefuldata.torchdata_state import (
    KEY_DATASET_STATE,
    KEY_FETCHER_STATE,
    KEY_INDEX_SAMPLER_STATE,
    KEY_MAIN_SNAPSHOT,
    KEY_SAMPLER_ITER_STATE,
    KEY_SAMPLER_STATE,
    KEY_SAMPLES_YIELDED,
    KEY_SNAPSHOT,
    KEY_WORKER_SNAPSHOTS,
    PRIVATE_ATTRIBUTES,
    SINGLE_PROCESS_KEYS,
    batch_sampler_key,
    batch_with_islice,
    installed_batch_sampler_key,
    join_state,
    split_state,
    start_passes_at_iter,
)
from tests.data import CountingStream, Ids

TORCHDATA = version("torchdata")
MULTI_PROCESS_KEYS = {KEY_SNAPSHOT, "_steps_since_snapshot", "_iterator_finished"}
SNAPSHOT_KEYS = {
    KEY_MAIN_SNAPSHOT,
    KEY_WORKER_SNAPSHOTS,
    "_snapshot_step",
    "_last_yielded_worker_id",
}
MAIN_SNAPSHOT_KEYS = {
    KEY_INDEX_SAMPLER_STATE,
    KEY_SAMPLER_ITER_STATE,
    "_sampler_iter_yielded",
    "_IterableDataset_len_called",
    "_shared_seed",
    "_num_workers",
    "_base_seed",
}
WORKER_SNAPSHOT_KEYS = {"worker_id", KEY_DATASET_STATE, KEY_FETCHER_STATE}
BATCH, N = 2, 10
WORKERS = [0, pytest.param(2, marks=pytest.mark.slow)]


def expect_keys(node: Any, expected: set[str] | tuple[str, ...], where: str) -> None:
    """Fail naming the keys torchdata moved (lost or gained) at ``where``."""
    assert isinstance(node, dict), f"torchdata {TORCHDATA}: {where} is {node!r}, not a dict"
    lost, gained = set(expected) - set(node), set(node) - set(expected)
    assert not lost and not gained, (
        f"torchdata {TORCHDATA} changed the StatefulDataLoader state at {where}: keys lost "
        f"{sorted(lost)}, gained {sorted(gained)}; statefuldata/torchdata_state.py was written for "
        f"{sorted(expected)}"
    )


def other_batch_key() -> str:
    return (
        {KEY_SAMPLER_ITER_STATE, KEY_INDEX_SAMPLER_STATE} - {installed_batch_sampler_key()}
    ).pop()


def map_loader(num_workers: int) -> StatefulDataLoader:
    sampler = ShuffledSampler(N, seed=3)
    return StatefulDataLoader(Ids(N), batch_size=BATCH, sampler=sampler, num_workers=num_workers)


def stream_loader(num_workers: int) -> StatefulDataLoader:
    return StatefulDataLoader(CountingStream(2 * N), batch_size=BATCH, num_workers=num_workers)


def ids(batches: list[Any]) -> list[int]:
    return [int(i) for batch in batches for i in batch]


def state_after(loader: StatefulDataLoader, k: int) -> tuple[dict[str, Any], list[int]]:
    """The state after ``k`` batches and the ids the uninterrupted pass yields after them."""
    it = iter(loader)
    for _ in range(k):
        next(it)
    state = copy.deepcopy(loader.state_dict())
    rest = ids(list(it))
    del it
    return state, rest


def resumed(build: Any, state: dict[str, Any]) -> list[int]:
    loader = build()
    loader.load_state_dict(state)
    return ids(list(loader))


def sampler_part(state: dict[str, Any]) -> dict[str, Any]:
    """The single-process state, or the main snapshot: where the sampler side lives."""
    return state[KEY_SNAPSHOT][KEY_MAIN_SNAPSHOT] if KEY_SNAPSHOT in state else state


def test_the_installed_batch_sampler_key_is_the_one_of_its_torchdata_generation() -> None:
    major, minor = (int(part) for part in TORCHDATA.split(".")[:2])
    expected = KEY_SAMPLER_ITER_STATE if (major, minor) >= (0, 11) else KEY_INDEX_SAMPLER_STATE
    assert installed_batch_sampler_key() == expected, (
        f"torchdata {TORCHDATA} reports its batch sampler's state under "
        f"{installed_batch_sampler_key()!r}, expected {expected!r}"
    )


@pytest.mark.parametrize("num_workers", WORKERS)
def test_map_style_state_layout_with_a_stateful_sampler(num_workers: int) -> None:
    state, _ = state_after(map_loader(num_workers), 2)
    if num_workers == 0:
        expect_keys(state, SINGLE_PROCESS_KEYS, "state")
        part, where = state, "state"
    else:
        expect_keys(state, MULTI_PROCESS_KEYS, "state")
        expect_keys(state[KEY_SNAPSHOT], SNAPSHOT_KEYS, f"state[{KEY_SNAPSHOT!r}]")
        part, where = state[KEY_SNAPSHOT][KEY_MAIN_SNAPSHOT], "the main snapshot"
        expect_keys(part, MAIN_SNAPSHOT_KEYS, where)
        workers = state[KEY_SNAPSHOT][KEY_WORKER_SNAPSHOTS]
        expect_keys(workers, {"worker_0", "worker_1"}, "the worker snapshots")
        for key, worker in workers.items():
            expect_keys(worker, WORKER_SNAPSHOT_KEYS, f"worker snapshot {key!r}")
    key = installed_batch_sampler_key()
    assert part[other_batch_key()] is None, f"{where}[{other_batch_key()!r}] is no longer None"
    batch = part[key]
    expect_keys(batch, {KEY_SAMPLES_YIELDED, KEY_SAMPLER_STATE}, f"{where}[{key!r}]")
    assert batch[KEY_SAMPLES_YIELDED] == 2 * BATCH
    # With workers, the main snapshot is taken as batches are handed out; it may lag behind.
    position = batch[KEY_SAMPLER_STATE]["position"]
    assert position == 2 * BATCH if num_workers == 0 else 0 < position <= N


@pytest.mark.parametrize("num_workers", WORKERS)
def test_iterable_state_layout_with_a_stateful_dataset(num_workers: int) -> None:
    state, _ = state_after(stream_loader(num_workers), 2)
    fetcher_keys = {"dataset_iter_state", "fetcher_ended"}
    if num_workers == 0:
        expect_keys(state, SINGLE_PROCESS_KEYS, "state")
        assert state[KEY_DATASET_STATE] == {"position": 2 * BATCH}
        expect_keys(state[KEY_FETCHER_STATE], fetcher_keys, f"state[{KEY_FETCHER_STATE!r}]")
        part = state
    else:
        expect_keys(state, MULTI_PROCESS_KEYS, "state")
        workers = state[KEY_SNAPSHOT][KEY_WORKER_SNAPSHOTS]
        for key, worker in workers.items():
            expect_keys(worker, WORKER_SNAPSHOT_KEYS, f"worker snapshot {key!r}")
            expect_keys(worker[KEY_FETCHER_STATE], fetcher_keys, f"{key!r} fetcher state")
        assert sum(w[KEY_DATASET_STATE]["position"] for w in workers.values()) == 2 * BATCH
        part = state[KEY_SNAPSHOT][KEY_MAIN_SNAPSHOT]
    expect_keys(part[installed_batch_sampler_key()], {KEY_SAMPLES_YIELDED}, "batch sampler")


def test_private_attributes_we_use_exist() -> None:
    loader_attributes, iterator_attributes = PRIVATE_ATTRIBUTES
    loader = map_loader(0)
    for name in loader_attributes:
        assert hasattr(loader, name), f"torchdata {TORCHDATA}: StatefulDataLoader lost {name!r}"
    iterator = iter(loader)
    next(iterator)
    for name in iterator_attributes:
        if name in ("_shutdown_workers", "_send_idx", "_rcvd_idx"):
            continue  # multi-process iterators only: checked in the slow test below
        assert hasattr(iterator, name), f"torchdata {TORCHDATA}: its iterator lost {name!r}"


@pytest.mark.slow
def test_private_attributes_of_the_multi_process_iterator_exist() -> None:
    loader = map_loader(2)
    iterator = iter(loader)
    next(iterator)
    for name in PRIVATE_ATTRIBUTES[1]:
        assert hasattr(iterator, name), f"torchdata {TORCHDATA}: its iterator lost {name!r}"
    iterator._shutdown_workers()


CASES = [
    pytest.param(map_loader, 0, id="map-0"),
    pytest.param(stream_loader, 0, id="iterable-0"),
    pytest.param(map_loader, 2, id="map-2", marks=pytest.mark.slow),
    pytest.param(stream_loader, 2, id="iterable-2", marks=pytest.mark.slow),
]


@pytest.mark.parametrize(("factory", "num_workers"), CASES)
def test_split_moves_the_parts_out_and_join_puts_them_back(factory, num_workers) -> None:
    def build() -> StatefulDataLoader:
        return factory(num_workers)

    for k in (0, 1, 3):  # before the first batch, mid-prefetch with workers, later
        state, expected = state_after(build(), k)
        original = copy.deepcopy(state)
        sampler, dataset, rest = split_state(state)
        assert state == original  # the input is not edited
        if factory is map_loader:
            assert sampler is not None and "position" in sampler
            assert KEY_SAMPLER_STATE not in sampler_part(rest)[installed_batch_sampler_key()]
        else:
            assert sampler is None
        if factory is stream_loader and num_workers == 0:
            assert dataset == {"position": k * BATCH} and KEY_DATASET_STATE not in rest
        if factory is stream_loader and num_workers == 2 and k > 0:
            assert set(dataset) <= {"worker_0", "worker_1"} and dataset
            for worker in rest[KEY_SNAPSHOT][KEY_WORKER_SNAPSHOTS].values():
                assert KEY_DATASET_STATE not in worker
        joined = join_state(sampler, dataset, rest)
        assert joined == original, f"split then join changed the state at k={k}"
        assert resumed(build, joined) == expected, f"resume at k={k} differs"


@pytest.mark.parametrize(("factory", "num_workers"), CASES)
def test_a_state_of_the_other_torchdata_layout_resumes_exactly(factory, num_workers) -> None:
    """torchdata 0.11 moved the batch sampler's state; join puts it where the installed one reads it."""

    def build() -> StatefulDataLoader:
        return factory(num_workers)

    state, expected = state_after(build(), 3)
    sampler, dataset, rest = split_state(state)
    part, key, other = sampler_part(rest), installed_batch_sampler_key(), other_batch_key()
    part[other], part[key] = part[key], None  # as the other torchdata generation writes it
    joined = join_state(sampler, dataset, rest)
    assert batch_sampler_key(sampler_part(joined)) == key
    assert sampler_part(joined)[other] is None
    assert resumed(build, joined) == expected


def test_join_refuses_a_sampler_state_with_nowhere_to_go() -> None:
    state, _ = state_after(map_loader(0), 1)
    sampler, dataset, rest = split_state(state)
    rest[KEY_INDEX_SAMPLER_STATE] = rest[KEY_SAMPLER_ITER_STATE] = None
    with pytest.raises(ValueError, match="no batch sampler state under _sampler_iter_state or"):
        join_state(sampler, dataset, rest)


def test_split_and_join_of_no_state() -> None:
    assert split_state(None) == (None, None, None)
    assert join_state(None, None, None) is None


def test_a_restored_loader_reports_the_restored_count_before_its_first_batch() -> None:
    """torchdata < 0.11 reported the previous count here; a loader restored from that state never
    started its next pass."""

    def build() -> StatefulDataLoader:
        return make_loader(Ids(6), batch_size=BATCH, shuffle=True)

    def passes(loader: StatefulDataLoader) -> list[list[int]]:
        return [ids(list(loader)) for _ in range(2)]

    ended = build()
    it = iter(ended)
    next(it), next(it), next(it)
    state = ended.state_dict()  # the pass has ended, StopIteration not yet seen
    expected = [ids(list(it)), ids(list(ended))]
    first = build()
    first.load_state_dict(state)
    reported = first.state_dict()  # restored, not yet iterated
    assert sampler_part(reported)[installed_batch_sampler_key()][KEY_SAMPLES_YIELDED] == 6
    second = build()
    second.load_state_dict(reported)
    assert passes(first) == passes(second) == expected == [[], expected[1]]


def test_a_loader_restored_after_its_pass_raised_stop_starts_a_fresh_pass() -> None:
    """torchdata < 0.11 resumed the ended position in the fresh pass and yielded nothing."""

    def build() -> StatefulDataLoader:
        return make_loader(Ids(6), batch_size=BATCH, shuffle=True)

    ended = build()
    assert len(list(ended)) == 3
    state = ended.state_dict()
    expected = [ids(list(ended)) for _ in range(2)]
    for ask_first in (False, True):
        restored = build()
        restored.load_state_dict(state)
        if ask_first:
            restored.state_dict()  # asked before the first batch: changes nothing
        assert [ids(list(restored)) for _ in range(2)] == expected


def test_a_state_taken_at_a_pass_start_is_the_new_pass() -> None:
    """torchdata < 0.11 reported the previous pass here, until the first batch."""
    loader = make_loader(Ids(6), batch_size=BATCH, shuffle=True)
    assert len(list(loader)) == 3
    iter(loader)
    batch = sampler_part(loader.state_dict())[installed_batch_sampler_key()]
    assert batch[KEY_SAMPLES_YIELDED] == 0
    assert (batch[KEY_SAMPLER_STATE]["epoch"], batch[KEY_SAMPLER_STATE]["position"]) == (1, 0)


@pytest.mark.slow
def test_states_replayed_from_a_pass_start_snapshot_resume_exactly() -> None:
    """With workers, torchdata restores the last snapshot and replays the batches after it; a
    snapshot at the start of a second pass held the first pass's end under torchdata < 0.11."""

    def build() -> StatefulDataLoader:
        return make_loader(
            Ids(N), batch_size=BATCH, shuffle=True, num_workers=2, snapshot_every_n_steps=4
        )

    report = verify_resume(build, epochs=2, points=[1, 5, 6, 8, 10])
    assert report.ok, report.first_mismatch


def test_start_passes_at_iter_touches_only_torchdata_batch_samplers_before_0_11() -> None:
    loader = make_loader(Ids(N), batch_size=BATCH)
    old = hasattr(loader.batch_sampler, "next_yielded")
    assert type(loader.batch_sampler).__name__ == (
        "_PassAtIterBatchSampler" if old else "_IsliceBatchSampler"
    )
    assert type(loader.batch_sampler).__mro__[1] is BatchSampler
    unbatched = StatefulDataLoader(Ids(N), batch_size=None)
    start_passes_at_iter(unbatched)  # no batch sampler: nothing to do
    assert unbatched.batch_sampler is None
    start_passes_at_iter(object())


@pytest.mark.parametrize("drop_last", [False, True])
def test_islice_batches_and_states_equal_torchdatas_own(drop_last) -> None:
    if hasattr(BatchSampler(range(3), 2, False), "next_yielded"):
        pytest.skip("torchdata < 0.11: its batch sampler holds the state, not its iterator")
    theirs = BatchSampler(SequentialSampler(10), 4, drop_last)
    ours = BatchSampler(SequentialSampler(10), 4, drop_last)
    batch_with_islice(types.SimpleNamespace(batch_sampler=ours))
    assert type(ours) is not BatchSampler
    a, b = iter(theirs), iter(ours)
    for _ in range(4):  # past the end: both stop, with the same count of samples handed out
        assert next(a, None) == next(b, None)
        assert a.state_dict() == b.state_dict()
