from __future__ import annotations

import io
import itertools
import logging

import pytest
import torch
from torch.utils.data import DataLoader

from statefuldata import (
    DataLoaderManager,
    EpochLengthPolicy,
    IncompatibleStateError,
    MultiDataLoaderConfig,
    SamplingStrategy,
    make_loader,
    verify_resume,
)
from statefuldata.torchdata_state import installed_batch_sampler_key
from tests.data import CountingStream, Ids, PlainStream, UnsizedStream

STRATEGIES = list(SamplingStrategy)
POLICIES = list(EpochLengthPolicy)


def config_for(
    strategy: SamplingStrategy, policy: EpochLengthPolicy, **extra
) -> MultiDataLoaderConfig:
    return MultiDataLoaderConfig(
        sampling_strategy=strategy,
        dataloader_weights=[0.5, 0.3, 0.2] if strategy.value.startswith("weighted") else None,
        alternating_pattern=[0, 1, 0, 2] if strategy is SamplingStrategy.ALTERNATING else None,
        dataloader_names=["map", "protocol", "fallback"],
        epoch_length_policy=policy,
        steps_per_epoch=12 if policy is EpochLengthPolicy.FIXED_NUM_STEPS else None,
        choice_rng_seed=3,
        **extra,
    )


def three_loaders(num_workers: int) -> list:
    """Map-style (5 batches, shuffled), protocol iterable (ids 100.., 7 batches), fallback (ids 200.., 3)."""
    return [
        make_loader(Ids(10), batch_size=2, shuffle=True, seed=1, num_workers=num_workers),
        make_loader(CountingStream(14, offset=100), batch_size=2, num_workers=num_workers),
        make_loader(PlainStream(6, offset=200), batch_size=2, num_workers=num_workers),
    ]


def manager_factory(strategy, policy, num_workers, **extra):
    return lambda: DataLoaderManager(
        three_loaders(num_workers), train_config=config_for(strategy, policy, **extra)
    )


@pytest.mark.parametrize("policy", POLICIES, ids=lambda p: p.value)
@pytest.mark.parametrize("strategy", STRATEGIES, ids=lambda s: s.value)
def test_resume_at_every_batch_equals_uninterrupted(strategy, policy) -> None:
    factory = manager_factory(strategy, policy, 0)
    total = 2 * factory().epoch_length("train")
    report = verify_resume(lambda: factory().as_loader("train"), epochs=2, points=range(total + 1))
    assert report.ok, report.first_mismatch
    assert report.total_batches == total
    assert report.total_batches > 0


# Worker processes make every point cost seconds, so each strategy runs under one policy (every
# policy is covered; SEQUENTIAL, the simplest, only there) at points inside the prefetch window (2 workers x prefetch 2) and around the
# epoch boundary; the single-process test above covers every point of every combination.
WORKER_CASES = [
    (SamplingStrategy.ROUND_ROBIN, EpochLengthPolicy.MAX_OF_LENGTHS),
    (SamplingStrategy.WEIGHTED, EpochLengthPolicy.FIXED_NUM_STEPS),
    (SamplingStrategy.WEIGHTED_RANDOM, EpochLengthPolicy.MIN_OF_LENGTHS),
    (SamplingStrategy.ALTERNATING, EpochLengthPolicy.SUM_OF_LENGTHS),
]


@pytest.mark.slow
@pytest.mark.parametrize(("strategy", "policy"), WORKER_CASES, ids=lambda v: v.value)
def test_resume_with_two_workers_mid_prefetch_and_across_epochs(strategy, policy) -> None:
    factory = manager_factory(strategy, policy, 2)
    total = factory().epoch_length("train")
    points = sorted({0, 2, 5, total - 1, total, total + 2})
    report = verify_resume(lambda: factory().as_loader("train"), epochs=2, points=points)
    assert report.ok, report.first_mismatch


def test_without_cycling_every_strategy_still_resumes_exactly() -> None:
    for strategy in STRATEGIES:
        factory = manager_factory(
            strategy, EpochLengthPolicy.MAX_OF_LENGTHS, 0, cycle_short_loaders=False
        )
        report = verify_resume(lambda f=factory: f().as_loader("train"), epochs=2)
        assert report.ok, (strategy, report.first_mismatch)


def run_epoch(manager, epoch, phase="train"):
    return [
        (name, batch.tolist()) for _, name, batch in manager.create_epoch_iterator(phase, epoch)
    ]


def test_checkpoint_at_last_batch_resumes_into_next_epoch() -> None:
    factory = manager_factory(SamplingStrategy.WEIGHTED, EpochLengthPolicy.SUM_OF_LENGTHS, 0)
    reference = factory()
    run_epoch(reference, 0)
    next_epoch = run_epoch(reference, 1)
    first = factory()
    list(first.create_epoch_iterator("train", 0))
    state = first.state_dict()
    assert state["train_iterator_state"]["epoch"] == 0
    resumed = factory()
    resumed.load_state_dict(state)
    assert run_epoch(resumed, 1) == next_epoch
    again = factory()
    again.load_state_dict(state)
    with pytest.raises(
        IncompatibleStateError, match=r"at step 15 of 15 in epoch 0; it cannot start epoch 2"
    ):
        again.create_epoch_iterator("train", 2)


