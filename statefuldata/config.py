"""The multi-loader recipe: how loaders are mixed and how long an epoch is.

:class:`MultiDataLoaderConfig` is frozen, validated once at construction, and serialisable with
:meth:`MultiDataLoaderConfig.to_dict` / :meth:`MultiDataLoaderConfig.from_dict`. Checks that need the
number of loaders live in :meth:`MultiDataLoaderConfig.validate_for`, which the manager calls once it
knows its loaders. The schedule itself is built by :mod:`statefuldata.schedule`.

Example:
    >>> cfg = MultiDataLoaderConfig(sampling_strategy="weighted", dataloader_weights=[0.7, 0.3])
    >>> cfg.sampling_strategy
    <SamplingStrategy.WEIGHTED: 'weighted'>
    >>> MultiDataLoaderConfig.from_dict(cfg.to_dict()) == cfg
    True
"""

from __future__ import annotations

import enum
import logging
import math
from collections.abc import Iterable, Mapping
from typing import Any

import attrs
import numpy as np

from statefuldata.validators import int_at_least, is_int, numpy_int_to_int, to_enum

__all__ = ["EpochLengthPolicy", "MultiDataLoaderConfig", "SamplingStrategy"]

logger = logging.getLogger(__name__)


class SamplingStrategy(enum.Enum):
    """Which loader each step of an epoch draws from (see :func:`statefuldata.schedule.build_schedule`)."""

    SEQUENTIAL = "sequential"
    ROUND_ROBIN = "round_robin"
    WEIGHTED = "weighted"
    WEIGHTED_RANDOM = "weighted_random"
    ALTERNATING = "alternating"


class EpochLengthPolicy(enum.Enum):
    """How many steps an epoch has (see :func:`statefuldata.schedule.epoch_length`)."""

    SUM_OF_LENGTHS = "sum_of_lengths"
    MAX_OF_LENGTHS = "max_of_lengths"
    MIN_OF_LENGTHS = "min_of_lengths"
    FIXED_NUM_STEPS = "fixed_num_steps"


def _to_strategy(value: object) -> SamplingStrategy:
    return to_enum(SamplingStrategy, value, "sampling_strategy")


def _to_policy(value: object) -> EpochLengthPolicy:
    return to_enum(EpochLengthPolicy, value, "epoch_length_policy")


def _sequence(name: str, value: object) -> list[Any]:
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        raise TypeError(f"'{name}' must be a list or tuple (got {value!r})")
    return list(value)


def _to_weights(value: object) -> tuple[float, ...] | None:
    if value is None:
        return None
    items = _sequence("dataloader_weights", value)
    for i, w in enumerate(items):
        if isinstance(w, bool) or not isinstance(w, (int, float, np.integer, np.floating)):
            raise TypeError(f"'dataloader_weights[{i}]' must be a number (got {w!r})")
    # numpy floats go through their shortest repr, so np.float32(0.1) is read as 0.1
    return tuple(float(str(w)) if isinstance(w, np.floating) else float(w) for w in items)


def _to_pattern(value: object) -> tuple[int, ...] | None:
    if value is None:
        return None
    items = _sequence("alternating_pattern", value)
    for i, p in enumerate(items):
        if not is_int(p):
            raise TypeError(f"'alternating_pattern[{i}]' must be a loader index (int) (got {p!r})")
    return tuple(int(p) for p in items)


def _to_names(value: object) -> tuple[str, ...] | None:
    if value is None:
        return None
    items = _sequence("dataloader_names", value)
    for i, n in enumerate(items):
        if not isinstance(n, str):
            raise TypeError(f"'dataloader_names[{i}]' must be a str (got {n!r})")
    return tuple(items)


def _check_weights(
    _inst: object, _attr: attrs.Attribute[Any], value: tuple[float, ...] | None
) -> None:
    if value is None:
        return
    if not value:
        raise ValueError(
            "'dataloader_weights' must not be empty (got []); pass one weight per loader, "
            "e.g. [0.5, 0.5], or None"
        )
    for i, w in enumerate(value):
        if not math.isfinite(w):
            raise ValueError(
                f"'dataloader_weights[{i}]' must be finite (got {w}); use a non-negative number"
            )
        if w < 0:
            raise ValueError(
                f"'dataloader_weights[{i}]' must be >= 0 (got {w}); use 0 to never draw a loader"
            )
    if sum(value) <= 0:
        raise ValueError(
            f"'dataloader_weights' must have a positive sum (got {list(value)}); give at least one "
            "loader a weight > 0"
        )


