from __future__ import annotations

import io
import logging
import tracemalloc

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.data import DistributedSampler
from torchdata.stateful_dataloader import StatefulDataLoader

try:  # torchdata >= 0.9
    from torchdata.stateful_dataloader.sampler import StatefulDistributedSampler
except ImportError:  # torchdata 0.8 has none: the comparisons with it skip
    StatefulDistributedSampler = None

from statefuldata import IncompatibleStateError, SequentialSampler, ShuffledSampler, make_loader
from tests.data import Ids


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
    assert len(small.state_dict()) == len(large.state_dict()) == 4


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


# --- epochs: torch's convention, checked against torchdata's StatefulDistributedSampler ---------

N, BATCH, SEED = 24, 4, 5


def _ours(num_workers: int):
    return make_loader(Ids(N), batch_size=BATCH, shuffle=True, seed=SEED, num_workers=num_workers)


def _theirs(num_workers: int):
    if StatefulDistributedSampler is None:
        pytest.skip(
            "this torchdata has no StatefulDistributedSampler to compare with (added in 0.9)"
        )
    sampler = StatefulDistributedSampler(Ids(N), num_replicas=1, rank=0, shuffle=True, seed=SEED)
    return StatefulDataLoader(Ids(N), batch_size=BATCH, sampler=sampler, num_workers=num_workers)


def _order(kind: str, epoch: int) -> list[int]:
    if kind == "ours":
        sampler = ShuffledSampler(N, seed=SEED)
    else:
        if StatefulDistributedSampler is None:
            pytest.skip("this torchdata has no StatefulDistributedSampler to compare with (0.9+)")
        sampler = StatefulDistributedSampler(
            Ids(N), num_replicas=1, rank=0, shuffle=True, seed=SEED
        )
    sampler.set_epoch(epoch)
    return list(sampler)


def _trace(kind: str, passes: list[list[int]]) -> list[tuple[int, int, int]]:
    """Each pass as (epoch, first position, length) within that sampler's own order of the epoch."""
    out = []
    for ids in passes:
        found = [
            (epoch, start, len(ids))
            for epoch in range(8)
            for start in range(N - len(ids) + 1)
            if _order(kind, epoch)[start : start + len(ids)] == ids
        ]
        assert len(found) == 1, (kind, ids, found)
        out.append(found[0])
    return out


def _drain(iterator) -> list[int]:
    return [i for batch in iterator for i in batch.tolist()]


def _take(iterator, batches: int) -> list[int]:
    return [i for _ in range(batches) for i in next(iterator).tolist()]


def _before_iter(loader):
    out = []
    for epoch in (0, 1, 2):
        loader.sampler.set_epoch(epoch)
        out.append(_drain(iter(loader)))
    return out


def _after_iter(loader):
    out = []
    for epoch in (0, 1, 2):
        iterator = iter(loader)
        loader.sampler.set_epoch(epoch)
        out.append(_drain(iterator))
    return out


def _lightning_order(loader):
    """Lightning 2.x: iter() once before epoch 0's set_epoch, then set_epoch before each iter()."""
    iterator = iter(loader)
    loader.sampler.set_epoch(0)
    out = [_drain(iterator)]
    for epoch in (1, 2):
        loader.sampler.set_epoch(epoch)
        out.append(_drain(iter(loader)))
    return out


def _jumps(loader):
    out = []
    for epoch in (3, 1):
        loader.sampler.set_epoch(epoch)
        out.append(_drain(iter(loader)))
    return out


