"""Validators and converters shared by the package's configs, specs and stateful objects.

Field validators follow attrs' ``(instance, attribute, value)`` signature and compose with
``attrs.validators`` (``optional``, ``and_``, ``instance_of``); the same checks are available as plain
functions for arguments. Messages read ``'name' must be ... (got value); what to do``. The enum
semantics are those of ``trainer.validators``: a member, its value or its name, in any case.

Example:
    >>> import enum
    >>> class Mode(enum.Enum):
    ...     FAST = "fast"
    >>> to_enum(Mode, "FAST", "mode")
    <Mode.FAST: 'fast'>
    >>> check_int("batch_size", 0, minimum=1)
    Traceback (most recent call last):
    ...
    ValueError: 'batch_size' must be >= 1 (got 0)
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import Any, TypeVar

import attrs
import numpy as np

__all__: list[str] = []  # helpers for the package's modules, not part of its surface

_E = TypeVar("_E", bound=enum.Enum)
Validator = Callable[[Any, "attrs.Attribute[Any]", Any], None]


def is_int(value: object) -> bool:
    """An int or numpy integer, not a bool."""
    return not isinstance(value, bool) and isinstance(value, (int, np.integer))


def to_enum(enum_cls: type[_E], value: object, name: str) -> _E:
    """``value`` as a member of ``enum_cls``: a member, its value, or its name (any case).

    Raises:
        ValueError: ``'name' must be one of 'a', 'b' (got value)``.
    """
    if isinstance(value, enum_cls):
        return value
    if isinstance(value, str):
        key = value.strip().lower()
        for member in enum_cls:
            if key in (str(member.value).lower(), member.name.lower()):
                return member
    valid = ", ".join(repr(m.value) for m in enum_cls)
    raise ValueError(f"'{name}' must be one of {valid} (got {value!r})")


def check_int(
    name: str,
    value: object,
    *,
    minimum: int,
    hint: str = "",
    above: bool = False,
    single: bool = False,
    error: type[Exception] = ValueError,
    optional: bool = False,
    allow_numpy: bool = True,
) -> None:
    """Raise unless ``value`` is an int (not a bool) >= ``minimum``.

    Args:
        name: The argument or field, as the message names it.
        value: What was received.
        minimum: The smallest allowed value.
        hint: What to do, appended to a range error.
        above: Phrase the bound as ``> minimum - 1`` (``'n' must be > 0``).
        single: One message for type and range, ``'name' must be an int >= minimum (got v)``,
            raised as ``error``; else a wrong type is a ``TypeError`` and a wrong value a
            ``ValueError`` saying ``'name' must be >= minimum (got v); hint``.
        error: The exception type of a ``single`` message (e.g. ``IncompatibleStateError``).
        optional: None is allowed too (the type message then reads ``an int or None``).
        allow_numpy: Accept numpy integers; False where the value is stored as it is in a state
            or snapshot that must hold plain ints.
    """
    if optional and value is None:
        return
    typed = is_int(value) if allow_numpy else isinstance(value, int) and not isinstance(value, bool)
    if single:
        if not typed or value < minimum:  # type: ignore[operator]
            raise error(f"'{name}' must be an int >= {minimum} (got {value!r})")
        return
    if not typed:
        raise TypeError(
            f"'{name}' must be {'an int or None' if optional else 'an int'} (got {value!r})"
        )
    if value < minimum:  # type: ignore[operator]
        bound = f"> {minimum - 1}" if above else f">= {minimum}"
        raise ValueError(f"'{name}' must be {bound} (got {value}){'; ' + hint if hint else ''}")


def int_at_least(
    minimum: int,
    *,
    hint: str = "",
    above: bool = False,
    single: bool = False,
    optional: bool = False,
    allow_numpy: bool = True,
) -> Validator:
    """Field validator of :func:`check_int` (same options); composes with ``attrs.validators``."""

    def check(_instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
        check_int(
            attribute.name,
            value,
            minimum=minimum,
            hint=hint,
            above=above,
            single=single,
            optional=optional,
            allow_numpy=allow_numpy,
        )

    return check


def check_epoch(epoch: object) -> int:
    """``epoch`` if it is an int >= 0; raises ``ValueError`` otherwise."""
    check_int("epoch", epoch, minimum=0, single=True)
    return int(epoch)  # type: ignore[call-overload,no-any-return]


def numpy_int_to_int(value: object) -> object:
    """Converter: a numpy integer as an int; anything else unchanged (validated afterwards)."""
    return int(value) if isinstance(value, np.integer) else value