def _check_pattern(
    _inst: object, _attr: attrs.Attribute[Any], value: tuple[int, ...] | None
) -> None:
    if value is None:
        return
    if not value:
        raise ValueError(
            "'alternating_pattern' must not be empty (got []); pass loader indices, e.g. [0, 0, 1]"
        )
    for i, p in enumerate(value):
        if p < 0:
            raise ValueError(
                f"'alternating_pattern[{i}]' must be a loader index >= 0 (got {p}); loaders are "
                "numbered 0..n-1 in the order they are given"
            )


def _check_unique(label: str, names: tuple[str, ...]) -> None:
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(
            f"{label} must be unique (got {list(names)}; repeated: {duplicates}); "
            "give every loader its own name"
        )


def _check_names(_inst: object, _attr: attrs.Attribute[Any], value: tuple[str, ...] | None) -> None:
    if value is not None:
        _check_unique("'dataloader_names'", value)


def _to_bool(value: object) -> object:
    return bool(value) if isinstance(value, np.bool_) else value


def _check_bool(_inst: object, attr: attrs.Attribute[Any], value: object) -> None:
    if not isinstance(value, bool):
        raise TypeError(f"'{attr.name}' must be True or False (got {value!r})")


def _policy_values() -> str:
    return ", ".join(repr(p.value) for p in EpochLengthPolicy)