SEQUENCES = {
    "before-iter": _before_iter,
    "after-iter": _after_iter,
    "lightning": _lightning_order,
    "jumps": _jumps,
}
EXPECTED = {  # (epoch, start, length) per pass; with workers prefetching starts the pass at iter()
    ("before-iter", 0): [(0, 0, N), (1, 0, N), (2, 0, N)],
    ("before-iter", 2): [(0, 0, N), (1, 0, N), (2, 0, N)],
    ("after-iter", 0): [(0, 0, N), (1, 0, N), (2, 0, N)],
    ("after-iter", 2): [(0, 0, N), (0, 0, N), (1, 0, N)],
    ("lightning", 0): [(0, 0, N), (1, 0, N), (2, 0, N)],
    ("lightning", 2): [(0, 0, N), (1, 0, N), (2, 0, N)],
    ("jumps", 0): [(3, 0, N), (1, 0, N)],
    ("jumps", 2): [(3, 0, N), (1, 0, N)],
}


@pytest.mark.parametrize("num_workers", [0, pytest.param(2, marks=pytest.mark.slow)])
@pytest.mark.parametrize("sequence", sorted(SEQUENCES))
def test_set_epoch_sequences_match_stateful_distributed_sampler(sequence, num_workers) -> None:
    ours = _trace("ours", SEQUENCES[sequence](_ours(num_workers)))
    theirs = _trace("theirs", SEQUENCES[sequence](_theirs(num_workers)))
    assert ours == theirs == EXPECTED[sequence, num_workers]


def _resumed(factory, num_workers: int, *, batches: int, set_after_iter: bool):
    """Epoch 0, then `batches` of epoch 1; resume in a fresh loader, finish epoch 1, run epoch 2."""
    first = factory(num_workers)
    first.sampler.set_epoch(0)
    passes = [_drain(iter(first))]
    first.sampler.set_epoch(1)
    iterator = iter(first)
    passes.append(_take(iterator, batches))
    state = round_trip(first.state_dict())
    del iterator
    second = factory(num_workers)
    second.load_state_dict(state)
    if set_after_iter:
        iterator = iter(second)
        second.sampler.set_epoch(1)
    else:
        second.sampler.set_epoch(1)
        iterator = iter(second)
    passes.append(_drain(iterator))
    second.sampler.set_epoch(2)
    passes.append(_drain(iter(second)))
    return passes


@pytest.mark.parametrize("num_workers", [0, pytest.param(2, marks=pytest.mark.slow)])
@pytest.mark.parametrize("set_after_iter", [False, True])
@pytest.mark.parametrize("batches", [1, 3, 6])
def test_set_epoch_after_load_state_dict_matches_stateful_distributed_sampler(
    batches, set_after_iter, num_workers
) -> None:
    kwargs = {"batches": batches, "set_after_iter": set_after_iter}
    ours = _resumed(_ours, num_workers, **kwargs)
    theirs = _resumed(_theirs, num_workers, **kwargs)
    k = batches * BATCH
    assert sorted(ours[1] + ours[2]) == list(range(N))
    expected = [(0, 0, N), (1, 0, k), (1, k, N - k), (2, 0, N)]
    if k == N:  # a state at the end of epoch 1: the resumed pass has nothing left
        expected = [(0, 0, N), (1, 0, N), (2, 0, N)]
        ours, theirs = [p for p in ours if p], [p for p in theirs if p]
    assert _trace("ours", ours) == expected
    if set_after_iter and num_workers and k < N:
        # StatefulDistributedSampler's state has no epoch: prefetching starts the resumed pass
        # before set_epoch(1) arrives, so it resumes the position in epoch 0's order. Ours keeps it.
        assert _trace("theirs", theirs) == [*expected[:2], (0, k, N - k), expected[3]]
    else:
        assert _trace("theirs", theirs) == expected


def test_automatic_advance_and_explicit_set_epoch_together() -> None:
    s = ShuffledSampler(N, seed=SEED)
    passes = [list(s), list(s)]  # epochs 0 and 1 by themselves
    s.set_epoch(4)  # wins for the next pass ...
    passes.append(list(s))
    passes.append(list(s))  # ... and the one after advances from it
    it = iter(s)
    head = [next(it) for _ in range(5)]
    s.set_epoch(0)  # in flight: the rest of epoch 6 is untouched, epoch 0 comes next
    passes += [head + list(it), list(s)]
    assert [e for e, _, _ in _trace("ours", passes)] == [0, 1, 4, 5, 6, 0]


