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

__all__ = ["DataLoaderState", "IteratorState", "join_loader_state", "split_loader_state"]

STATE_VERSION = 1
KEY_LOADER_STATE = "loader_state"
#: Keys of the v1 Iterator State (plus epoch, fingerprint, version and per-loader counts).
KEY_SCHEDULE_POSITION = "schedule_position"
KEY_LOADER_STATES = "loader_states"
KEY_TOTAL_BATCHES = "total_batches"
KEY_LOADER_CYCLES = "loader_cycles"
KEY_PREFETCHED_BATCHES = "prefetched_batches"
KEY_EPOCH = "epoch"
KEY_FINGERPRINT = "fingerprint"
KEY_VERSION = "version"
KEY_LOADER_BATCHES = "loader_batches"
KEY_LOADER_SAMPLES = "loader_samples"
KEYS_ITERATOR = (
    KEY_SCHEDULE_POSITION,
    KEY_LOADER_STATES,
    KEY_TOTAL_BATCHES,
    KEY_LOADER_CYCLES,
    KEY_PREFETCHED_BATCHES,
    KEY_EPOCH,
    KEY_FINGERPRINT,
    KEY_VERSION,
    KEY_LOADER_BATCHES,
    KEY_LOADER_SAMPLES,
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
    joined: dict[str, Any] | None = join_state(
        entry.sampler_state, entry.dataset_state, entry.loader_state
    )
    return joined


@attrs.frozen(kw_only=True)
class IteratorState:
    """One phase's epoch-iterator state (v1 "Iterator State Structure"), read strictly.

    Keys: :data:`KEYS_ITERATOR`. ``loader_states`` holds one :class:`DataLoaderState` per loader;
    ``loader_cycles`` maps a loader index to its restarts this epoch.
    """

    schedule_position: int
    loader_states: tuple[DataLoaderState, ...]
    total_batches: int
    loader_cycles: dict[Any, Any]
    prefetched_batches: int
    epoch: int
    fingerprint: dict[str, Any]
    version: int
    loader_batches: list[int]
    loader_samples: list[int]

    def is_complete(self, total: int) -> bool:
        """Whether the state was taken at the end of its epoch of ``total`` steps."""
        return self.schedule_position >= total

    def to_dict(self) -> dict[str, Any]:
        out = {key: getattr(self, key) for key in KEYS_ITERATOR}
        out[KEY_LOADER_STATES] = [entry.to_dict() for entry in self.loader_states]
        return out

    @classmethod
    def from_dict(cls, state: Any, phase: str) -> IteratorState:
        """Read a state, raising ``IncompatibleStateError`` on other keys or another version."""
        if not isinstance(state, dict) or set(state) != set(KEYS_ITERATOR):
            got = sorted(state) if isinstance(state, dict) else type(state).__name__
            raise IncompatibleStateError(
                f"{phase} iterator state must have keys {sorted(KEYS_ITERATOR)} (got {got})"
            )
        if state[KEY_VERSION] != STATE_VERSION:
            raise IncompatibleStateError(
                f"{phase} iterator state has version {state[KEY_VERSION]}, this library reads "
                f"version {STATE_VERSION}; upgrade statefuldata to read it"
            )
        fields = dict(state)
        fields[KEY_LOADER_STATES] = tuple(
            DataLoaderState.from_dict(raw) for raw in state[KEY_LOADER_STATES]
        )
        return cls(**fields)

    def check_compatible(
        self, phase: str, *, n_loaders: int, fingerprint: dict[str, Any], strict: bool
    ) -> None:
        """Raise ``IncompatibleStateError`` unless a phase of ``n_loaders`` loaders can load it."""
        if len(self.loader_states) != n_loaders:
            raise IncompatibleStateError(
                f"{phase} state has {len(self.loader_states)} loaders, this manager has "
                f"{n_loaders}; rebuild the pipeline the state was taken with"
            )
        if strict and self.fingerprint != fingerprint:
            diff = {
                key: {"saved": self.fingerprint.get(key), "current": value}
                for key, value in fingerprint.items()
                if self.fingerprint.get(key) != value
            }
            raise IncompatibleStateError(
                f"{phase} state was taken under another configuration: {diff}. Rebuild the "
                "pipeline with the saved configuration, or pass strict=False to load it anyway"
            )