def test_sequential_long_max_epoch_has_no_recursion() -> None:
    config = MultiDataLoaderConfig(epoch_length_policy="max_of_lengths")
    manager = DataLoaderManager([make_loader(Ids(5)), make_loader(Ids(2000))], train_config=config)
    batches = list(manager.create_epoch_iterator("train", 0))
    assert len(batches) == 4000
    report = manager.proportions()
    assert [r["batches"] for r in report] == [2000, 2000]
    assert report[0]["cycles"] == 399 and report[1]["cycles"] == 0


def test_weighted_cycling_short_loader_restarts_with_fresh_order() -> None:
    config = MultiDataLoaderConfig(
        sampling_strategy="weighted",
        dataloader_weights=[0.5, 0.5],
        epoch_length_policy="fixed_num_steps",
        steps_per_epoch=20,
    )
    short = make_loader(Ids(4), batch_size=2, shuffle=True, seed=5)
    manager = DataLoaderManager([short, make_loader(Ids(10))], train_config=config)
    out = [(i, b.tolist()) for i, _, b in manager.create_epoch_iterator("train", 0)]
    short_batches = [b for i, b in out if i == 0]
    assert len(short_batches) == 10 and sum(1 for i, _ in out if i == 1) == 10
    assert manager.proportions()[0]["cycles"] == 4
    passes = [tuple(itertools.chain(*short_batches[p : p + 2])) for p in range(0, 10, 2)]
    assert all(sorted(p) == [0, 1, 2, 3] for p in passes)
    assert len(set(passes)) > 1  # each pass gets a fresh order
    state = manager.state_dict()["train_iterator_state"]
    assert state["loader_cycles"] == {0: 4, 1: 0} and state["total_batches"] == 20


def test_without_cycling_short_loader_yields_exactly_its_batches() -> None:
    config = MultiDataLoaderConfig(
        sampling_strategy="weighted",
        dataloader_weights=[0.5, 0.5],
        epoch_length_policy="fixed_num_steps",
        steps_per_epoch=20,
        cycle_short_loaders=False,
    )
    manager = DataLoaderManager(
        [make_loader(Ids(4), batch_size=2), make_loader(Ids(10))], train_config=config
    )
    out = [i for i, _, _ in manager.create_epoch_iterator("train", 0)]
    assert out.count(0) == 2 and out.count(1) == 10
    state = manager.state_dict()["train_iterator_state"]
    assert state["loader_states"][0]["exhausted"] is True


def test_infinite_loader_needs_fixed_steps() -> None:
    fixed = MultiDataLoaderConfig(epoch_length_policy="fixed_num_steps", steps_per_epoch=7)
    manager = DataLoaderManager(
        [make_loader(UnsizedStream(1000), batch_size=3)], train_config=fixed
    )
    assert len(list(manager.create_epoch_iterator("train", 0))) == 7
    with pytest.raises(
        ValueError, match=r"has no length .* use epoch_length_policy='fixed_num_steps'"
    ):
        DataLoaderManager([make_loader(UnsizedStream(10))])


def test_fingerprint_mismatch_prints_both_and_names_override() -> None:
    a = DataLoaderManager([make_loader(Ids(10), batch_size=2)])
    list(a.create_epoch_iterator("train", 0))
    b = DataLoaderManager([make_loader(Ids(10), batch_size=5)])
    with pytest.raises(
        IncompatibleStateError,
        match=r"'batch_sizes': \{'saved': \[2\], 'current': \[5\]\}.*strict=False",
    ):
        b.load_state_dict(a.state_dict())


def test_state_is_small_and_loads_weights_only() -> None:
    def state_bytes(n: int) -> tuple[int, dict]:
        manager = DataLoaderManager(
            [
                make_loader(Ids(n), batch_size=4, shuffle=True),
                make_loader(PlainStream(50), batch_size=4),
            ],
            train_config=MultiDataLoaderConfig(
                epoch_length_policy="fixed_num_steps", steps_per_epoch=6
            ),
        )
        it = manager.create_epoch_iterator("train", 0)
        next(it), next(it), next(it)
        buf = io.BytesIO()
        torch.save(manager.state_dict(), buf)
        buf.seek(0)
        return buf.getbuffer().nbytes, torch.load(buf, weights_only=True)

    small, state = state_bytes(10**3)
    large, _ = state_bytes(10**8)
    assert large < 16 * 1024 * 2  # two loaders
    assert abs(small - large) <= 64
    assert set(state) == {
        "choice_rng_state",
        "choice_rng",
        "train_iterator_state",
        "val_iterator_state",
    }
    loader_state = state["train_iterator_state"]["loader_states"][0]
    assert set(loader_state) == {
        "batch_idx",
        "exhausted",
        "sampler_state",
        "dataset_state",
        "loader_state",
    }
    assert (
        loader_state["sampler_state"]["position"] > 0
    )  # moved out of the loader state, not copied
    batch_sampler = loader_state["loader_state"][installed_batch_sampler_key()]
    assert "sampler_state" not in batch_sampler


