from __future__ import annotations

import itertools
import time
from collections import Counter
from fractions import Fraction

import numpy as np
import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

from statefuldata.config import EpochLengthPolicy, MultiDataLoaderConfig, SamplingStrategy
from statefuldata.schedule import (
    build_schedule,
    choice_rng_for_epoch,
    epoch_length,
    expected_shares,
    quotas,
    rng_state_from_plain,
    rng_state_to_plain,
)
from statefuldata.seeding import derive_seed

S = SamplingStrategy
P = EpochLengthPolicy


def fixed(strategy: str, steps: int, **kwargs: object) -> MultiDataLoaderConfig:
    return MultiDataLoaderConfig(
        sampling_strategy=strategy,
        epoch_length_policy="fixed_num_steps",
        steps_per_epoch=steps,
        **kwargs,
    )


def counts(schedule: list[int], n: int) -> list[int]:
    c = Counter(schedule)
    return [c[i] for i in range(n)]


def runs(schedule: list[int]) -> list[tuple[int, int]]:
    return [(k, len(list(g))) for k, g in itertools.groupby(schedule)]


def assert_prefix_discrepancy_below_one(schedule: list[int], quota: list[int]) -> None:
    total = len(schedule)
    seen = [0] * len(quota)
    for p, i in enumerate(schedule, start=1):
        seen[i] += 1
        for j, q in enumerate(quota):
            assert abs(seen[j] - Fraction(q * p, total)) < 1, (p, j, seen[j], q, total)


@pytest.mark.parametrize(
    ("weights", "steps", "expected"),
    [
        ([0.5, 0.3, 0.2], 100, [50, 30, 20]),
        ([0.33, 0.33, 0.34], 10, [3, 3, 4]),
        ([0.25] * 4, 11, [3, 3, 3, 2]),
        ([1 / 7] * 7, 100, [15, 15, 14, 14, 14, 14, 14]),
        ([2, 3, 5], 100, [20, 30, 50]),
        ([0.99, 0.005, 0.005], 100, [99, 1, 0]),
    ],
)
def test_weighted_quotas_are_exact(weights: list[float], steps: int, expected: list[int]) -> None:
    cfg = fixed("weighted", steps, dataloader_weights=weights)
    lengths = [10] * len(weights)
    assert quotas(cfg, lengths, steps) == expected
    schedule = build_schedule(cfg, lengths, epoch=0)
    assert len(schedule) == steps
    assert counts(schedule, len(weights)) == expected
    assert_prefix_discrepancy_below_one(schedule, expected)


def test_weights_are_read_as_printed_decimals() -> None:
    # 30 / 0.2 is 150 exactly, although 30 / 0.2 in floats is 149.99999999999997.
    cfg = MultiDataLoaderConfig(
        sampling_strategy="weighted",
        dataloader_weights=[0.8, 0.2],
        epoch_length_policy="max_of_lengths",
    )
    assert epoch_length(cfg, [10, 30]) == 150
    cfg = MultiDataLoaderConfig(
        sampling_strategy="weighted",
        dataloader_weights=[0.8, 0.2],
        epoch_length_policy="min_of_lengths",
    )
    assert epoch_length(cfg, [1000, 30]) == 150


@pytest.mark.parametrize("strategy", list(S))
def test_zero_steps_give_an_empty_schedule(strategy: S) -> None:
    cfg = fixed(strategy.value, 0, dataloader_weights=[1, 1], alternating_pattern=[0, 1])
    assert build_schedule(cfg, [4, 4], epoch=0) == []
    assert quotas(cfg, [4, 4], 0) == [0, 0]


weights_st = st.lists(
    st.one_of(st.just(0.0), st.floats(min_value=1e-3, max_value=10.0)), min_size=1, max_size=6
).filter(lambda ws: sum(ws) > 0)


