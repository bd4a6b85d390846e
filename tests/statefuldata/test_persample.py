"""Per-sample seeding: augmentations from the global RNGs survive resumes, worker counts and ranks."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from torch.utils.data import Dataset

from statefuldata import (
    Difference,
    IncompatibleStateError,
    LoaderSpec,
    ResumeMismatchError,
    current_epoch,
    make_loader,
    sample_rng,
    seeded_call,
    verify_resume,
)
from tests.data import CountingStream, PlainStream, _shard


def augment(sample_id: int) -> dict[str, torch.Tensor | int]:
    """A stand-in for torchvision-style transforms: draws from torch, numpy and random."""
    crop = torch.rand(2, dtype=torch.float64)
    flip = torch.from_numpy(np.random.rand(2))
    jitter = torch.tensor([random.random(), random.gauss(0.0, 1.0)], dtype=torch.float64)
    return {"id": sample_id, "x": torch.cat([crop, flip, jitter])}


class Augmented(Dataset):
    """Map-style: item i is ``augment(i)``."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int):
        return augment(index)


class AugmentedStream(CountingStream):
    """A checkpointable stream of ``augment(id)``; tells the global index of its next item."""

    def _generate(self):
        return (augment(i) for i in super()._generate())

    def next_sample_index(self) -> int:
        worker, workers = _shard()
        return worker + self._position * workers


class PlainAugmentedStream(PlainStream):
    def __iter__(self):
        return (augment(i) for i in super().__iter__())


def loader(dataset, *, per_sample_seed: bool = True, num_workers: int = 0, **kwargs):
    defaults = {"batch_size": 3, "seed": 5}
    return make_loader(
        dataset,
        per_sample_seed=per_sample_seed,
        num_workers=num_workers,
        **{**defaults, **kwargs},
    )


def values_by_id(dl, epochs: int = 2) -> list[dict[int, torch.Tensor]]:
    return [
        {int(i): x for batch in dl for i, x in zip(batch["id"], batch["x"])} for _ in range(epochs)
    ]


# Several points: the start, mid-prefetch (2 workers x prefetch 2), just before, at and after the
# epoch boundary (7 batches per epoch), and the next epoch.
POINTS = [0, 1, 3, 6, 7, 8, 11]


@pytest.mark.parametrize(
    ("num_workers", "persistent"),
    [
        (0, False),
        pytest.param(2, False, marks=pytest.mark.slow),
        pytest.param(2, True, marks=pytest.mark.slow),
    ],
)
def test_map_augmentations_are_bit_identical_after_resumes(num_workers, persistent) -> None:
    def factory():
        return loader(
            Augmented(20), shuffle=True, num_workers=num_workers, persistent_workers=persistent
        )

    report = verify_resume(factory, points=POINTS, epochs=2)
    assert report.ok, report.first_mismatch


@pytest.mark.parametrize("num_workers", [0, pytest.param(2, marks=pytest.mark.slow)])
def test_verify_resume_fails_without_the_option_and_names_it(num_workers: int) -> None:
    def factory():
        return loader(Augmented(20), shuffle=True, per_sample_seed=False, num_workers=num_workers)

    report = verify_resume(factory, points=POINTS, epochs=2)
    assert not report.ok
    mismatch = report.first_mismatch
    assert mismatch.difference is Difference.VALUES
    assert mismatch.expected["id"].tolist() == mismatch.got["id"].tolist()
    assert "per_sample_seed=True" in mismatch.suggestion
    with pytest.raises(
        ResumeMismatchError, match=r"Fix: .*pass per_sample_seed=True to make_loader"
    ):
        verify_resume(factory, points=POINTS, epochs=2, raise_on_mismatch=True)


@pytest.mark.slow
def test_values_equal_between_0_and_2_workers_and_differ_between_epochs() -> None:
    without = values_by_id(loader(Augmented(12), shuffle=True))
    with_workers = values_by_id(loader(Augmented(12), shuffle=True, num_workers=2))
    for a, b in zip(without, with_workers):
        assert a.keys() == b.keys() == set(range(12))
        assert all(torch.equal(a[i], b[i]) for i in a)
    assert all(not torch.equal(without[0][i], without[1][i]) for i in range(12))


def test_values_are_identical_across_rank_layouts() -> None:
    single = values_by_id(loader(Augmented(12), shuffle=True))
    ranks = [
        values_by_id(loader(Augmented(12), shuffle=True, rank=r, world_size=2)) for r in (0, 1)
    ]
    for epoch, reference in enumerate(single):
        merged = {**ranks[0][epoch], **ranks[1][epoch]}
        assert merged.keys() == reference.keys()
        assert all(torch.equal(merged[i], reference[i]) for i in reference)


def test_the_caller_rng_states_are_restored() -> None:
    def states():
        return random.getstate(), np.random.get_state()[1].tolist(), torch.get_rng_state()

    def consume(per_sample_seed: bool):
        random.seed(11)
        np.random.seed(11)
        torch.manual_seed(11)
        before = states()
        for _ in loader(Augmented(6), per_sample_seed=per_sample_seed):
            pass
        after = states()
        return before[0] == after[0] and before[1] == after[1] and torch.equal(before[2], after[2])

    assert consume(True)
    assert not consume(False)


