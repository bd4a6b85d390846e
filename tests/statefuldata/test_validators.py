"""The shared validators: one enum semantics in both packages, one integer check."""

from __future__ import annotations

import enum

import attrs
import numpy as np
import pytest

from statefuldata import IncompatibleStateError
from statefuldata import validators as ours
from trainer import validators as theirs


class Mode(enum.Enum):
    FAST = "fast"
    SLOW_AND_STEADY = "Slow"


@pytest.mark.parametrize(
    "value", [Mode.FAST, "fast", "FAST", " Fast ", "slow", "SLOW_AND_STEADY", "slow_and_steady"]
)
def test_both_packages_accept_the_same_enum_forms(value: object) -> None:
    assert ours.to_enum(Mode, value, "mode") is theirs.to_enum(Mode, value, "mode")


@pytest.mark.parametrize("value", ["fastest", 1, None, "FAST_"])
def test_both_packages_reject_alike_naming_the_value_and_the_allowed_ones(value: object) -> None:
    message = rf"'mode' must be one of 'fast', 'Slow' \(got {value!r}\)"
    with pytest.raises(ValueError, match=message):
        ours.to_enum(Mode, value, "mode")
    with pytest.raises(ValueError, match=message):
        theirs.to_enum(Mode, value, "mode")


def test_check_int_phrasings() -> None:
    ours.check_int("k", np.int64(3), minimum=3)
    with pytest.raises(TypeError, match=r"'k' must be an int \(got True\)"):
        ours.check_int("k", True, minimum=0)
    with pytest.raises(ValueError, match=r"'k' must be >= 2 \(got 1\); use 2$"):
        ours.check_int("k", 1, minimum=2, hint="use 2")
    with pytest.raises(ValueError, match=r"'k' must be > 0 \(got 0\)$"):
        ours.check_int("k", 0, minimum=1, above=True)
    with pytest.raises(IncompatibleStateError, match=r"'k' must be an int >= 0 \(got 'x'\)"):
        ours.check_int("k", "x", minimum=0, single=True, error=IncompatibleStateError)
    assert ours.check_epoch(np.int64(2)) == 2
    with pytest.raises(ValueError, match=r"'epoch' must be an int >= 0 \(got -1\)"):
        ours.check_epoch(-1)


def test_int_at_least_is_an_attrs_validator_composable_with_optional() -> None:
    @attrs.frozen
    class Box:
        size: int | None = attrs.field(validator=attrs.validators.optional(ours.int_at_least(1)))

    assert Box(None).size is None and Box(2).size == 2
    with pytest.raises(ValueError, match=r"'size' must be >= 1 \(got 0\)"):
        Box(0)


def test_check_int_optional_and_plain_int_only() -> None:
    import numpy as np

    ours.check_int("k", None, minimum=1, optional=True)  # None allowed
    with pytest.raises(TypeError, match=r"'k' must be an int or None \(got 1.5\)"):
        ours.check_int("k", 1.5, minimum=1, optional=True)
    with pytest.raises(TypeError, match=r"'k' must be an int \(got None\)"):
        ours.check_int("k", None, minimum=1)
    ours.check_int("k", np.int64(3), minimum=1)  # numpy integers by default
    with pytest.raises(TypeError, match=r"'k' must be an int \(got np.int64\(3\)\)"):
        ours.check_int("k", np.int64(3), minimum=1, allow_numpy=False)
