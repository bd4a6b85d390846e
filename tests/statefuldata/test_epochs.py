"""current_epoch() in every worker, set_epoch forwarded per pass, and set_epoch on manager phases."""

from __future__ import annotations

import logging

import pytest
import torch

from statefuldata import (
    DataLoaderManager,
    MultiDataLoaderConfig,
    current_epoch,
    make_loader,
)
from tests.data import CountingStream, Ids, PlainStream


class EpochTagged(Ids):
    """Map-style: item i is (i, current_epoch(), a draw from the worker's global torch RNG)."""

    def __getitem__(self, index):
        return index, current_epoch(), torch.randint(0, 2**31, ()).item()


class EpochAwareStream(CountingStream):
    """Iterable with ``set_epoch``: each item is (id, epoch given by set_epoch, current_epoch())."""

    def __init__(self, n: int) -> None:
        super().__init__(n)
        self.epoch = -1

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _generate(self):
        for item in super()._generate():
            yield item, self.epoch, current_epoch()


class PlainEpochStream(PlainStream):
    """Iterable with ``set_epoch`` but no state (skip fallback): items are (id, epoch)."""

    epoch = -1

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        for item in super().__iter__():
            yield item, self.epoch


def _passes(loader, count):
    return [[tuple(t.tolist() for t in batch) for batch in loader] for _ in range(count)]


@pytest.mark.parametrize(
    ("num_workers", "persistent"),
    [
        (0, False),
        pytest.param(2, False, marks=pytest.mark.slow),
        pytest.param(2, True, marks=pytest.mark.slow),
    ],
)
def test_current_epoch_and_worker_rng_follow_every_pass(num_workers: int, persistent: bool) -> None:
    loader = make_loader(
        EpochTagged(8),
        batch_size=2,
        shuffle=True,
        seed=3,
        num_workers=num_workers,
        persistent_workers=persistent,
    )
    passes = _passes(loader, 3)
    for epoch, batches in enumerate(passes):
        assert sorted(i for ids, _, _ in batches for i in ids) == list(range(8))
        assert {e for _, epochs, _ in batches for e in epochs} == {epoch}
    assert loader.epoch == 2
    if num_workers:
        # persistent workers are reseeded per pass exactly as fresh workers are seeded at start-up
        fresh = make_loader(EpochTagged(8), batch_size=2, shuffle=True, seed=3, num_workers=2)
        assert _passes(fresh, 3) == passes
        assert passes[0] != passes[1]


@pytest.mark.slow
def test_persistent_workers_resume_at_an_epoch_boundary_with_that_epochs_rng() -> None:
    def build():
        return make_loader(
            EpochTagged(8),
            batch_size=2,
            shuffle=True,
            seed=3,
            num_workers=2,
            persistent_workers=True,
        )

    reference = _passes(build(), 3)
    loader = build()
    first = _passes(loader, 1)
    state = loader.state_dict()
    resumed = build()
    resumed.load_state_dict(state)
    assert first + _passes(resumed, 2) == reference
    assert resumed.epoch == 2


@pytest.mark.parametrize(
    ("num_workers", "persistent"),
    [
        (0, False),
        pytest.param(2, False, marks=pytest.mark.slow),
        pytest.param(2, True, marks=pytest.mark.slow),
    ],
)
def test_set_epoch_is_forwarded_to_the_dataset_in_every_worker_before_each_pass(
    num_workers: int, persistent: bool
) -> None:
    loader = make_loader(
        EpochAwareStream(8), batch_size=2, num_workers=num_workers, persistent_workers=persistent
    )
    for epoch, batches in enumerate(_passes(loader, 3)):
        assert sorted(i for ids, _, _ in batches for i in ids) == list(range(8))
        assert {e for _, given, reported in batches for e in given + reported} == {epoch}


@pytest.mark.parametrize("num_workers", [0, pytest.param(2, marks=pytest.mark.slow)])
def test_set_epoch_reaches_a_stream_behind_the_skip_fallback(num_workers: int) -> None:
    loader = make_loader(PlainEpochStream(6), batch_size=2, num_workers=num_workers)
    for epoch, batches in enumerate(_passes(loader, 3)):
        assert sorted(i for ids, _ in batches for i in ids) == list(range(6))
        assert {e for _, given in batches for e in given} == {epoch}


def test_current_epoch_outside_a_pass_is_an_error() -> None:
    with pytest.raises(RuntimeError, match=r"current_epoch\(\) is only known while a pass"):
        current_epoch()


def _manager(num_workers: int = 0) -> DataLoaderManager:
    return DataLoaderManager(
        [
            make_loader(Ids(8), batch_size=2, shuffle=True, seed=1, num_workers=num_workers),
            make_loader(Ids(6, offset=100), batch_size=2, shuffle=True, seed=2),
        ],
        train_config=MultiDataLoaderConfig(
            sampling_strategy="weighted_random", dataloader_weights=[0.5, 0.5], choice_rng_seed=3
        ),
    )


def _epoch(iterator) -> tuple[int, list[tuple[int, list[int]]]]:
    return iterator.epoch, [(i, batch.tolist()) for i, _, batch in iterator]


def test_phase_loader_set_epoch_picks_the_next_epoch_and_spares_the_one_in_flight() -> None:
    reference = _manager().as_loader()
    ref = [_epoch(iter(reference)) for _ in range(2)]
    loader = _manager().as_loader()
    assert _epoch(iter(loader)) == ref[0]
    iterator = iter(loader)
    head = [(i, b.tolist()) for i, _, b in (next(iterator), next(iterator))]
    loader.set_epoch(5)  # in flight: epoch 1 goes on untouched
    assert (iterator.epoch, head + _epoch(iterator)[1]) == ref[1]
    assert [iter(loader).epoch for _ in range(2)] == [5, 6]


def test_phase_loader_set_epoch_keeps_a_loaded_position(caplog) -> None:
    first = _manager().as_loader()
    list(iter(first))
    iterator = iter(first)
    for _ in range(3):
        next(iterator)
    state = first.state_dict()
    rest = _epoch(iterator)
    for requested in (1, 0):
        resumed = _manager().as_loader()
        resumed.load_state_dict(state)
        with caplog.at_level(logging.WARNING, logger="statefuldata.manager"):
            resumed.set_epoch(requested)
            assert _epoch(iter(resumed)) == rest
    assert (
        "set_epoch(0) ignored for train: the loaded state resumes epoch 1 at step 3" in caplog.text
    )
    with pytest.raises(ValueError, match=r"'epoch' must be an int >= 0 \(got -1\)"):
        resumed.set_epoch(-1)