@settings(max_examples=60, deadline=None)
@given(
    weights=weights_st,
    steps=st.one_of(
        st.integers(min_value=0, max_value=60), st.integers(min_value=60, max_value=2000)
    ),
)
@example(weights=[0.5, 0.0, 0.3, 1e-3, 0.2, 9.0], steps=2000)
@example(weights=[1 / 3, 1 / 3, 1 / 3], steps=1999)
def test_weighted_every_prefix_is_within_one_batch(weights: list[float], steps: int) -> None:
    cfg = fixed("weighted", steps, dataloader_weights=weights)
    lengths = [1] * len(weights)
    quota = quotas(cfg, lengths, steps)
    assert sum(quota) == steps
    shares = [Fraction(str(w)) / sum(Fraction(str(v)) for v in weights) for w in weights]
    assert all(abs(q - s * steps) < 1 for q, s in zip(quota, shares, strict=True))
    schedule = build_schedule(cfg, lengths, epoch=0)
    assert counts(schedule, len(weights)) == quota
    assert_prefix_discrepancy_below_one(schedule, quota)


@settings(max_examples=60, deadline=None)
@given(
    strategy=st.sampled_from([S.ROUND_ROBIN, S.WEIGHTED, S.ALTERNATING, S.SEQUENTIAL]),
    policy=st.sampled_from(list(P)),
    lengths=st.lists(st.integers(min_value=0, max_value=60), min_size=1, max_size=5),
    weights=st.lists(st.integers(min_value=0, max_value=5), min_size=5, max_size=5),
    pattern=st.lists(st.integers(min_value=0, max_value=4), min_size=1, max_size=6),
    burst=st.integers(min_value=1, max_value=4),
    steps=st.integers(min_value=0, max_value=300),
)
def test_deterministic_schedules_follow_their_quotas(
    strategy: S,
    policy: P,
    lengths: list[int],
    weights: list[int],
    pattern: list[int],
    burst: int,
    steps: int,
) -> None:
    n = len(lengths)
    weights = weights[:n]
    if sum(weights) == 0:
        weights[0] = 1
    if sum(lengths) == 0:
        lengths[0] = 1
    cfg = MultiDataLoaderConfig(
        sampling_strategy=strategy,
        dataloader_weights=weights if strategy is S.WEIGHTED else None,
        alternating_pattern=[p % n for p in pattern] if strategy is S.ALTERNATING else None,
        epoch_length_policy=policy,
        steps_per_epoch=steps if policy is P.FIXED_NUM_STEPS else None,
        burst_size=burst,
    )
    total = epoch_length(cfg, lengths)
    schedule = build_schedule(cfg, lengths, epoch=3)
    assert len(schedule) == total
    assert counts(schedule, n) == quotas(cfg, lengths, total)
    assert schedule == build_schedule(cfg, lengths, epoch=3)
    if strategy is not S.SEQUENTIAL:
        # the schedule parses into bursts of min(burst, what the loader has left)
        left, pos = quotas(cfg, lengths, total), 0
        while pos < total:
            i = schedule[pos]
            size = min(burst, left[i])
            assert schedule[pos : pos + size] == [i] * size
            left[i] -= size
            pos += size


def test_burst_keeps_quotas_and_has_runs_of_burst_size() -> None:
    cfg = fixed("weighted", 10, dataloader_weights=[0.5, 0.5], burst_size=2)
    schedule = build_schedule(cfg, [5, 5], epoch=0)
    assert counts(schedule, 2) == [5, 5]
    assert schedule == [0, 0, 1, 1, 0, 0, 1, 1, 0, 1]
    assert [size for _, size in runs(schedule)][:-2] == [2] * 4


@pytest.mark.parametrize(
    ("strategy", "burst", "lengths", "expected"),
    [
        ("sequential", 1, [3, 1, 2], [0, 0, 0, 1, 2, 2]),
        ("sequential", 2, [3, 1, 2], [0, 0, 0, 1, 2, 2]),
        ("round_robin", 1, [3, 1, 2], [0, 1, 2, 0, 2, 0]),
        ("round_robin", 2, [3, 1, 2], [0, 0, 1, 2, 2, 0]),
    ],
)
def test_sequential_and_round_robin_give_one_pass_each(
    strategy: str, burst: int, lengths: list[int], expected: list[int]
) -> None:
    cfg = MultiDataLoaderConfig(sampling_strategy=strategy, burst_size=burst)
    assert build_schedule(cfg, lengths, epoch=0) == expected


