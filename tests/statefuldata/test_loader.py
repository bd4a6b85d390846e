from __future__ import annotations

import io
import logging

import pytest
import torch

from statefuldata import ShuffledSampler, make_loader, verify_resume
from tests.data import AugmentedIds, CountingStream, Ids, PlainStream

SOURCES = {
    "map-sequential": lambda: (Ids(20), {"shuffle": False}),
    "map-shuffled": lambda: (Ids(20), {"shuffle": True}),
    "protocol-iterable": lambda: (CountingStream(20), {}),
    "fallback-iterable": lambda: (PlainStream(20), {}),
}


@pytest.mark.parametrize("num_workers", [0, pytest.param(2, marks=pytest.mark.slow)])
@pytest.mark.parametrize("source", sorted(SOURCES))
def test_resume_equals_uninterrupted_at_every_point(source: str, num_workers: int) -> None:
    def factory():
        dataset, kwargs = SOURCES[source]()
        return make_loader(dataset, batch_size=3, seed=4, num_workers=num_workers, **kwargs)

    report = verify_resume(factory, epochs=2)
    assert report.ok, report.first_mismatch
    assert report.points == tuple(range(report.total_batches + 1))
    assert report.total_batches == (
        2 * 7 if num_workers == 0 or source.startswith("map") else 2 * 8
    )


def test_two_epochs_differ_when_shuffled_and_repeat_when_not() -> None:
    shuffled = make_loader(Ids(12), batch_size=4, shuffle=True)
    assert [b.tolist() for b in shuffled] != [b.tolist() for b in shuffled]
    ordered = make_loader(Ids(12), batch_size=4)
    assert [b.tolist() for b in ordered] == [b.tolist() for b in ordered]


def _state_bytes(n: int) -> int:
    loader = make_loader(Ids(n), batch_size=8, shuffle=True, seed=1)
    next(iter(loader))
    buf = io.BytesIO()
    torch.save(loader.state_dict(), buf)
    return buf.getbuffer().nbytes


def test_state_size_does_not_grow_with_dataset() -> None:
    small, large = _state_bytes(10**3), _state_bytes(10**8)
    assert abs(small - large) <= 64, (small, large)


def test_state_round_trips_weights_only() -> None:
    for dataset in (Ids(10), CountingStream(10), PlainStream(10)):
        loader = make_loader(dataset, batch_size=2)
        it = iter(loader)
        next(it)
        buf = io.BytesIO()
        torch.save(loader.state_dict(), buf)
        buf.seek(0)
        assert torch.load(buf, weights_only=True) == loader.state_dict()


@pytest.mark.parametrize("num_workers", [0, pytest.param(2, marks=pytest.mark.slow)])
def test_sample_rng_augmentation_identical_after_resume_and_across_workers(num_workers) -> None:
    def ids_and_noise(loader, skip=0):
        out = []
        for ids, noise in loader:
            out += list(zip(ids.tolist(), noise.unbind(0)))
        return out

    reference = ids_and_noise(make_loader(AugmentedIds(24), batch_size=4, shuffle=True, seed=2))
    loader = make_loader(
        AugmentedIds(24), batch_size=4, shuffle=True, seed=2, num_workers=num_workers
    )
    it = iter(loader)
    head = []
    for _ in range(3):
        ids, noise = next(it)
        head += list(zip(ids.tolist(), noise.unbind(0)))
    resumed = make_loader(
        AugmentedIds(24), batch_size=4, shuffle=True, seed=2, num_workers=num_workers
    )
    resumed.load_state_dict(loader.state_dict())
    got = head + ids_and_noise(resumed)
    assert [i for i, _ in got] == [i for i, _ in reference]
    assert all(torch.equal(a, b) for (_, a), (_, b) in zip(got, reference))


@pytest.mark.slow
def test_workers_are_seeded_per_epoch_rank_and_worker() -> None:
    class Draw(Ids):
        def __getitem__(self, index):
            return torch.randint(0, 2**31, ()).item()

    def draws(seed, rank=0):
        loader = make_loader(
            Draw(8), batch_size=2, seed=seed, num_workers=2, rank=rank, world_size=2
        )
        return [[b.tolist() for b in loader] for _ in range(2)]

    a = draws(1)
    assert a == draws(1)  # reproducible
    assert a[0] != a[1]  # epochs differ
    assert a != draws(2) and a != draws(1, rank=1)


def test_user_sampler_used_as_is_and_conflicts_are_errors() -> None:
    sampler = ShuffledSampler(10, seed=3)
    loader = make_loader(Ids(10), batch_size=5, sampler=sampler)
    assert loader.sampler is sampler
    with pytest.raises(
        ValueError,
        match=r"pass either shuffle=True or sampler=\.\.\., not both \(got shuffle=True and sampler=ShuffledSampler\)",
    ):
        make_loader(Ids(10), shuffle=True, sampler=sampler)
    with pytest.raises(
        ValueError,
        match=r"shuffle=True on PlainStream, an iterable dataset, needs shuffle_buffer_size=N",
    ):
        make_loader(PlainStream(10), shuffle=True)


def test_stateless_user_sampler_warns(caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="statefuldata.loader"):
        make_loader(Ids(10), sampler=list(range(10)))
    assert "has no state_dict/load_state_dict" in caplog.text


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (
            {"batch_size": 0},
            ValueError,
            r"'batch_size' must be >= 1 \(got 0\); use batch_size=1 or more",
        ),
        ({"batch_size": -2}, ValueError, r"'batch_size' must be >= 1 \(got -2\)"),
        ({"seed": -1}, ValueError, r"'seed' must be >= 0 \(got -1\)"),
        (
            {"rank": 2, "world_size": 2},
            ValueError,
            r"'rank' must be < world_size \(got rank=2, world_size=2\)",
        ),
        ({"num_workers": -1}, ValueError, r"'num_workers' must be >= 0 \(got -1\)"),
        ({"batch_size": "4"}, TypeError, r"'batch_size' must be an int \(got '4'\)"),
    ],
)
def test_bad_input(kwargs, error, match) -> None:
    with pytest.raises(error, match=match):
        make_loader(Ids(10), **kwargs)


@pytest.mark.parametrize("num_workers", [0, pytest.param(2, marks=pytest.mark.slow)])
def test_loading_state_retires_a_live_iterator(num_workers: int) -> None:
    loader = make_loader(Ids(20), batch_size=2, num_workers=num_workers)
    it = iter(loader)
    next(it)
    state = loader.state_dict()
    next(it)
    loader.load_state_dict(state)
    with pytest.raises(
        RuntimeError, match=r"superseded by load_state_dict\(\) or a newer iter\(\)"
    ):
        next(it)
    assert [b.tolist() for b in loader] == [
        [2, 3],
        [4, 5],
        [6, 7],
        [8, 9],
        [10, 11],
        [12, 13],
        [14, 15],
        [16, 17],
        [18, 19],
    ]
