"""trainer.validators builds on statefuldata.validators: one int check, one enum conversion."""

from __future__ import annotations

import attrs
import numpy as np
import pytest

import statefuldata.validators as shared
from trainer.validators import as_list, int_at_least, to_enum


@attrs.frozen
class Knobs:
    steps: int = attrs.field(default=1, validator=int_at_least(1))
    every: int | None = attrs.field(default=None, validator=int_at_least(1, optional=True))


def test_int_at_least_keeps_the_trainers_messages() -> None:
    assert Knobs(steps=2, every=None).every is None
    with pytest.raises(ValueError, match=r"'steps' must be >= 1 \(got 0\)$"):
        Knobs(steps=0)
    with pytest.raises(
        ValueError, match=r"'every' must be >= 1 \(got 0\); pass None to disable it"
    ):
        Knobs(every=0)
    with pytest.raises(TypeError, match=r"'every' must be an int or None \(got True\)"):
        Knobs(every=True)
    with pytest.raises(TypeError, match=r"'steps' must be an int \(got 2.0\)"):
        Knobs(steps=2.0)
    # configs are saved as they are: a numpy integer would not load with weights_only=True
    with pytest.raises(TypeError, match=r"'steps' must be an int \(got np.int64\(2\)\)"):
        Knobs(steps=np.int64(2))


def test_the_enum_conversion_is_the_shared_one() -> None:
    assert to_enum is shared.to_enum


def test_as_list_is_the_one_normaliser() -> None:
    from trainer.checkpoints import format as checkpoint_format
    from trainer.data import as_list as data_as_list

    assert as_list(None) == [] and as_list((1, 2)) == [1, 2] and as_list([3]) == [3]
    assert as_list("x") == ["x"] and as_list({"a": 1}) == [{"a": 1}]
    assert data_as_list is as_list and checkpoint_format.as_list is as_list
