from __future__ import annotations

import io
import tracemalloc

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.data import DistributedSampler

from statefuldata import IncompatibleStateError, SequentialSampler, ShuffledSampler


def round_trip(state):
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


def test_each_epoch_is_a_new_permutation() -> None:
    s = ShuffledSampler(100, seed=3)
    epochs = [list(s) for _ in range(4)]
    assert all(sorted(e) == list(range(100)) for e in epochs)
    assert len({tuple(e) for e in epochs}) == 4
    assert s.epoch == 3


def test_seeds_give_different_orders_and_same_seed_repeats() -> None:
    assert list(ShuffledSampler(50, seed=1)) != list(ShuffledSampler(50, seed=2))
    assert list(ShuffledSampler(50, seed=1)) == list(ShuffledSampler(50, seed=1))


def test_set_epoch_selects_order() -> None:
    a = ShuffledSampler(30, seed=0)
    reference = [list(a) for _ in range(3)]
    b = ShuffledSampler(30, seed=0)
    b.set_epoch(2)
    assert list(b) == reference[2]
    b.set_epoch(0)
    assert list(b) == reference[0]


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(1, 300),
    world_size=st.integers(1, 6),
    drop_last=st.booleans(),
    epoch=st.integers(0, 3),
)
def test_ranks_are_disjoint_and_cover_like_distributed_sampler(n, world_size, drop_last, epoch):
    if drop_last and n < world_size:
        return
    per_rank = []
    for rank in range(world_size):
        s = ShuffledSampler(n, seed=5, rank=rank, world_size=world_size, drop_last=drop_last)
        s.set_epoch(epoch)
        per_rank.append(list(s))
        ref = DistributedSampler(
            range(n), num_replicas=world_size, rank=rank, shuffle=False, drop_last=drop_last
        )
        assert len(per_rank[-1]) == len(ref)
    flat = [i for r in per_rank for i in r]
    if drop_last:
        assert len(set(flat)) == len(flat) == (n // world_size) * world_size
    else:
        assert set(flat) == set(range(n))
        # padding repeats as few items as DistributedSampler does
        assert len(flat) - n == len(per_rank[0]) * world_size - n


def test_sequential_sampler_strides_like_distributed_sampler() -> None:
    for rank in range(3):
        ours = list(SequentialSampler(10, rank=rank, world_size=3))
        theirs = list(DistributedSampler(range(10), num_replicas=3, rank=rank, shuffle=False))
        assert ours == theirs


@pytest.mark.parametrize("k", [0, 1, 5, 99, 100, 150, 199, 200])
def test_resume_at_any_position_across_epochs(k: int) -> None:
    ref_sampler = ShuffledSampler(100, seed=9)
    reference = list(ref_sampler) + list(ref_sampler)
    s = ShuffledSampler(100, seed=9)
    it = iter(s)
    consumed = []
    for _ in range(k):
        try:
            consumed.append(next(it))
        except StopIteration:
            it = iter(s)
            consumed.append(next(it))
    state = round_trip(s.state_dict())
    t = ShuffledSampler(100, seed=9)
    t.load_state_dict(state)
    rest = list(t)
    if len(consumed) + len(rest) < 200:
        rest += list(t)
    assert consumed + rest == reference


def test_state_before_first_item_and_size_independent_of_n() -> None:
    small, large = ShuffledSampler(10**3, seed=1), ShuffledSampler(10**8, seed=1)
    assert small.state_dict()["position"] == 0
    assert len(small.state_dict()) == len(large.state_dict()) == 3


def test_load_state_redirects_live_iterator() -> None:
    s = ShuffledSampler(40, seed=2)
    order = list(ShuffledSampler(40, seed=2))
    it = iter(s)
    next(it)
    s.load_state_dict({**s.state_dict(), "position": 30})
    assert list(it) == order[30:]


def test_first_batch_over_1e8_allocates_no_o_n_memory() -> None:
    tracemalloc.start()
    try:
        s = ShuffledSampler(10**8, seed=0)
        it = iter(s)
        batch = [next(it) for _ in range(256)]
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(set(batch)) == 256
    assert peak < 2 * 1024 * 1024, f"peak {peak} bytes"  # a permutation would be 800 MB


def test_incompatible_state_names_both_configs() -> None:
    state = ShuffledSampler(10, seed=1).state_dict()
    with pytest.raises(
        IncompatibleStateError, match=r"taken under .*'seed': 1.* but this sampler is .*'seed': 2"
    ):
        ShuffledSampler(10, seed=2).load_state_dict(state)
    with pytest.raises(IncompatibleStateError, match=r"must have keys"):
        ShuffledSampler(10, seed=1).load_state_dict({"epoch": 0})


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"n": 0}, ValueError, r"'n' must be > 0 \(got 0\); a sampler needs a non-empty dataset"),
        ({"n": -3}, ValueError, r"'n' must be > 0 \(got -3\)"),
        ({"n": 5, "seed": -1}, ValueError, r"'seed' must be >= 0 \(got -1\)"),
        (
            {"n": 5, "rank": 2, "world_size": 2},
            ValueError,
            r"'rank' must be < world_size \(got rank=2, world_size=2\)",
        ),
        ({"n": 5, "world_size": 0}, ValueError, r"'world_size' must be > 0 \(got 0\)"),
        ({"n": 2.5}, TypeError, r"'n' must be an int \(got 2.5\)"),
    ],
)
def test_bad_input(kwargs, error, match) -> None:
    with pytest.raises(error, match=match):
        ShuffledSampler(**kwargs)
