from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from statefuldata import FeistelPermutation

SIZES = sorted(
    {1, 2, 3, 5, 7, 11, 13, 97, 101, 997, 7919, 65521, 10**6}
    | {2**k + d for k in range(1, 21) for d in (-1, 0, 1)}
)


def is_bijection(n: int, key: int) -> bool:
    values = FeistelPermutation(n, key=key)(np.arange(n))
    return values.min() >= 0 and values.max() < n and np.unique(values).size == n


@pytest.mark.parametrize("n", SIZES)
def test_bijection_for_listed_sizes(n: int) -> None:
    assert is_bijection(n, key=12345)


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 10**6), key=st.integers(0, 2**64 - 1))
def test_bijection_property(n: int, key: int) -> None:
    assert is_bijection(n, key)


def test_keys_give_different_orders() -> None:
    orders = {tuple(FeistelPermutation(1000, key=k)(np.arange(1000)).tolist()) for k in range(20)}
    assert len(orders) == 20


def test_at_matches_vectorised() -> None:
    p = FeistelPermutation(1001, key=9)
    assert [p.at(i) for i in range(1001)] == p(np.arange(1001)).tolist()
    with pytest.raises(IndexError, match=r"position must be in \[0, 1001\) \(got 1001\)"):
        p.at(1001)


def test_bad_size() -> None:
    with pytest.raises(ValueError, match=r"'n' must be > 0 \(got 0\)"):
        FeistelPermutation(0, key=1)
