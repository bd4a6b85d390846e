"""State records of the multi-loader scheduler (checkpoint format v1) and the loader-state split.

A loader's entry is the v1 ``DataLoaderState`` plus one extra key, :data:`KEY_LOADER_STATE`, holding
the rest of that loader's own ``StatefulDataLoader.state_dict()``. The sampler and dataset parts of
that state are *moved* (not copied) into the v1 ``sampler_state`` and ``dataset_state`` fields, so each
is written once and put back on restore.
"""

from __future__ import annotations

import copy
from typing import Any

import attrs

from statefuldata.errors import IncompatibleStateError

__all__ = ["DataLoaderState", "join_loader_state", "split_loader_state"]

STATE_VERSION = 1
KEY_LOADER_STATE = "loader_state"

# Where torchdata keeps the sampler and the dataset state inside StatefulDataLoader.state_dict().
_SINGLE_SAMPLER = ("_sampler_iter_state", "sampler_state")
_SINGLE_DATASET = ("dataset_state",)
_MULTI_MAIN = ("_snapshot", "_main_snapshot")
_MULTI_WORKERS = ("_snapshot", "_worker_snapshots")


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


def _pop(tree: dict[str, Any], path: tuple[str, ...]) -> Any:
    node = tree
    for key in path[:-1]:
        node = node.get(key) if isinstance(node, dict) else None
    if not isinstance(node, dict) or path[-1] not in node:
        return None
    return node.pop(path[-1])


def _put(tree: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    node = tree
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value


def split_loader_state(state: dict[str, Any] | None) -> DataLoaderState:
    """Move the sampler and dataset parts of a loader's own state into the v1 fields."""
    if state is None:
        return DataLoaderState()
    rest = copy.copy(state)
    sampler: Any = None
    dataset: Any = None
    if "_snapshot" in rest:  # multi-process: main snapshot holds the sampler, workers the dataset
        rest["_snapshot"] = snapshot = dict(rest["_snapshot"])
        snapshot["_main_snapshot"] = main = dict(snapshot["_main_snapshot"])
        if isinstance(main.get("_sampler_iter_state"), dict):
            main["_sampler_iter_state"] = dict(main["_sampler_iter_state"])
            sampler = _pop(rest, (*_MULTI_MAIN, *_SINGLE_SAMPLER))
        workers = {}
        snapshot["_worker_snapshots"] = {
            k: dict(v) for k, v in snapshot["_worker_snapshots"].items()
        }
        for key, worker in snapshot["_worker_snapshots"].items():
            if worker.get("dataset_state") is not None:
                workers[key] = worker.pop("dataset_state")
        dataset = workers or None
    else:
        if isinstance(rest.get("_sampler_iter_state"), dict):
            rest["_sampler_iter_state"] = dict(rest["_sampler_iter_state"])
            sampler = _pop(rest, _SINGLE_SAMPLER)
        if rest.get("dataset_state") is not None:
            dataset = rest.pop("dataset_state")
    return DataLoaderState(sampler_state=sampler, dataset_state=dataset, loader_state=rest)


def join_loader_state(entry: DataLoaderState) -> dict[str, Any] | None:
    """Inverse of :func:`split_loader_state`: the loader's own state, ready for load_state_dict."""
    if entry.loader_state is None:
        return None
    state = copy.deepcopy(entry.loader_state)
    if "_snapshot" in state:
        if entry.sampler_state is not None:
            _put(state, (*_MULTI_MAIN, *_SINGLE_SAMPLER), entry.sampler_state)
        workers = state["_snapshot"]["_worker_snapshots"]
        for key, worker in workers.items():
            worker.setdefault("dataset_state", None)
            if entry.dataset_state is not None and key in entry.dataset_state:
                worker["dataset_state"] = entry.dataset_state[key]
    else:
        if entry.sampler_state is not None:
            _put(state, _SINGLE_SAMPLER, entry.sampler_state)
        if "fetcher_state" in state or "_num_yielded" in state:
            state["dataset_state"] = entry.dataset_state
    return state