@pytest.mark.parametrize(
    ("burst", "steps", "expected"),
    [
        (1, 7, [0, 0, 1, 0, 0, 1, 0]),
        (2, 7, [0, 0, 0, 0, 1, 1, 0]),
        (2, 9, [0, 0, 0, 0, 1, 1, 0, 0, 1]),
    ],
)
def test_alternating_repeats_the_pattern(burst: int, steps: int, expected: list[int]) -> None:
    cfg = fixed("alternating", steps, alternating_pattern=[0, 0, 1], burst_size=burst)
    assert quotas(cfg, [5, 5], steps) == counts(expected, 2)
    assert build_schedule(cfg, [5, 5], epoch=0) == expected


LENGTHS = [10, 20, 30]
# The table of epoch_length's docstring: weights [.5, .3, .2], pattern [0, 1, 2, 2], 25 fixed steps.
TABLE = {
    S.SEQUENTIAL: {P.SUM_OF_LENGTHS: 60, P.MAX_OF_LENGTHS: 90, P.MIN_OF_LENGTHS: 30, P.FIXED_NUM_STEPS: 25},
    S.ROUND_ROBIN: {P.SUM_OF_LENGTHS: 60, P.MAX_OF_LENGTHS: 90, P.MIN_OF_LENGTHS: 30, P.FIXED_NUM_STEPS: 25},
    S.WEIGHTED: {P.SUM_OF_LENGTHS: 60, P.MAX_OF_LENGTHS: 150, P.MIN_OF_LENGTHS: 20, P.FIXED_NUM_STEPS: 25},
    S.WEIGHTED_RANDOM: {P.SUM_OF_LENGTHS: 60, P.MAX_OF_LENGTHS: 150, P.MIN_OF_LENGTHS: 20, P.FIXED_NUM_STEPS: 25},
    S.ALTERNATING: {P.SUM_OF_LENGTHS: 60, P.MAX_OF_LENGTHS: 80, P.MIN_OF_LENGTHS: 40, P.FIXED_NUM_STEPS: 25},
}  # fmt: skip


def table_config(strategy: S, policy: P) -> MultiDataLoaderConfig:
    return MultiDataLoaderConfig(
        sampling_strategy=strategy,
        dataloader_weights=[0.5, 0.3, 0.2] if strategy in (S.WEIGHTED, S.WEIGHTED_RANDOM) else None,
        alternating_pattern=[0, 1, 2, 2] if strategy is S.ALTERNATING else None,
        epoch_length_policy=policy,
        steps_per_epoch=25 if policy is P.FIXED_NUM_STEPS else None,
    )


@pytest.mark.parametrize(("strategy", "policy"), list(itertools.product(S, P)))
def test_epoch_length_table(strategy: S, policy: P) -> None:
    cfg = table_config(strategy, policy)
    expected = TABLE[strategy][policy]
    assert epoch_length(cfg, LENGTHS) == expected
    schedule = build_schedule(cfg, LENGTHS, epoch=0)
    assert len(schedule) == expected
    if strategy is not S.WEIGHTED_RANDOM:
        assert counts(schedule, 3) == quotas(cfg, LENGTHS, expected)
    pairs = list(zip(counts(schedule, 3), LENGTHS, strict=True))
    if policy is P.MAX_OF_LENGTHS and strategy is not S.WEIGHTED_RANDOM:
        assert all(c >= n for c, n in pairs)  # every loader completes a pass
    if policy is P.MIN_OF_LENGTHS and strategy is not S.WEIGHTED_RANDOM:
        assert all(c <= n for c, n in pairs)  # no loader repeats


