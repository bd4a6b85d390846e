"""Elastic resume of DataLoaderManager states: another world size or worker count than the saved one.

Ranks are simulated in one process (loaders built with explicit ``rank``/``world_size``, one manager
per rank, iterated in lockstep); tests/trainer/test_elastic.py runs the same under real torchrun.
"""

from __future__ import annotations

import copy
import logging

import pytest

from statefuldata import (
    DataLoaderManager,
    IncompatibleStateError,
    MultiDataLoaderConfig,
    make_loader,
)
from tests.data import CountingStream, Ids

GLOBAL_BATCH, EPOCHS = 4, 2
CONFIG = MultiDataLoaderConfig(
    sampling_strategy="weighted",
    dataloader_weights=[0.5, 0.3, 0.2],
    dataloader_names=["a", "b", "c"],
)
STEPS = EPOCHS * (24 + 16 + 8) // GLOBAL_BATCH


def _manager(rank: int, world: int, workers: int = 0, snapshot_every: int = 1) -> DataLoaderManager:
    b = GLOBAL_BATCH // world
    loaders = [
        make_loader(Ids(24), batch_size=b, shuffle=True, seed=1, rank=rank, world_size=world,
                    num_workers=workers),
        make_loader(Ids(16, 1000), batch_size=b, shuffle=True, seed=2, rank=rank, world_size=world),
        make_loader(Ids(8, 2000), batch_size=b, rank=rank, world_size=world),
    ]  # fmt: skip
    loaders[0].snapshot_every_n_steps = snapshot_every
    return DataLoaderManager(loaders, train_config=CONFIG)


def _steps(managers: list[DataLoaderManager], count: int) -> list[tuple[int, list[int]]]:
    """``count`` global steps of managers in lockstep: (loader index, sorted ids of every rank)."""
    out: list[tuple[int, list[int]]] = []
    for _ in range(EPOCHS + 1):
        if len(out) == count:
            break
        iterators = [m.create_epoch_iterator("train") for m in managers]
        for drawn in zip(*iterators):
            assert len({index for index, _, _ in drawn}) == 1  # every rank draws the same loader
            out.append((drawn[0][0], sorted(i for _, _, b in drawn for i in b.tolist())))
            if len(out) == count:
                break
    return out


def _close(managers: list[DataLoaderManager]) -> None:
    for m in managers:
        m.close()


@pytest.mark.parametrize(
    ("saved_world", "new_world", "saved_workers", "new_workers"),
    [(2, 1, 0, 0), (1, 2, 0, 0), (1, 1, 0, 2), (2, 1, 2, 0)],
)
@pytest.mark.parametrize("k", [0, 5, 12, 17])  # start, mid-prefetch, epoch end, next epoch
def test_map_style_loaders_resume_under_another_layout(
    saved_world, new_world, saved_workers, new_workers, k
) -> None:
    reference = _steps([_manager(r, saved_world) for r in range(saved_world)], STEPS)
    first = [_manager(r, saved_world, saved_workers, snapshot_every=4) for r in range(saved_world)]
    assert _steps(first, k) == reference[:k]
    states = [copy.deepcopy(m.state_dict()) for m in first]
    _close(first)
    resumed = [_manager(r, new_world, new_workers) for r in range(new_world)]
    for m in resumed:
        m.load_state_dict(copy.deepcopy(states[0]))  # the trainer hands every new rank rank 0's
    try:
        assert _steps(resumed, STEPS - k) == reference[k:]
    finally:
        _close(resumed)


def test_the_same_layout_still_takes_the_exact_path() -> None:
    reference = _steps([_manager(0, 1)], STEPS)
    first = [_manager(0, 1)]
    _steps(first, 7)
    state = first[0].state_dict()
    resumed = _manager(0, 1)
    resumed.load_state_dict(state)
    assert _steps([resumed], STEPS - 7) == reference[7:]


def _mixed(workers: int) -> DataLoaderManager:
    loaders = [
        make_loader(Ids(16), batch_size=4, shuffle=True, seed=1),
        make_loader(CountingStream(16, 1000), batch_size=4, num_workers=workers),
    ]
    names = ["ids", "stream"]
    return DataLoaderManager(loaders, train_config=MultiDataLoaderConfig(dataloader_names=names))