def test_set_epoch_never_discards_a_loaded_position(caplog) -> None:
    reference = ShuffledSampler(N, seed=SEED)
    reference.set_epoch(2)
    order = list(reference)
    s = ShuffledSampler(N, seed=SEED)
    s.load_state_dict({**reference.state_dict(), "position": 10})
    s.set_epoch(2)  # equal to the loaded epoch: the position stays
    assert list(s) == order[10:]
    s.load_state_dict({**reference.state_dict(), "position": 10})
    with caplog.at_level(logging.WARNING, logger="statefuldata.samplers"):
        s.set_epoch(0)
    assert (
        "set_epoch(0) ignored: a loaded state resumes epoch 2 at position 10 of 24" in caplog.text
    )
    assert list(s) == order[10:]
    s.load_state_dict({**reference.state_dict(), "position": N})  # nothing left of epoch 2
    s.set_epoch(7)
    assert _trace("ours", [list(s)]) == [(7, 0, N)]
    s.set_epoch(3)
    s.load_state_dict({**reference.state_dict(), "position": 4})  # a load clears an earlier request
    assert list(s) == order[4:]
    assert _trace("ours", [list(s)]) == [(3, 0, N)]


# --- elastic state: the position is global -------------------------------------------------------


def _sampler(kind: str, n: int, rank: int, world_size: int):
    if kind == "shuffled":
        return ShuffledSampler(n, seed=SEED, rank=rank, world_size=world_size)
    return SequentialSampler(n, rank=rank, world_size=world_size)


def _global_steps(samplers, batch: int, steps: int) -> list[list[int]]:
    """The first ``steps`` global steps (sorted union of every rank's batch) of samplers that each
    start with the rest of their current pass and go on with later passes."""
    per_rank = []
    for s in samplers:
        items: list[int] = []
        for _ in range(steps + 2):  # a restored pass may be empty; then one pass per epoch
            if len(items) >= steps * batch:
                break
            items += list(s)
        per_rank.append(items)
    return [
        sorted(i for items in per_rank for i in items[t * batch : (t + 1) * batch])
        for t in range(steps)
    ]


