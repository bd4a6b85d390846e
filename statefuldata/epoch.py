"""One epoch of a multi-loader schedule: the cursor that walks it and the state it reports.

:class:`EpochIterator` follows the schedule built for ``(config, lengths, epoch)``, draws each entry
from its loader's live pass (starting a fresh pass when one ends, or skipping the loader when it is
not cycled), and reports the v1 Iterator State. :class:`statefuldata.DataLoaderManager` owns the
groups of loaders and creates these iterators.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterator
from typing import Any

import attrs
import numpy as np
import torch

from statefuldata.config import MultiDataLoaderConfig, SamplingStrategy
from statefuldata.loader import SeededStatefulDataLoader, close_loader, frozen_heap_for_fork
from statefuldata.schedule import build_schedule, quotas, rng_state_from_plain
from statefuldata.state import STATE_VERSION, split_loader_state

__all__ = [
    "Cursor",
    "EpochIterator",
    "Group",
    "drop_pass",
    "fingerprint_of",
    "park_pass",
    "start_pass",
]

logger = logging.getLogger(__name__)

_SKIPPED = object()
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


def _samples_in(batch: Any) -> int:
    """Leading dimension of the first tensor-like leaf of a batch (1 when there is none)."""
    if type(batch) is torch.Tensor and batch.dim():
        return len(batch)
    while True:
        if hasattr(batch, "shape") and len(batch.shape) > 0:
            return int(batch.shape[0])
        if isinstance(batch, dict) and batch:
            batch = next(iter(batch.values()))
        elif isinstance(batch, (list, tuple)) and batch:
            if not hasattr(batch[0], "shape") and not isinstance(batch[0], (dict, list, tuple)):
                return len(batch)
            batch = batch[0]
        else:
            return 1


def _in_flight(loader: Any) -> int:
    """Batches a multi-process loader has requested but not yet handed out (prefetch depth)."""
    it = getattr(loader, "_iterator", None)
    sent, received = getattr(it, "_send_idx", 0), getattr(it, "_rcvd_idx", 0)
    return max(0, int(sent) - int(received))


@attrs.define(eq=False)
class Cursor:
    """Where one loader stands: its live pass, batches drawn in it, and whether it is done.

    ``parked`` holds the loader's state while its workers are released mid-pass
    (:meth:`DataLoaderManager.release_workers`); the next draw resumes the pass from it.
    """

    loader: Any
    iterator: Iterator[Any] | None = None
    batch_idx: int = 0
    exhausted: bool = False
    parked: dict[str, Any] | None = None


def start_pass(loader: Any) -> Iterator[Any]:
    if getattr(loader, "num_workers", 0) > 0 and not isinstance(loader, SeededStatefulDataLoader):
        with frozen_heap_for_fork():
            return iter(loader)
    return iter(loader)


def drop_pass(cursor: Cursor, *, keep_workers: bool = False) -> None:
    """Forget the cursor's live pass; stop its workers unless they persist and ``keep_workers``."""
    if not (keep_workers and getattr(cursor.loader, "persistent_workers", False)):
        close_loader(cursor.loader)
    cursor.iterator, cursor.parked = None, None


def park_pass(cursor: Cursor) -> None:
    """Stop the cursor's worker processes but keep its position: the pass resumes at its next draw."""
    if cursor.iterator is None or getattr(cursor.loader, "num_workers", 0) == 0:
        if cursor.iterator is None:
            close_loader(cursor.loader)  # e.g. persistent workers idle after a finished pass
        return
    state = copy.deepcopy(cursor.loader.state_dict())
    drop_pass(cursor)
    cursor.loader.load_state_dict(copy.deepcopy(state))
    cursor.parked = state


@attrs.define(eq=False)
class Group:
    """The loaders of one phase, their config and where each stands."""

    phase: str
    config: MultiDataLoaderConfig
    names: tuple[str, ...]
    cursors: list[Cursor]
    lengths: list[int | None]
    total: int
    fingerprint: dict[str, Any]
    pending: dict[str, Any] | None = None
    pending_rng: Any = None
    current: EpochIterator | None = None
    generation: int = 0
    warned: set[int] = attrs.field(factory=set)
    requested: int | None = None  # set_epoch() for the next create_epoch_iterator(phase)


def fingerprint_of(
    phase: str, config: MultiDataLoaderConfig, names, loaders, lengths
) -> dict[str, Any]:
    def seed_of(loader: Any) -> int | None:
        seed = getattr(loader, "seed", None)
        return getattr(getattr(loader, "sampler", None), "seed", None) if seed is None else seed

    return {
        "phase": phase,
        "names": list(names),
        "lengths": list(lengths),
        "batch_sizes": [getattr(ld, "batch_size", None) for ld in loaders],
        "num_workers": [getattr(ld, "num_workers", 0) for ld in loaders],
        "seeds": [seed_of(ld) for ld in loaders],
        "config": config.to_dict(),
    }


