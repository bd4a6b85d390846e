"""One epoch's schedule over several loaders: a pure function of (config, lengths, epoch, seed).

The schedule is a list of loader indices, one per step. It is never stored; a manager stores its
position in it and rebuilds it with :func:`build_schedule` on resume. Every number here is exact:
weights are read as the decimals they print as (``Fraction(str(w))``), so float noise never changes
an epoch length, a quota or a tie.

Shares ``w_i``: normalised ``dataloader_weights`` (WEIGHTED, WEIGHTED_RANDOM), equal shares
(SEQUENTIAL, ROUND_ROBIN), pattern frequencies (ALTERNATING).

Quotas (batches per loader in one epoch, summing to T): under SUM_OF_LENGTHS, SEQUENTIAL and
ROUND_ROBIN give each loader its own length; ALTERNATING gives what repeating the pattern over T
steps gives; everything else apportions ``w_i * T`` by largest remainder (Hamilton, ties to the lower
index). WEIGHTED_RANDOM's quotas are only expectations: its draws are i.i.d.
"""

from __future__ import annotations

import heapq
import logging
import math
from collections.abc import Iterable, Sequence
from fractions import Fraction
from typing import Any

import numpy as np

from statefuldata.config import EpochLengthPolicy, MultiDataLoaderConfig, SamplingStrategy
from statefuldata.seeding import PlainMT19937, derive_seed, mt19937_from_plain, mt19937_to_plain
from statefuldata.validators import check_epoch, check_int, is_int

__all__ = [
    "build_schedule",
    "choice_rng_for_epoch",
    "epoch_length",
    "expected_shares",
    "quotas",
    "rng_state_from_plain",
    "rng_state_to_plain",
]

logger = logging.getLogger(__name__)

_S = SamplingStrategy
_P = EpochLengthPolicy


def _label(config: MultiDataLoaderConfig, i: int) -> str:
    names = config.dataloader_names
    return f"{i} ({names[i]!r})" if names is not None and i < len(names) else str(i)


def _checked(config: MultiDataLoaderConfig, lengths: Sequence[int | None]) -> list[int | None]:
    out: list[int | None] = []
    for i, n in enumerate(lengths):
        if n is not None and not is_int(n):
            raise TypeError(
                f"length of loader {_label(config, i)} must be an int or None (got {n!r})"
            )
        if n is not None and n < 0:
            raise ValueError(f"length of loader {_label(config, i)} must be >= 0 (got {n})")
        out.append(None if n is None else int(n))
    config.validate_for(len(out))
    policy = config.epoch_length_policy
    for i, n in enumerate(out):
        if n is None and policy is not _P.FIXED_NUM_STEPS:
            raise ValueError(
                f"loader {_label(config, i)} has no length (got None: an infinite or unsized "
                f"loader), so epoch_length_policy={policy.value!r} cannot size the epoch; use "
                "epoch_length_policy='fixed_num_steps' with steps_per_epoch=N"
            )
    return out


def _shares(config: MultiDataLoaderConfig, n: int) -> list[Fraction]:
    if config.sampling_strategy in (_S.WEIGHTED, _S.WEIGHTED_RANDOM):
        raw = [Fraction(str(w)) for w in config.dataloader_weights or ()]
    elif config.sampling_strategy is _S.ALTERNATING:
        pattern = config.alternating_pattern or ()
        raw = [Fraction(pattern.count(i)) for i in range(n)]
    else:
        raw = [Fraction(1)] * n
    total = sum(raw)
    return [r / total for r in raw]


def epoch_length(config: MultiDataLoaderConfig, lengths: Sequence[int | None]) -> int:
    """The number of steps T of one epoch; the same rule for every strategy.

    SUM_OF_LENGTHS: ``sum(len_i)``. MAX_OF_LENGTHS: ``max ceil(len_i / w_i)`` over ``w_i > 0``
    (every loader completes at least one pass). MIN_OF_LENGTHS: ``min floor(len_i / w_i)`` over
    ``w_i > 0`` (no loader repeats). FIXED_NUM_STEPS: ``steps_per_epoch``.

    Loaders of 10, 20 and 30 batches (weights ``[.5, .3, .2]``, pattern ``[0, 1, 2, 2]``,
    ``steps_per_epoch=25``)::

        strategy          SUM  MAX  MIN  FIXED
        sequential         60   90   30     25
        round_robin        60   90   30     25
        weighted           60  150   20     25
        weighted_random    60  150   20     25
        alternating        60   80   40     25

    Args:
        config: The recipe.
        lengths: Batches per loader; ``None`` for a loader without ``__len__`` (FIXED only).

    Raises:
        ValueError: A ``None`` length under another policy, or lengths that do not fit the config.
    """
    lens = _checked(config, lengths)
    policy = config.epoch_length_policy
    if policy is _P.FIXED_NUM_STEPS:
        return int(config.steps_per_epoch or 0)
    known = [int(n or 0) for n in lens]
    if policy is _P.SUM_OF_LENGTHS:
        return sum(known)
    ratios = [
        Fraction(n) / w for n, w in zip(known, _shares(config, len(known)), strict=True) if w > 0
    ]
    if policy is _P.MAX_OF_LENGTHS:
        return max(math.ceil(r) for r in ratios)
    return min(math.floor(r) for r in ratios)