@attrs.frozen(kw_only=True)
class MultiDataLoaderConfig:
    """How a :class:`~statefuldata.DataLoaderManager` mixes its loaders.

    Args:
        sampling_strategy: A :class:`SamplingStrategy` or its string value.
        dataloader_weights: One non-negative weight per loader (WEIGHTED, WEIGHTED_RANDOM); they are
            normalised, and read as the decimals they print as (``Fraction(str(w))``).
        alternating_pattern: Loader indices repeated over the epoch (ALTERNATING).
        dataloader_names: Optional unique names, one per loader.
        epoch_length_policy: An :class:`EpochLengthPolicy` or its string value.
        steps_per_epoch: Epoch length under FIXED_NUM_STEPS (>= 0).
        cycle_short_loaders: Restart an exhausted loader (True) or skip its remaining entries.
        burst_size: Each schedule entry is repeated this many times in a row (quotas stay exact).
        choice_rng_seed: Seed of WEIGHTED_RANDOM's per-epoch choice RNG (>= 0).

    Fields a strategy or policy does not use (weights under ROUND_ROBIN, say) are kept but ignored,
    with one WARNING at construction.

    Example:
        >>> MultiDataLoaderConfig(sampling_strategy="alternating", alternating_pattern=[0, 0, 1])
        ... # doctest: +ELLIPSIS
        MultiDataLoaderConfig(sampling_strategy=<SamplingStrategy.ALTERNATING: 'alternating'>, ...)
    """

    sampling_strategy: SamplingStrategy = attrs.field(
        default=SamplingStrategy.SEQUENTIAL,
        converter=_to_strategy,
    )
    dataloader_weights: tuple[float, ...] | None = attrs.field(
        default=None, converter=_to_weights, validator=_check_weights
    )
    alternating_pattern: tuple[int, ...] | None = attrs.field(
        default=None, converter=_to_pattern, validator=_check_pattern
    )
    dataloader_names: tuple[str, ...] | None = attrs.field(
        default=None, converter=_to_names, validator=_check_names
    )
    epoch_length_policy: EpochLengthPolicy = attrs.field(
        default=EpochLengthPolicy.SUM_OF_LENGTHS,
        converter=_to_policy,
    )
    steps_per_epoch: int | None = attrs.field(
        default=None,
        converter=numpy_int_to_int,
        validator=attrs.validators.optional(int_at_least(0, hint="use 0 or more steps, or None")),
    )
    cycle_short_loaders: bool = attrs.field(default=True, converter=_to_bool, validator=_check_bool)
    burst_size: int = attrs.field(
        default=1, converter=numpy_int_to_int, validator=int_at_least(1, hint="use 1 for no bursts")
    )
    choice_rng_seed: int = attrs.field(
        default=0,
        converter=numpy_int_to_int,
        validator=int_at_least(0, hint="seeds are non-negative, e.g. 0"),
    )

    def __attrs_post_init__(self) -> None:
        strategy = self.sampling_strategy
        weighted = strategy in (SamplingStrategy.WEIGHTED, SamplingStrategy.WEIGHTED_RANDOM)
        if weighted and self.dataloader_weights is None:
            raise ValueError(
                f"sampling_strategy={strategy.value!r} needs 'dataloader_weights' (got None); pass "
                "one non-negative weight per loader, e.g. dataloader_weights=[0.5, 0.5]"
            )
        alternating = strategy is SamplingStrategy.ALTERNATING
        if alternating and self.alternating_pattern is None:
            raise ValueError(
                "sampling_strategy='alternating' needs 'alternating_pattern' (got None); pass the "
                "loader indices to repeat, e.g. alternating_pattern=[0, 0, 1]"
            )
        fixed = self.epoch_length_policy is EpochLengthPolicy.FIXED_NUM_STEPS
        if fixed and self.steps_per_epoch is None:
            raise ValueError(
                "epoch_length_policy='fixed_num_steps' needs 'steps_per_epoch' (got None); pass "
                "e.g. steps_per_epoch=1000, or choose another policy among " + _policy_values()
            )
        unused = [
            name
            for name, is_unused in (
                ("dataloader_weights", self.dataloader_weights is not None and not weighted),
                ("alternating_pattern", self.alternating_pattern is not None and not alternating),
                ("steps_per_epoch", self.steps_per_epoch is not None and not fixed),
            )
            if is_unused
        ]
        if unused:
            logger.warning(
                "MultiDataLoaderConfig: %s ignored under sampling_strategy=%r, "
                "epoch_length_policy=%r; remove them or change the strategy/policy",
                ", ".join(unused),
                strategy.value,
                self.epoch_length_policy.value,
            )

    def validate_for(self, num_loaders: int, names: list[str] | None = None) -> None:
        """Check the config against the loaders it is about to drive.

        Args:
            num_loaders: How many loaders there are (>= 1).
            names: The loaders' names when the caller has them (e.g. from a dict of loaders); they
                must be unique, one per loader, and equal ``dataloader_names`` when both are given.

        Raises:
            ValueError: A weight count, pattern index or name count does not fit ``num_loaders``.
        """
        if not is_int(num_loaders):
            raise TypeError(f"'num_loaders' must be an int (got {num_loaders!r})")
        if num_loaders < 1:
            raise ValueError(f"need at least one loader (got {num_loaders}); pass one or more")
        weights = self.dataloader_weights
        if weights is not None and len(weights) != num_loaders:
            raise ValueError(
                f"'dataloader_weights' has {len(weights)} entries {list(weights)} but there are "
                f"{num_loaders} loaders; pass exactly one weight per loader, in loader order"
            )
        for i, p in enumerate(self.alternating_pattern or ()):
            if p >= num_loaders:
                raise ValueError(
                    f"'alternating_pattern[{i}]' is {p}, out of range for {num_loaders} loaders; "
                    f"use indices 0..{num_loaders - 1}"
                )
        own = self.dataloader_names
        if own is not None and len(own) != num_loaders:
            raise ValueError(
                f"'dataloader_names' has {len(own)} entries {list(own)} but there are "
                f"{num_loaders} loaders; pass exactly one name per loader"
            )
        if names is not None:
            given = _to_names(names) or ()
            _check_unique("loader names", given)
            if len(given) != num_loaders:
                raise ValueError(
                    f"got {len(given)} loader names {list(given)} for {num_loaders} loaders; "
                    "pass exactly one name per loader"
                )
            if own is not None and own != given:
                raise ValueError(
                    f"loader names {list(given)} differ from the config's 'dataloader_names' "
                    f"{list(own)}; drop one of them or make them equal"
                )

    def to_dict(self) -> dict[str, Any]:
        """A plain-typed snapshot (enum values as strings, tuples as lists)."""
        out: dict[str, Any] = {}
        for field in attrs.fields(type(self)):
            value = getattr(self, field.name)
            if isinstance(value, enum.Enum):
                value = value.value
            elif isinstance(value, tuple):
                value = list(value)
            out[field.name] = value
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> MultiDataLoaderConfig:
        """Rebuild a config from :meth:`to_dict` output; missing keys take their defaults.

        Raises:
            ValueError: On an unknown key (listing the valid ones) or an invalid value.
        """
        valid = [f.name for f in attrs.fields(cls)]
        unknown = sorted(set(data) - set(valid))
        if unknown:
            raise ValueError(
                f"unknown MultiDataLoaderConfig keys {unknown}; valid keys are {valid}"
            )
        return cls(**dict(data))