class EpochIterator:
    """Yields ``(loader_idx, loader_name, batch)`` for one epoch of one phase, following the schedule."""

    def __init__(self, group: Group, epoch: int, rng_plain: Any) -> None:
        self._group, self.epoch = group, epoch
        self.choice_rng = rng_plain
        rng = None if rng_plain is None else rng_state_from_plain(rng_plain)
        self.schedule = build_schedule(group.config, group.lengths, epoch, rng=rng)
        n = len(group.cursors)
        self.position, self.total_batches = 0, 0
        self.loader_cycles = dict.fromkeys(range(n), 0)
        self.loader_batches, self.loader_samples = [0] * n, [0] * n
        self._generation = group.generation

    def __iter__(self) -> EpochIterator:
        return self

    def __len__(self) -> int:
        return len(self.schedule)

    def __next__(self) -> tuple[int, str, Any]:
        group = self._group
        if self._generation != group.generation:
            raise RuntimeError(
                "this epoch iterator was superseded by load_state_dict() or a newer "
                "create_epoch_iterator(); create a new one to continue from the loaded state"
            )
        schedule, position = self.schedule, self.position
        while position < len(schedule):
            index = schedule[position]
            cursor = group.cursors[index]
            batch = _SKIPPED
            if cursor.iterator is not None and not cursor.exhausted:
                batch = next(cursor.iterator, _SKIPPED)  # fast path: the loader's pass goes on
            if batch is _SKIPPED:
                batch = self._fetch(cursor, index)
            else:
                cursor.batch_idx += 1
            position += 1
            self.position = position
            if batch is not _SKIPPED:
                self.total_batches += 1
                self.loader_batches[index] += 1
                self.loader_samples[index] += _samples_in(batch)
                return index, group.names[index], batch
        raise StopIteration

    def _fetch(self, cursor: Cursor, index: int) -> Any:
        """Slow path: the loader has no live pass, or its pass just ended."""
        if cursor.exhausted:
            return _SKIPPED
        if cursor.iterator is not None:  # its pass just ended (the fast path saw StopIteration)
            self._check_length(cursor, index)
            cursor.iterator = None
            cursor.batch_idx = 0
            if not self._group.config.cycle_short_loaders and self.loader_batches[index] > 0:
                cursor.exhausted = True
                return _SKIPPED
            if self.loader_batches[index] > 0:
                self.loader_cycles[index] += 1
        for _attempt in range(2):  # a fresh pass (a restored one may be empty), then one more
            if cursor.iterator is None:
                cursor.iterator, cursor.parked = start_pass(cursor.loader), None
            try:
                batch = next(cursor.iterator)
            except StopIteration:
                self._check_length(cursor, index)
                cursor.iterator, cursor.batch_idx = None, 0
                if not self._group.config.cycle_short_loaders and self.loader_batches[index] > 0:
                    cursor.exhausted = True
                    return _SKIPPED
                if self.loader_batches[index] > 0:
                    self.loader_cycles[index] += 1
                continue
            cursor.batch_idx += 1
            return batch
        raise RuntimeError(
            f"loader {self._group.names[index]!r} yielded no batch in a fresh pass; an empty loader "
            "cannot be scheduled (check its dataset length, batch_size and drop_last)"
        )

    def _check_length(self, cursor: Cursor, index: int) -> None:
        """One WARNING per loader whose pass yields another number of batches than its len()."""
        group = self._group
        declared = group.lengths[index]
        if declared is None or cursor.batch_idx in (0, declared) or index in group.warned:
            return
        group.warned.add(index)
        logger.warning(
            "loader %r declares %d batches (len) but its pass yielded %d: the epoch length and "
            "quotas are computed from len(), so passes drift against epochs. Make __len__ match "
            "what one pass yields (with workers, an iterable's last batch of each worker can be "
            "partial: shard so that every worker's share divides by the batch size, or use "
            "drop_last)",
            group.names[index],
            declared,
            cursor.batch_idx,
        )

    def state_dict(self) -> dict[str, Any]:
        """The v1 Iterator State (plus epoch, fingerprint, version and per-loader counts)."""
        entries = []
        for cursor in self._group.cursors:
            own = cursor.parked if cursor.parked is not None else cursor.loader.state_dict()
            entry = split_loader_state(copy.deepcopy(own))
            entry.batch_idx, entry.exhausted = cursor.batch_idx, cursor.exhausted
            entries.append(entry.to_dict())
        return {
            "schedule_position": self.position,
            "loader_states": entries,
            "total_batches": self.total_batches,
            "loader_cycles": dict(self.loader_cycles),
            "prefetched_batches": sum(_in_flight(c.loader) for c in self._group.cursors),
            "epoch": self.epoch,
            "fingerprint": self._group.fingerprint,
            "version": STATE_VERSION,
            "loader_batches": list(self.loader_batches),
            "loader_samples": list(self.loader_samples),
        }

    def proportions(self) -> list[dict[str, Any]]:
        """Per loader: batches and samples drawn this epoch, expected vs actual share of batches."""
        group = self._group
        if group.config.sampling_strategy is SamplingStrategy.WEIGHTED_RANDOM:
            weights = np.asarray(group.config.dataloader_weights, dtype=float)
            expected = (weights / weights.sum()).tolist()
        else:
            expected = [
                q / group.total if group.total else 0.0
                for q in quotas(group.config, group.lengths, group.total)
            ]
        done = max(self.total_batches, 1)
        return [
            {
                "loader": name,
                "batches": self.loader_batches[i],
                "samples": self.loader_samples[i],
                "expected_share": expected[i],
                "actual_share": self.loader_batches[i] / done,
                "cycles": self.loader_cycles[i],
            }
            for i, name in enumerate(group.names)
        ]