def test_sum_of_lengths_quotas_for_sequential_and_round_robin_are_the_lengths() -> None:
    cfg = MultiDataLoaderConfig(sampling_strategy="round_robin")
    assert quotas(cfg, LENGTHS, 60) == LENGTHS
    with pytest.raises(ValueError, match=r"'total' must be sum\(lengths\)=60 \(got 59\)"):
        quotas(cfg, LENGTHS, 59)


def test_infinite_loaders_need_fixed_num_steps() -> None:
    names = {"dataloader_names": ["books", "web"]}
    cfg = MultiDataLoaderConfig(sampling_strategy="round_robin", **names)
    with pytest.raises(ValueError, match=r"loader 1 \('web'\) has no length .*'fixed_num_steps'"):
        epoch_length(cfg, [10, None])
    cfg = fixed("weighted", 12, dataloader_weights=[1, 2], **names)
    assert epoch_length(cfg, [10, None]) == 12
    assert counts(build_schedule(cfg, [10, None], epoch=0), 2) == [4, 8]


def test_lengths_are_checked() -> None:
    cfg = MultiDataLoaderConfig()
    with pytest.raises(ValueError, match=r"length of loader 0 must be >= 0 \(got -1\)"):
        epoch_length(cfg, [-1, 2])
    with pytest.raises(TypeError, match=r"length of loader 1 must be an int or None \(got 2.5\)"):
        epoch_length(cfg, [1, 2.5])  # type: ignore[list-item]
    with pytest.raises(ValueError, match=r"'dataloader_weights' has 2 entries"):
        build_schedule(fixed("weighted", 5, dataloader_weights=[1, 1]), [3, 3, 3], epoch=0)
    with pytest.raises(ValueError, match=r"'alternating_pattern\[1\]' is 4, out of range for 2"):
        build_schedule(fixed("alternating", 5, alternating_pattern=[0, 4]), [3, 3], epoch=0)
    with pytest.raises(ValueError, match=r"'epoch' must be an int >= 0 \(got -1\)"):
        build_schedule(cfg, [1, 2], epoch=-1)


def test_weighted_random_is_seeded_by_seed_and_epoch() -> None:
    cfg = fixed("weighted_random", 200, dataloader_weights=[0.5, 0.3, 0.2], choice_rng_seed=5)
    first = build_schedule(cfg, [1, 1, 1], epoch=2)
    assert first == build_schedule(cfg, [1, 1, 1], epoch=2)
    assert first != build_schedule(cfg, [1, 1, 1], epoch=3)
    other_seed = fixed(
        "weighted_random", 200, dataloader_weights=[0.5, 0.3, 0.2], choice_rng_seed=6
    )
    assert first != build_schedule(other_seed, [1, 1, 1], epoch=2)
    rng = np.random.RandomState(derive_seed(5, 2) % 2**32)
    assert build_schedule(cfg, [1, 1, 1], epoch=2, rng=rng) == first
    assert choice_rng_for_epoch(cfg, 2).get_state()[1].tolist() == (
        np.random.RandomState(derive_seed(5, 2) % 2**32).get_state()[1].tolist()
    )


def test_weighted_random_converges_to_the_weights() -> None:
    cfg = fixed("weighted_random", 20000, dataloader_weights=[0.5, 0.3, 0.2, 0.0])
    schedule = build_schedule(cfg, [1] * 4, epoch=0)
    assert expected_shares(cfg, [1] * 4, 20000) == [0.5, 0.3, 0.2, 0.0]
    counts = np.bincount(schedule, minlength=4)
    for share, expected in zip(counts / len(schedule), [0.5, 0.3, 0.2, 0.0], strict=True):
        assert abs(share - expected) < 0.02
    assert counts[3] == 0


def test_weighted_random_burst_draws_whole_bursts() -> None:
    cfg = fixed("weighted_random", 11, dataloader_weights=[1, 1], burst_size=3)
    rng = choice_rng_for_epoch(cfg, 0)
    schedule = build_schedule(cfg, [1, 1], epoch=0, rng=rng)
    expected_picks = choice_rng_for_epoch(cfg, 0).choice(2, size=4, p=[0.5, 0.5])
    assert schedule == np.repeat(expected_picks, 3)[:11].tolist()
    assert rng.random_sample() == _advanced(cfg, 4).random_sample()