def test_weighted_random_choice_rng_is_restored_from_the_state() -> None:
    factory = manager_factory(
        SamplingStrategy.WEIGHTED_RANDOM, EpochLengthPolicy.FIXED_NUM_STEPS, 0
    )
    manager = factory()
    it = manager.create_epoch_iterator("train", 0)
    next(it)
    state = manager.state_dict()
    assert state["choice_rng"][0] == "MT19937" and state["choice_rng_state"]["epoch"] == 0
    # a different rng state in the file changes the restored schedule: it is really used
    other = factory()
    other_state = {**state, "choice_rng": factory().state_dict()["choice_rng"]}
    other_it = other.create_epoch_iterator("train", 5)
    other_state["choice_rng"] = other.state_dict()["choice_rng"]
    resumed = factory()
    resumed.load_state_dict(other_state)
    assert resumed.create_epoch_iterator("train", 0).schedule == other_it.schedule


def test_plain_dataloader_goes_through_skip_fallback_with_one_warning(caplog) -> None:
    def build():
        return DataLoaderManager(
            [DataLoader(list(range(12)), batch_size=2), make_loader(Ids(4), batch_size=2)]
        )

    report = verify_resume(lambda: build().as_loader(), epochs=2)
    assert report.ok, report.first_mismatch
    manager = build()
    it = manager.create_epoch_iterator("train", 0)
    for _ in range(3):
        next(it)
    resumed = build()
    resumed.load_state_dict(manager.state_dict())
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="statefuldata.adapters"):
        list(resumed.create_epoch_iterator("train", 0))
    warnings = [r for r in caplog.records if r.name == "statefuldata.adapters"]
    assert len(warnings) == 1 and "discarding 3 batches" in warnings[0].getMessage()
    assert "statefuldata.make_loader" in warnings[0].getMessage()


def test_proportions_report() -> None:
    config = MultiDataLoaderConfig(
        sampling_strategy="weighted",
        dataloader_weights=[0.75, 0.25],
        epoch_length_policy="fixed_num_steps",
        steps_per_epoch=8,
    )
    manager = DataLoaderManager(
        [make_loader(Ids(40), batch_size=4), make_loader(Ids(40), batch_size=2)],
        train_config=config,
    )
    list(manager.create_epoch_iterator("train", 0))
    report = manager.proportions()
    assert [(r["batches"], r["samples"]) for r in report] == [(6, 24), (2, 4)]
    assert (
        [r["expected_share"] for r in report] == [0.75, 0.25] == [r["actual_share"] for r in report]
    )


def test_val_phase_and_bad_phase() -> None:
    manager = DataLoaderManager([make_loader(Ids(4))], [make_loader(Ids(3)), make_loader(Ids(2))])
    assert [name for _, name, _ in manager.create_epoch_iterator("val", 0)] == ["val_0"] * 3 + [
        "val_1"
    ] * 2
    with pytest.raises(ValueError, match=r"phase must be one of \['train', 'val'\] \(got 'test'\)"):
        manager.create_epoch_iterator("test")
    with pytest.raises(ValueError, match="no val loaders were given"):
        DataLoaderManager([make_loader(Ids(4))]).create_epoch_iterator("val")
    with pytest.raises(
        ValueError, match=r"train_loaders must be a non-empty list of loaders \(got \[\]\)"
    ):
        DataLoaderManager([])


def test_load_state_supersedes_live_epoch_iterator() -> None:
    manager = DataLoaderManager([make_loader(Ids(6), batch_size=2)])
    it = manager.create_epoch_iterator("train", 0)
    next(it)
    manager.load_state_dict(manager.state_dict())
    with pytest.raises(RuntimeError, match="superseded by load_state_dict"):
        next(it)


def _workers() -> set[int]:
    import multiprocessing

    return {p.pid for p in multiprocessing.active_children()}


def test_leaving_the_with_block_stops_the_workers_of_a_pass_left_mid_epoch() -> None:
    before = _workers()
    with DataLoaderManager(
        [make_loader(Ids(40), batch_size=4, shuffle=True, seed=0, num_workers=2)]
    ) as manager:
        _, _, batch = next(iter(manager.create_epoch_iterator("train", 0)))
        first = batch.tolist()
        assert len(_workers() - before) == 2  # the pass's workers are alive mid-epoch
    assert _workers() - before == set()
    assert len(first) == 4
    # The manager stays usable: the next epoch starts a fresh pass (with new workers).
    again = [b.tolist() for _, _, b in manager.create_epoch_iterator("train", 1)]
    assert sorted(i for b in again for i in b) == list(range(40))
    manager.close()
    assert _workers() - before == set()
