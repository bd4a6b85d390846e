"""A keyed bijection over ``range(n)``: index ``i`` of a shuffled order in O(1), no permutation stored.

A balanced Feistel network permutes the smallest even-bit domain ``[0, 4^h)`` that covers ``n``; cycle
walking (re-applying the network while the value is ``>= n``) restricts it to ``range(n)``. Because the
domain is at most ``4n``, a walk takes under four steps on average. Evaluation is vectorised in numpy
over chunks of positions, so a whole epoch costs a few array operations per index and memory stays
O(chunk), whatever ``n`` is.
"""

from __future__ import annotations

import attrs
import numpy as np

from statefuldata.validators import int_at_least

__all__ = ["FeistelPermutation"]

_ROUNDS = 4
_MUL1 = np.uint64(0x9E3779B97F4A7C15)
_MUL2 = np.uint64(0xBF58476D1CE4E5B9)
_S1 = np.uint64(31)
_S2 = np.uint64(29)


@attrs.frozen
class FeistelPermutation:
    """Bijection of ``range(n)`` keyed by a 64-bit integer.

    Example:
        >>> p = FeistelPermutation(10, key=42)
        >>> sorted(p(np.arange(10)).tolist()) == list(range(10))
        True
    """

    n: int = attrs.field(
        converter=int, validator=int_at_least(1, above=True, hint="a permutation needs items")
    )
    key: int = attrs.field(converter=int)
    _half_bits: int = attrs.field(init=False)
    _round_keys: tuple[np.uint64, ...] = attrs.field(init=False, repr=False)

    @_half_bits.default
    def _default_half_bits(self) -> int:
        bits = max(2, (self.n - 1).bit_length())
        return (bits + 1) // 2

    @_round_keys.default
    def _default_round_keys(self) -> tuple[np.uint64, ...]:
        seq = np.random.SeedSequence(self.key & (2**64 - 1))
        return tuple(np.uint64(k) for k in seq.generate_state(_ROUNDS, dtype=np.uint64))

    def _encrypt(self, x: np.ndarray) -> np.ndarray:
        half = np.uint64(self._half_bits)
        mask = np.uint64((1 << self._half_bits) - 1)
        left, right = x >> half, x & mask
        for key in self._round_keys:
            f = (right ^ key) * _MUL1
            f ^= f >> _S1
            f *= _MUL2
            f ^= f >> _S2
            left, right = right, left ^ (f & mask)
        out: np.ndarray = (left << half) | right
        return out

    def __call__(self, positions: np.ndarray) -> np.ndarray:
        """Map an array of positions in ``[0, n)`` to their permuted values (int64)."""
        out = self._encrypt(np.asarray(positions, dtype=np.uint64))
        limit = np.uint64(self.n)
        outside = np.flatnonzero(out >= limit)
        while outside.size:
            walked = self._encrypt(out[outside])
            out[outside] = walked
            outside = outside[walked >= limit]
        return out.astype(np.int64)

    def at(self, position: int) -> int:
        """The value at one position."""
        if not 0 <= position < self.n:
            raise IndexError(f"position must be in [0, {self.n}) (got {position})")
        return int(self(np.array([position]))[0])