def _advanced(cfg: MultiDataLoaderConfig, draws: int) -> np.random.RandomState:
    rng = choice_rng_for_epoch(cfg, 0)
    rng.random_sample(draws)
    return rng


def test_rng_plain_round_trip_survives_safe_torch_load(tmp_path) -> None:
    rs = np.random.RandomState(1234)
    rs.random_sample(17)
    rs.standard_normal()  # leaves a cached gaussian
    plain = rng_state_to_plain(rs)
    assert plain[0] == "MT19937"
    assert plain[1].dtype == torch.int64
    assert plain[1].shape == (624,)
    assert [type(x) for x in plain[2:]] == [int, int, float]
    torch.save({"choice_rng": plain}, tmp_path / "rng.pt")
    loaded = torch.load(tmp_path / "rng.pt", weights_only=True)["choice_rng"]
    restored = rng_state_from_plain(loaded)
    assert restored.standard_normal() == rs.standard_normal()
    assert restored.random_sample() == rs.random_sample()
    assert restored.randint(0, 2**31, size=5).tolist() == rs.randint(0, 2**31, size=5).tolist()


def test_rng_from_plain_rejects_garbage() -> None:
    with pytest.raises(ValueError, match=r"must be \('MT19937', keys, pos"):
        rng_state_from_plain(("PCG64", torch.zeros(624), 0, 0, 0.0))
    with pytest.raises(ValueError, match=r"MT19937 keys must be 624 words .*\(got 3 words\)"):
        rng_state_from_plain(("MT19937", torch.zeros(3, dtype=torch.int64), 0, 0, 0.0))


@pytest.mark.parametrize(("strategy", "policy"), list(itertools.product(S, P)))
def test_schedules_are_pure(strategy: S, policy: P) -> None:
    cfg = table_config(strategy, policy)
    assert build_schedule(cfg, LENGTHS, epoch=4) == build_schedule(cfg, LENGTHS, epoch=4)


def test_expected_shares_are_the_quotas_of_the_epoch() -> None:
    cfg = MultiDataLoaderConfig(
        sampling_strategy="weighted",
        dataloader_weights=[0.5, 0.3, 0.2],
        dataloader_names=["a", "b", "c"],
        epoch_length_policy="fixed_num_steps",
        steps_per_epoch=10,
    )
    assert expected_shares(cfg, LENGTHS, 10) == [0.5, 0.3, 0.2]
    assert expected_shares(cfg, LENGTHS, 7) == [q / 7 for q in quotas(cfg, LENGTHS, 7)]
    assert expected_shares(cfg, LENGTHS, 0) == [0.0, 0.0, 0.0]
    # WEIGHTED_RANDOM expects the weights, read as the decimals they print as
    rand = fixed("weighted_random", 10, dataloader_weights=[0.1, 0.2])
    assert expected_shares(rand, [1, 1], 10) == [1 / 3, 2 / 3]


def test_long_sequential_max_of_lengths_is_fast() -> None:
    cfg = MultiDataLoaderConfig(epoch_length_policy="max_of_lengths")
    start = time.perf_counter()
    schedule = build_schedule(cfg, [5, 2000], epoch=0)
    assert time.perf_counter() - start < 1.0
    assert schedule == [0] * 2000 + [1] * 2000


def test_large_weighted_epoch_is_fast() -> None:
    cfg = fixed("weighted", 200_000, dataloader_weights=[0.1, 0.2, 0.3, 0.4, 1e-4])
    start = time.perf_counter()
    schedule = build_schedule(cfg, [1] * 5, epoch=0)
    assert time.perf_counter() - start < 5.0
    assert counts(schedule, 5) == quotas(cfg, [1] * 5, 200_000)
