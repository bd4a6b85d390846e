"""State records of the multi-loader scheduler (checkpoint format v1) and the loader-state split.

A loader's entry is the v1 ``DataLoaderState`` plus one extra key, :data:`KEY_LOADER_STATE`, holding
the rest of that loader's own ``StatefulDataLoader.state_dict()``. The sampler and dataset parts of
that state are *moved* (not copied) into the v1 ``sampler_state`` and ``dataset_state`` fields, so each
is written once and put back on restore. Where torchdata keeps them is
:mod:`statefuldata.torchdata_state`'s business.
"""

from __future__ import annotations

from typing import Any

import attrs

from statefuldata.errors import IncompatibleStateError
from statefuldata.torchdata_state import join_state, split_state

__all__ = ["DataLoaderState", "join_loader_state", "split_loader_state"]

STATE_VERSION = 1
KEY_LOADER_STATE = "loader_state"


@attrs.define
class DataLoaderState:
    """One loader's position (v1 "DataLoaderState" plus the loader's own remaining state).

    Keys: ``batch_idx`` (batches drawn in the loader's current pass), ``exhausted`` (its pass ended
    and it is not cycled), ``sampler_state``, ``dataset_state`` and ``loader_state``.
    """

    batch_idx: int = 0
    exhausted: bool = False
    sampler_state: dict[str, Any] | None = None
    dataset_state: dict[str, Any] | None = None
    loader_state: dict[str, Any] | None = None

    KEYS = ("batch_idx", "exhausted", "sampler_state", "dataset_state", KEY_LOADER_STATE)

    def to_dict(self) -> dict[str, Any]:
        return {key: getattr(self, key) for key in self.KEYS}

    @classmethod
    def from_dict(cls, state: dict[str, Any]) -> DataLoaderState:
        if not isinstance(state, dict) or set(state) != set(cls.KEYS):
            got = sorted(state) if isinstance(state, dict) else type(state).__name__
            raise IncompatibleStateError(
                f"a loader state must have keys {sorted(cls.KEYS)} (got {got}); pass the dict "
                "produced by DataLoaderManager.state_dict()"
            )
        return cls(**state)


def split_loader_state(state: dict[str, Any] | None) -> DataLoaderState:
    """Move the sampler and dataset parts of a loader's own state into the v1 fields."""
    sampler, dataset, rest = split_state(state)
    return DataLoaderState(sampler_state=sampler, dataset_state=dataset, loader_state=rest)


def join_loader_state(entry: DataLoaderState) -> dict[str, Any] | None:
    """Inverse of :func:`split_loader_state`: the loader's own state, ready for load_state_dict."""
    return join_state(entry.sampler_state, entry.dataset_state, entry.loader_state)
