"""The epoch iterator, its cursors and its phase group: each restores itself through one method."""

from __future__ import annotations

import pytest

from statefuldata import (
    DataLoaderManager,
    IncompatibleStateError,
    MultiDataLoaderConfig,
    Phase,
    make_loader,
)
from statefuldata.cursor import Cursor
from statefuldata.epoch import EpochIterator
from statefuldata.group import PhaseGroup
from tests.data import CountingStream, Ids, PlainStream

CONFIG = MultiDataLoaderConfig(
    sampling_strategy="weighted",
    dataloader_weights=[0.5, 0.3, 0.2],
    dataloader_names=["a", "b", "c"],
)


def _loaders(num_workers: int = 0) -> list:
    return [
        make_loader(Ids(10), batch_size=2, shuffle=True, seed=1, num_workers=num_workers),
        make_loader(CountingStream(8, offset=100), batch_size=2, num_workers=num_workers),
        make_loader(PlainStream(4, offset=200), batch_size=2, num_workers=num_workers),
    ]


def _group(num_workers: int = 0) -> PhaseGroup:
    return PhaseGroup(Phase.TRAIN, _loaders(num_workers), CONFIG)


def _ids(iterator: EpochIterator, steps: int | None = None) -> list:
    out = []
    for i, (_, name, batch) in enumerate(iterator):
        out.append((name, batch.tolist()))
        if steps is not None and i + 1 == steps:
            break
    return out


def _resume_equals_uninterrupted(num_workers: int, points: list[int]) -> None:
    reference_group = _group(num_workers)
    reference = _ids(reference_group.create_iterator(0)) + _ids(reference_group.create_iterator(1))
    for k in points:
        group = _group(num_workers)
        first = group.create_iterator(0)
        head = _ids(first, k) if k else []
        if k > len(head):  # the point lies in epoch 1
            head += _ids(group.create_iterator(1), k - len(head))
        saved = group.state_dict()
        assert saved is not None
        resumed = _group(num_workers)
        resumed.load_state_dict(saved)
        iterator = resumed.create_iterator()
        rest = _ids(iterator)
        if iterator.epoch == 0:
            rest += _ids(resumed.create_iterator(1))
        assert head + rest == reference, f"resume at step {k}"
        for g in (group, resumed):
            for cursor in g.cursors:
                cursor.drop_pass()
    for cursor in reference_group.cursors:
        cursor.drop_pass()


def test_group_resume_equals_uninterrupted_at_every_step_and_across_the_epoch() -> None:
    total = _group().plan.total
    assert total == 11
    _resume_equals_uninterrupted(0, list(range(2 * total + 1)))


@pytest.mark.slow
def test_group_resume_with_two_workers_mid_prefetch_and_at_the_epoch_boundary() -> None:
    _resume_equals_uninterrupted(2, [1, 3, 10, 11, 12])


def test_epoch_iterator_load_state_dict_restores_its_own_counts() -> None:
    group = _group()
    iterator = group.create_iterator(0)
    _ids(iterator, 5)
    state = iterator.state_dict()
    fresh = EpochIterator(group.plan, group.cursors, 0, None)
    fresh.load_state_dict(state)
    assert (fresh.position, fresh.total_batches) == (5, 5)
    assert (fresh.loader_batches, fresh.loader_samples) == (
        state["loader_batches"],
        state["loader_samples"],
    )
    with pytest.raises(ValueError, match=r"walks epoch 1 \(got a state of epoch 0\)"):
        EpochIterator(group.plan, group.cursors, 1, None).load_state_dict(state)


def test_a_retired_iterator_raises_and_a_newer_one_retires_it() -> None:
    group = _group()
    first = group.create_iterator(0)
    next(first)
    second = group.create_iterator(0)
    with pytest.raises(RuntimeError, match=r"superseded by load_state_dict\(\) or a newer"):
        next(first)
    next(second)
    group.load_state_dict(second.state_dict())
    with pytest.raises(RuntimeError, match="superseded"):
        next(second)


def test_cursor_state_round_trip_continues_the_loader() -> None:
    cursor = Cursor(make_loader(Ids(10), batch_size=2, shuffle=True, seed=3))
    iterator = cursor.start_pass()
    next(iterator), next(iterator)
    cursor.batch_idx = 2
    state = cursor.state_dict()
    expected = [b.tolist() for b in iterator]
    other = Cursor(make_loader(Ids(10), batch_size=2, shuffle=True, seed=3))
    other.load_state_dict(state)
    assert (other.batch_idx, other.exhausted, other.iterator) == (2, False, None)
    assert [b.tolist() for b in other.start_pass()] == expected


def test_loading_an_unfinished_state_refuses_another_epoch() -> None:
    group = _group()
    _ids(group.create_iterator(0), 4)
    state = group.state_dict()
    assert state is not None
    resumed = _group()
    resumed.load_state_dict(state)
    with pytest.raises(
        IncompatibleStateError, match=r"at step 4 of 11 in epoch 0; it cannot start"
    ):
        resumed.create_iterator(1)


def test_phase_accepts_members_and_values_alike() -> None:
    assert Phase.of("val") is Phase.VAL is Phase.of(Phase.VAL)
    assert Phase.TRAIN.state_key == "train_iterator_state"
    with pytest.raises(
        ValueError, match=r"phase must be one of \['train', 'val'\] \(got 'TRAIN'\)"
    ):
        Phase.of("TRAIN")
    manager = DataLoaderManager([make_loader(Ids(4))], [make_loader(Ids(2))])
    by_value = [b.tolist() for _, _, b in manager.create_epoch_iterator("val", 0)]
    by_member = [b.tolist() for _, _, b in manager.create_epoch_iterator(Phase.VAL, 0)]
    assert by_value == by_member == [[0], [1]]
    assert manager.names(Phase.VAL) == manager.names("val") == ("val_0",)


def test_proportions_report_counts_draws_against_the_schedules_expected_shares() -> None:
    from statefuldata.schedule import expected_shares

    config = MultiDataLoaderConfig(
        sampling_strategy="weighted_random",
        dataloader_weights=[0.1, 0.2],
        epoch_length_policy="fixed_num_steps",
        steps_per_epoch=30,
    )
    manager = DataLoaderManager([make_loader(Ids(6)), make_loader(Ids(6))], train_config=config)
    drawn = [index for index, _, _ in manager.create_epoch_iterator("train", 0)]
    report = manager.proportions()
    assert [r["expected_share"] for r in report] == expected_shares(config, [6, 6], 30)
    assert [r["expected_share"] for r in report] == [1 / 3, 2 / 3]
    assert [r["batches"] for r in report] == [drawn.count(0), drawn.count(1)]
    assert [r["actual_share"] for r in report] == [drawn.count(0) / 30, drawn.count(1) / 30]
    assert [r["loader"] for r in report] == ["train_0", "train_1"]