def _hamilton(shares: Sequence[Fraction], total: int) -> list[int]:
    exact = [w * total for w in shares]
    counts = [math.floor(x) for x in exact]
    order = sorted(range(len(exact)), key=lambda i: (counts[i] - exact[i], i))
    for i in order[: total - sum(counts)]:
        counts[i] += 1
    return counts


def quotas(config: MultiDataLoaderConfig, lengths: Sequence[int | None], total: int) -> list[int]:
    """Batches per loader in an epoch of ``total`` steps; they sum to ``total`` exactly.

    Example:
        >>> cfg = MultiDataLoaderConfig(sampling_strategy="weighted",
        ...                             dataloader_weights=[0.99, 0.005, 0.005])
        >>> quotas(cfg, [100, 100, 100], 100)
        [99, 1, 0]
    """
    lens = _checked(config, lengths)
    check_int("total", total, minimum=0, single=True)
    total = int(total)
    strategy = config.sampling_strategy
    if config.epoch_length_policy is _P.SUM_OF_LENGTHS and strategy in (
        _S.SEQUENTIAL,
        _S.ROUND_ROBIN,
    ):
        if total != sum(int(n or 0) for n in lens):
            raise ValueError(
                f"under 'sum_of_lengths', {strategy.value!r} gives each loader its own length, so "
                f"'total' must be sum(lengths)={sum(int(n or 0) for n in lens)} (got {total}); "
                "pass epoch_length(config, lengths)"
            )
        return [int(n or 0) for n in lens]
    if strategy is _S.ALTERNATING:
        pattern = config.alternating_pattern or ()
        full, rest = divmod(total, len(pattern))
        counts = [0] * len(lens)
        for pos, i in enumerate(pattern):
            counts[i] += full + (1 if pos < rest else 0)
        return counts
    return _hamilton(_shares(config, len(lens)), total)