def _state_after(steps: int) -> dict:
    m = _mixed(0)
    it = m.create_epoch_iterator("train")
    for _ in range(steps):
        next(it)
    return copy.deepcopy(m.state_dict())


def test_an_iterable_under_another_world_size_is_refused_naming_both_and_the_option() -> None:
    state = _state_after(6)  # sequential: ids done (4 batches), 2 of the stream's drawn
    fingerprint = state["train_iterator_state"]["fingerprint"]
    fingerprint["world_sizes"], fingerprint["batch_sizes"] = [1, 2], [4, 2]  # 2 ranks, batch 2
    with pytest.raises(
        IncompatibleStateError,
        match=r"cannot resume the train loaders \['stream'\] under another layout \('stream': "
        r"saved world size 2, num_workers 0, current world size 1, num_workers 0\).*"
        r"restart_incompatible_sources=True",
    ):
        _mixed(0).load_state_dict(state)


def test_an_iterable_under_another_worker_count_is_refused_or_restarted(caplog) -> None:
    state = _state_after(6)
    with pytest.raises(IncompatibleStateError, match=r"saved world size 1, num_workers 0, current "
                       r"world size 1, num_workers 2"):  # fmt: skip
        _mixed(2).load_state_dict(copy.deepcopy(state))
    m = _mixed(2)
    with caplog.at_level(logging.WARNING, logger="statefuldata"):
        m.load_state_dict(state, restart_incompatible_sources=True)
    assert "Restarting the current pass of the train loaders ['stream']" in caplog.text
    try:
        rest = [(i, b.tolist()) for i, _, b in m.create_epoch_iterator("train")]
    finally:
        m.close()
    # The stream's pass starts over (its first two batches come again); the schedule goes on.
    assert [i for i, _ in rest] == [1, 1]
    assert sorted(x for _, b in rest for x in b) == list(range(1000, 1008))


def test_another_global_batch_size_is_refused() -> None:
    first = _manager(0, 2)
    _steps([first], 3)
    state = first.state_dict()
    other = DataLoaderManager(
        [
            make_loader(Ids(24), batch_size=2, shuffle=True, seed=1),
            make_loader(Ids(16, 1000), batch_size=2, shuffle=True, seed=2),
            make_loader(Ids(8, 2000), batch_size=2),
        ],
        train_config=CONFIG,
    )
    with pytest.raises(
        IncompatibleStateError, match=r"'global_batch_sizes': \{'saved': \[4, 4, 4\]"
    ):
        other.load_state_dict(state)


def _legacy(state: dict, rank: int, world: int) -> dict:
    """``state`` as written before elastic resume: per-rank sampler positions, no world sizes."""
    old = copy.deepcopy(state)
    iterator = old["train_iterator_state"]
    del iterator["fingerprint"]["world_sizes"]
    for entry in iterator["loader_states"]:
        sampler = entry["sampler_state"]
        saved_world = sampler.pop("world_size")
        sampler["position"] //= saved_world
        sampler["fingerprint"].update(rank=rank, world_size=world)
    return old


@pytest.mark.parametrize("k", [5, 12])
def test_a_state_written_before_elastic_resume_still_loads_at_its_world_size(k) -> None:
    reference = _steps([_manager(r, 2) for r in range(2)], STEPS)
    first = [_manager(r, 2) for r in range(2)]
    _steps(first, k)
    resumed = [_manager(r, 2) for r in range(2)]
    for r, (m, old) in enumerate(zip(resumed, first)):
        m.load_state_dict(_legacy(old.state_dict(), r, 2))
    assert _steps(resumed, STEPS - k) == reference[k:]
    # Without world sizes in it, another world size shows as another (per-rank) batch size.
    with pytest.raises(IncompatibleStateError, match=r"'batch_sizes': \{'saved': \[2, 2, 2\]"):
        _manager(0, 1).load_state_dict(_legacy(first[0].state_dict(), 0, 2))