@settings(max_examples=60, deadline=None)
@given(
    kind=st.sampled_from(["shuffled", "sequential"]),
    saved_world=st.sampled_from([1, 2, 3]),
    new_world=st.sampled_from([1, 2, 3, 6]),
    steps_per_epoch=st.integers(1, 4),
    data=st.data(),
)
def test_elastic_resume_continues_the_global_order(
    kind, saved_world, new_world, steps_per_epoch, data
) -> None:
    """Checkpoint at any global step (mid-epoch, at an epoch's end, in a later epoch) under one
    world size, resume under another with the same global batch: every later global step holds the
    same samples as the uninterrupted run."""
    global_batch = 6  # divisible by every world size drawn
    n, epochs = global_batch * steps_per_epoch, 3
    total = epochs * steps_per_epoch
    k = data.draw(st.integers(0, total - 1), label="interrupted after global step")
    reference = _global_steps(
        [_sampler(kind, n, r, saved_world) for r in range(saved_world)],
        global_batch // saved_world,
        total,
    )
    saved = []
    for r in range(saved_world):
        s = _sampler(kind, n, r, saved_world)
        done, rest = divmod(k, steps_per_epoch)
        for _ in range(done):
            list(s)
        it = iter(s)
        for _ in range(rest * global_batch // saved_world):
            next(it)
        saved.append(round_trip(s.state_dict()))
    assert all(state == saved[0] for state in saved)  # the state is global: the same on every rank
    resumed = []
    for r in range(new_world):
        s = _sampler(kind, n, r, new_world)
        s.load_state_dict(saved[0])
        resumed.append(s)
    assert _global_steps(resumed, global_batch // new_world, total - k) == reference[k:]


def test_global_position_math_at_the_edges() -> None:
    from statefuldata.ranks import local_position
    from statefuldata.samplers import advance_state

    # 10 samples at world size 4: ranks take 1, 5, 9 / ... ; 6 handed out -> rank 1 has 2 of its own
    assert [local_position(6, 12, r, 4, 3) for r in range(4)] == [2, 2, 1, 1]
    assert local_position(0, 12, 3, 4, 3) == 0
    assert local_position(12, 12, 3, 4, 3) == 3  # a complete pass stays complete
    # n=11 at world size 2 pads to 12; complete there is complete at world size 1 (11 samples)
    s = SequentialSampler(11, world_size=2, rank=1)
    list(s)
    state = s.state_dict()
    assert state["position"] == 12 and state["world_size"] == 2
    one = SequentialSampler(11)
    one.load_state_dict(state)
    assert list(one) == [] and list(one) == list(range(11))  # the next pass is a full one
    assert advance_state({**state, "position": 4}, 3)["position"] == 10
    assert advance_state({**state, "position": 4}, 99)["position"] == 12  # stops at the end


def test_legacy_per_rank_state_loads_under_the_same_world_size_only() -> None:
    reference = ShuffledSampler(20, seed=SEED, rank=1, world_size=2)
    order = list(reference)
    legacy = {
        "epoch": 0,
        "position": 4,
        "fingerprint": {
            "kind": "shuffled",
            "n": 20,
            "rank": 1,
            "world_size": 2,
            "drop_last": False,
            "seed": SEED,
        },
    }
    s = ShuffledSampler(20, seed=SEED, rank=1, world_size=2)
    s.load_state_dict(legacy)
    assert list(s) == order[4:]
    with pytest.raises(IncompatibleStateError, match=r"'world_size': 2.*'world_size': 1"):
        ShuffledSampler(20, seed=SEED).load_state_dict(legacy)


def test_elastic_state_is_checked() -> None:
    state = ShuffledSampler(20, seed=SEED, world_size=2).state_dict()
    with pytest.raises(IncompatibleStateError, match=r"'seed': 5.*'seed': 1"):
        ShuffledSampler(20, seed=1).load_state_dict(state)
    with pytest.raises(IncompatibleStateError, match=r"position must be in \[0, 20\] \(got 21\)"):
        ShuffledSampler(20, seed=SEED).load_state_dict({**state, "position": 21})
    with pytest.raises(IncompatibleStateError, match="world_size 0; it must be an int >= 1"):
        ShuffledSampler(20, seed=SEED).load_state_dict({**state, "world_size": 0})


def test_a_global_position_that_does_not_divide_warns(caplog) -> None:
    s = SequentialSampler(12, world_size=3)
    it = iter(s)
    next(it)  # global position 3 at world size 3
    with caplog.at_level(logging.WARNING, logger="statefuldata.samplers"):
        SequentialSampler(12, world_size=2).load_state_dict(s.state_dict())
    assert "global position 3 does not divide by world size 2" in caplog.text


def test_indices_at_reads_the_epoch_order_without_moving_the_position() -> None:
    sampler = ShuffledSampler(50, seed=3, rank=1, world_size=2)
    sampler.set_epoch(2)
    order = list(sampler)
    sampler.load_state_dict({**sampler.state_dict(), "epoch": 2, "position": 20})
    before = sampler.state_dict()
    assert sampler.indices_at(0, 4) == order[:4]
    assert sampler.indices_at(23, 99) == order[23:]  # clipped to this rank's samples
    assert sampler.indices_at(5, 2) == []
    assert sampler.state_dict() == before
    assert list(sampler) == order[10:]  # global position 20 is this rank's 10th sample
