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

__all__ = ["DataLoaderState", "check_iterator_state", "join_loader_state", "split_loader_state"]

STATE_VERSION = 1
KEY_LOADER_STATE = "loader_state"
KEYS_ITERATOR = (
    "schedule_position",
    "loader_states",
    "total_batches",
    "loader_cycles",
    "prefetched_batches",
    "epoch",
    "fingerprint",
    "version",
    "loader_batches",
    "loader_samples",
)


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


def check_iterator_state(
    phase: str,
    state: dict[str, Any],
    *,
    n_loaders: int,
    fingerprint: dict[str, Any],
    strict: bool,
) -> None:
    """Raise ``IncompatibleStateError`` unless ``state`` is an iterator state this phase can load."""
    if not isinstance(state, dict) or set(state) != set(KEYS_ITERATOR):
        got = sorted(state) if isinstance(state, dict) else type(state).__name__
        raise IncompatibleStateError(
            f"{phase} iterator state must have keys {sorted(KEYS_ITERATOR)} (got {got})"
        )
    if state["version"] != STATE_VERSION:
        raise IncompatibleStateError(
            f"{phase} iterator state has version {state['version']}, this library reads "
            f"version {STATE_VERSION}; upgrade statefuldata to read it"
        )
    if len(state["loader_states"]) != n_loaders:
        raise IncompatibleStateError(
            f"{phase} state has {len(state['loader_states'])} loaders, this manager has "
            f"{n_loaders}; rebuild the pipeline the state was taken with"
        )
    if strict and state["fingerprint"] != fingerprint:
        diff = {
            key: {"saved": state["fingerprint"].get(key), "current": value}
            for key, value in fingerprint.items()
            if state["fingerprint"].get(key) != value
        }
        raise IncompatibleStateError(
            f"{phase} state was taken under another configuration: {diff}. Rebuild the "
            "pipeline with the saved configuration, or pass strict=False to load it anyway"
        )