def _interleave(counts: Sequence[int]) -> list[int]:
    """Earliest-deadline-first order in which every prefix p holds loader i within 1 of c_i*p/T.

    The k-th entry of loader i may sit at positions ``floor((k-1)T/c_i)+1 .. ceil(kT/c_i)``, which is
    exactly the strict within-one window; such an order exists (Tijdeman) and EDF finds it. O(T log n).
    """
    total = sum(counts)
    waiting = [(1, i) for i, c in enumerate(counts) if c > 0]  # (release, loader)
    ready: list[tuple[int, int]] = []  # (deadline, loader)
    done = [0] * len(counts)
    out: list[int] = []
    for p in range(1, total + 1):
        while waiting and waiting[0][0] <= p:
            _, i = heapq.heappop(waiting)
            heapq.heappush(ready, (-(-(done[i] + 1) * total // counts[i]), i))
        if not ready or ready[0][0] < p:
            raise RuntimeError(f"interleave of {list(counts)} failed at step {p}; please report")
        _, i = heapq.heappop(ready)
        out.append(i)
        done[i] += 1
        if done[i] < counts[i]:
            heapq.heappush(waiting, (done[i] * total // counts[i] + 1, i))
    return out


def _weighted_order(counts: Sequence[int], burst: int) -> list[int]:
    if burst == 1:
        return _interleave(counts)
    blocks = [-(-c // burst) for c in counts]  # whole bursts plus one short block of c % burst
    placed = [0] * len(counts)
    out: list[int] = []
    for i in _interleave(blocks):
        placed[i] += 1
        short = counts[i] % burst
        out.extend([i] * (short if placed[i] == blocks[i] and short else burst))
    return out


def _cycle_blocks(order: Iterable[int], counts: Sequence[int], burst: int) -> list[int]:
    remaining = list(counts)
    active = [i for i in order if remaining[i] > 0]
    out: list[int] = []
    while active:
        before = len(out)
        for i in active:
            take = min(burst, remaining[i])
            out.extend([i] * take)
            remaining[i] -= take
        if len(out) == before:  # cannot happen: every active loader has a quota left
            raise RuntimeError(f"cycling {list(counts)} made no progress; please report")
        active = [i for i in active if remaining[i] > 0]
    return out


def choice_rng_for_epoch(config: MultiDataLoaderConfig, epoch: int) -> np.random.RandomState:
    """WEIGHTED_RANDOM's choice RNG at the start of ``epoch``: seeded with
    ``derive_seed(config.choice_rng_seed, epoch) % 2**32``."""
    return np.random.RandomState(derive_seed(config.choice_rng_seed, epoch) % 2**32)


def build_schedule(
    config: MultiDataLoaderConfig,
    lengths: Sequence[int | None],
    epoch: int,
    *,
    rng: np.random.RandomState | None = None,
) -> list[int]:
    """The loader index of every step of ``epoch`` (a list of length :func:`epoch_length`).

    SEQUENTIAL: each loader's quota in turn. ROUND_ROBIN: ``0, 1, 2, 0, 1, 2, ...`` skipping a loader
    whose quota is used. WEIGHTED: exact quotas, every prefix p within one batch of ``q_i * p / T``.
    WEIGHTED_RANDOM: T i.i.d. draws with probabilities ``w`` from ``rng`` (default
    :func:`choice_rng_for_epoch`; a given ``rng`` advances by ``ceil(T / burst_size)`` uniforms).
    ALTERNATING: the pattern repeated over T steps. ``burst_size=b`` repeats each entry b times in a
    row (a loader's last burst may be shorter) and keeps the quotas exact; SEQUENTIAL is already one
    long burst per loader. Deterministic strategies give exactly :func:`quotas`.

    Example:
        >>> cfg = MultiDataLoaderConfig(sampling_strategy="round_robin")
        >>> build_schedule(cfg, [3, 1, 2], epoch=0)
        [0, 1, 2, 0, 2, 0]
    """
    check_epoch(epoch)
    total = epoch_length(config, lengths)
    if total == 0:
        return []
    burst = config.burst_size
    strategy = config.sampling_strategy
    if strategy is _S.WEIGHTED_RANDOM:
        probs = np.array([float(w) for w in _shares(config, len(lengths))])
        if rng is None:
            rng = choice_rng_for_epoch(config, int(epoch))
        picks = rng.choice(len(probs), size=-(-total // burst), p=probs / probs.sum())
        drawn: list[int] = np.repeat(picks, burst)[:total].tolist()
        return drawn
    counts = quotas(config, lengths, total)
    if strategy is _S.SEQUENTIAL:
        return [i for i, c in enumerate(counts) for _ in range(c)]
    if strategy is _S.ROUND_ROBIN:
        return _cycle_blocks(range(len(counts)), counts, burst)
    if strategy is _S.ALTERNATING:
        return _cycle_blocks(config.alternating_pattern or (), counts, burst)
    return _weighted_order(counts, burst)


def expected_shares(
    config: MultiDataLoaderConfig, lengths: Sequence[int | None], total: int
) -> list[float]:
    """Each loader's expected share of an epoch of ``total`` steps: ``q_i / T`` (0.0 for an empty
    epoch), or the normalised weight ``w_i`` under WEIGHTED_RANDOM, whose draws are i.i.d.

    The expected side of the one proportions report, :meth:`statefuldata.EpochIterator.proportions`.

    Example:
        >>> cfg = MultiDataLoaderConfig(sampling_strategy="weighted", dataloader_weights=[3, 1])
        >>> expected_shares(cfg, [8, 8], 16)
        [0.75, 0.25]
    """
    if config.sampling_strategy is _S.WEIGHTED_RANDOM:
        return [float(w) for w in _shares(config, len(lengths))]
    return [q / total if total else 0.0 for q in quotas(config, lengths, total)]


def rng_state_to_plain(rs: np.random.RandomState) -> PlainMT19937:
    """``rs``'s state as plain types (:func:`statefuldata.seeding.mt19937_to_plain`)."""
    return mt19937_to_plain(rs.get_state(legacy=True))


def rng_state_from_plain(state: Sequence[Any]) -> np.random.RandomState:
    """Rebuild the RandomState saved by :func:`rng_state_to_plain`, exactly.

    Raises:
        ValueError: ``state`` is not a 5-entry ``("MT19937", keys, pos, has_gauss, cached)`` record.
    """
    rs = np.random.RandomState(0)
    rs.set_state(mt19937_from_plain(state))
    return rs
