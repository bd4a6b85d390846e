"""``Phase`` (train or validation) and ``PhasePlan``, the fixed recipe of one phase's loaders."""

from __future__ import annotations

import enum
from collections.abc import Sequence
from typing import Any

import attrs

from statefuldata.config import MultiDataLoaderConfig
from statefuldata.elastic import KEY_WORLD_SIZES, world_size_of

__all__ = ["Phase"]


class Phase(enum.Enum):
    """A phase of a :class:`~statefuldata.DataLoaderManager`: its own loaders, config and state.

    Methods taking a phase accept the member or its value (``"train"``, ``"val"``).
    """

    TRAIN = "train"
    VAL = "val"

    @classmethod
    def of(cls, value: Phase | str) -> Phase:
        """``value`` as a member; raises ``ValueError`` naming the valid values otherwise."""
        if isinstance(value, cls):
            return value
        for member in cls:
            if value == member.value:
                return member
        raise ValueError(f"phase must be one of {[p.value for p in cls]} (got {value!r})")

    @property
    def state_key(self) -> str:
        """This phase's key in the v1 ``dataloader_manager_state`` (``train_iterator_state``)."""
        return f"{self.value}_iterator_state"


@attrs.frozen(kw_only=True, eq=False)
class PhasePlan:
    """What stays fixed about one phase: config, loader names and lengths, epoch length, fingerprint."""

    phase: Phase
    config: MultiDataLoaderConfig
    names: tuple[str, ...]
    lengths: tuple[int | None, ...]
    total: int
    fingerprint: dict[str, Any]


def fingerprint_of(
    phase: Phase,
    config: MultiDataLoaderConfig,
    names: Sequence[str],
    loaders: Sequence[Any],
    lengths: Sequence[int | None],
) -> dict[str, Any]:
    """The configuration a phase's state is taken under (compared on restore)."""

    def seed_of(loader: Any) -> int | None:
        seed = getattr(loader, "seed", None)
        return getattr(getattr(loader, "sampler", None), "seed", None) if seed is None else seed

    return {
        "phase": phase.value,
        "names": list(names),
        "lengths": list(lengths),
        "batch_sizes": [getattr(ld, "batch_size", None) for ld in loaders],
        "num_workers": [getattr(ld, "num_workers", 0) for ld in loaders],
        KEY_WORLD_SIZES: [world_size_of(ld) for ld in loaders],
        "seeds": [seed_of(ld) for ld in loaders],
        "config": config.to_dict(),
    }