def test_seeded_call_is_repeatable_and_restores_on_error() -> None:
    draw = lambda: (random.random(), float(np.random.rand()), torch.rand(1).item())  # noqa: E731
    assert seeded_call(3, draw) == seeded_call(3, draw) != seeded_call(4, draw)
    torch.manual_seed(0)
    expected = torch.rand(1)
    torch.manual_seed(0)

    def fail():
        torch.rand(5)
        raise OSError("transform failed")

    with pytest.raises(OSError, match="transform failed"):
        seeded_call(1, fail)
    assert torch.equal(torch.rand(1), expected)


@pytest.mark.parametrize("num_workers", [0, pytest.param(2, marks=pytest.mark.slow)])
@pytest.mark.parametrize("stream", [AugmentedStream, PlainAugmentedStream])
def test_stream_augmentations_resume_exactly(stream, num_workers: int) -> None:
    report = verify_resume(
        lambda: loader(stream(14), num_workers=num_workers), points=[0, 1, 3, 5, 6, 8], epochs=2
    )
    assert report.ok, report.first_mismatch
    if stream is PlainAugmentedStream and num_workers > 0:
        return  # replayed from the pass start in a freshly seeded worker: exact even unseeded
    unseeded = verify_resume(
        lambda: loader(stream(14), num_workers=num_workers, per_sample_seed=False),
        points=[1, 3],
    )
    assert not unseeded.ok and unseeded.first_mismatch.difference is Difference.VALUES


@pytest.mark.slow
def test_stream_with_a_global_index_is_equal_between_worker_counts() -> None:
    a = values_by_id(loader(AugmentedStream(12)))
    b = values_by_id(loader(AugmentedStream(12), num_workers=2))
    assert a[0].keys() == b[0].keys() == set(range(12))
    assert all(torch.equal(a[e][i], b[e][i]) for e in range(2) for i in range(12))
    assert not torch.equal(a[0][3], a[1][3])


def test_shuffle_buffer_over_an_augmented_stream_resumes_exactly() -> None:
    def factory():
        return loader(PlainAugmentedStream(16), shuffle=True, shuffle_buffer_size=5)

    report = verify_resume(factory, epochs=2, points=[0, 1, 2, 4, 5, 6, 9])
    assert report.ok, report.first_mismatch


class UsesSampleRng(Augmented):
    """The documented alternative: ``sample_rng(seed, current_epoch(), index)``."""

    def __getitem__(self, index: int):
        generator = sample_rng(5, current_epoch(), index)
        return {"id": index, "x": torch.rand(3, generator=generator)}


def test_sample_rng_with_current_epoch_varies_per_epoch_and_resumes() -> None:
    epochs = values_by_id(loader(UsesSampleRng(6), per_sample_seed=False))
    assert all(not torch.equal(epochs[0][i], epochs[1][i]) for i in range(6))
    seeded = values_by_id(loader(Augmented(6)))  # per_sample_seed: torch draws equal sample_rng's
    assert torch.equal(
        seeded[1][4][:2], torch.rand(2, dtype=torch.float64, generator=sample_rng(5, 1, 4))
    )
    report = verify_resume(lambda: loader(UsesSampleRng(6), per_sample_seed=False), epochs=2)
    assert report.ok, report.first_mismatch


def test_spec_field_and_bad_input() -> None:
    spec = LoaderSpec(name="a", dataset=Augmented(6), batch_size=3, per_sample_seed=True)
    assert spec.to_dict()["per_sample_seed"] is True
    assert spec.to_dict()["shuffle_buffer_size"] is None
    built = values_by_id(spec.build(seed=5))
    assert all(
        torch.equal(built[e][i], values_by_id(loader(Augmented(6)))[e][i])
        for e in range(2)
        for i in range(6)
    )
    with pytest.raises(TypeError, match=r"'per_sample_seed' must be <class 'bool'> \(got 1"):
        LoaderSpec(name="a", dataset=Augmented(6), per_sample_seed=1)
    with pytest.raises(ValueError, match=r"'shuffle_buffer_size' must be an int >= 1 \(got 0\)"):
        LoaderSpec(name="a", dataset=PlainStream(6), shuffle=True, shuffle_buffer_size=0)
    with pytest.raises(TypeError, match=r"'per_sample_seed' must be True or False \(got 'yes'\)"):
        make_loader(Augmented(6), per_sample_seed="yes")
    with pytest.raises(
        TypeError, match=r"per_sample_seed keys each sample by non-negative integers"
    ):
        next(iter(make_loader(Augmented(6), sampler=["a", "b"], per_sample_seed=True)))


def test_a_state_without_the_option_is_refused() -> None:
    saved = loader(CountingStream(6), per_sample_seed=False).state_dict()
    resumed = loader(CountingStream(6))
    with pytest.raises(IncompatibleStateError, match=r"saved without per_sample_seed=True"):
        resumed.load_state_dict(saved)
        next(iter(resumed))
