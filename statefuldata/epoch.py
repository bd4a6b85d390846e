"""One epoch of a multi-loader schedule: the iterator that walks it and the state it reports.

:class:`EpochIterator` follows the schedule built for ``(config, lengths, epoch)``, draws each entry
from its loader's live pass (starting a fresh pass when one ends, or skipping the loader when it is
not cycled), and reports the v1 Iterator State. :class:`statefuldata.DataLoaderManager`'s phase
groups (:mod:`statefuldata.group`) create these iterators, restore them and retire them.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from typing import Any

import torch

from statefuldata.config import MultiDataLoaderConfig, SamplingStrategy
from statefuldata.cursor import Cursor
from statefuldata.phase import PhasePlan
from statefuldata.schedule import build_schedule, expected_shares, rng_state_from_plain
from statefuldata.state import (
    KEY_EPOCH,
    KEY_FINGERPRINT,
    KEY_LOADER_BATCHES,
    KEY_LOADER_CYCLES,
    KEY_LOADER_SAMPLES,
    KEY_LOADER_STATES,
    KEY_PREFETCHED_BATCHES,
    KEY_SCHEDULE_POSITION,
    KEY_TOTAL_BATCHES,
    KEY_VERSION,
    STATE_VERSION,
    IteratorState,
)
from statefuldata.state import KEYS_ITERATOR as KEYS_ITERATOR
from statefuldata.validators import check_epoch

__all__ = ["EpochIterator"]

logger = logging.getLogger(__name__)

_SKIPPED = object()
_TENSOR = torch.Tensor


def _samples_in(batch: Any) -> int:
    """Leading dimension of the first tensor-like leaf of a batch (1 when there is none)."""
    kind = type(batch)
    if kind is tuple or kind is list:  # the usual (inputs, targets) pair, at C speed
        if batch and type(batch[0]) is _TENSOR and batch[0].ndim:
            return batch[0].shape[0]
    elif kind is _TENSOR and batch.ndim:
        return batch.shape[0]  # type: ignore[no-any-return]
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


@functools.lru_cache(maxsize=8)
def _deterministic_schedule(
    config: MultiDataLoaderConfig, lengths: tuple[int | None, ...]
) -> tuple[int, ...]:
    """The schedule of a strategy without a choice RNG: the same for every epoch."""
    return tuple(build_schedule(config, lengths, 0))


def _in_flight(loader: Any) -> int:
    """Batches a multi-process loader has requested but not yet handed out (prefetch depth)."""
    it = getattr(loader, "_iterator", None)
    sent, received = getattr(it, "_send_idx", 0), getattr(it, "_rcvd_idx", 0)
    return max(0, int(sent) - int(received))


class EpochIterator:
    """Yields ``(loader_idx, loader_name, batch)`` for one epoch of one phase, following the schedule.

    Made by :meth:`DataLoaderManager.create_epoch_iterator
    <statefuldata.DataLoaderManager.create_epoch_iterator>`. State: the v1 Iterator State
    (:data:`~statefuldata.state.KEYS_ITERATOR`); :meth:`load_state_dict` restores the iterator's own
    position and counts, the loaders' positions being restored by their cursors. A retired iterator
    (superseded by a newer one or by a loaded state) raises instead of drawing.
    """

    def __init__(
        self, plan: PhasePlan, cursors: Sequence[Cursor], epoch: int, choice_rng: Any
    ) -> None:
        self._plan, self._cursors, self.epoch = plan, cursors, epoch
        #: WEIGHTED_RANDOM's choice RNG at the epoch's start, as plain types (else None).
        self.choice_rng = choice_rng
        if plan.config.sampling_strategy is not SamplingStrategy.WEIGHTED_RANDOM:
            check_epoch(epoch)  # the same order every epoch: built once per (config, lengths)
            self.schedule = list(_deterministic_schedule(plan.config, plan.lengths))
        else:
            rng = None if choice_rng is None else rng_state_from_plain(choice_rng)
            self.schedule = build_schedule(plan.config, plan.lengths, epoch, rng=rng)
        n = len(cursors)
        self.position, self.total_batches = 0, 0
        self.loader_cycles = dict.fromkeys(range(n), 0)
        self.loader_batches, self.loader_samples = [0] * n, [0] * n
        self._retired = False
        self._names = plan.names

    def __iter__(self) -> EpochIterator:
        return self

    def __len__(self) -> int:
        return len(self.schedule)

    def retire(self) -> None:
        """Make further draws raise (the phase moved on: a newer iterator or a loaded state)."""
        self._retired = True

    def __next__(self) -> tuple[int, str, Any]:
        # fast path, one attribute read per field: the loader's live pass goes on
        position, schedule = self.position, self.schedule
        if position < len(schedule) and not self._retired:
            index = schedule[position]
            cursor = self._cursors[index]
            iterator = cursor.iterator
            if iterator is not None and not cursor.exhausted:
                batch = next(iterator, _SKIPPED)
                if batch is not _SKIPPED:
                    cursor.batch_idx += 1
                    self.position = position + 1
                    self.total_batches += 1
                    self.loader_batches[index] += 1
                    self.loader_samples[index] += _samples_in(batch)
                    return index, self._names[index], batch
        return self._next_slow()

    def _next_slow(self) -> tuple[int, str, Any]:
        """A retired iterator, a loader without a live pass or whose pass just ended, the end."""
        if self._retired:
            raise RuntimeError(
                "this epoch iterator was superseded by load_state_dict() or a newer "
                "create_epoch_iterator(); create a new one to continue from the loaded state"
            )
        cursors, schedule, position = self._cursors, self.schedule, self.position
        while position < len(schedule):
            index = schedule[position]
            cursor = cursors[index]
            batch = _SKIPPED
            if cursor.iterator is not None and not cursor.exhausted:
                batch = next(cursor.iterator, _SKIPPED)
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
                return index, self._names[index], batch
        raise StopIteration

    def _pass_ended(self, cursor: Cursor, index: int) -> bool:
        """Book a finished pass; True when the loader is now exhausted (not cycled)."""
        self._check_length(cursor, index)
        cursor.iterator, cursor.batch_idx = None, 0
        if not self._plan.config.cycle_short_loaders and self.loader_batches[index] > 0:
            cursor.exhausted = True
            return True
        if self.loader_batches[index] > 0:
            self.loader_cycles[index] += 1
        return False

    def _fetch(self, cursor: Cursor, index: int) -> Any:
        """Slow path: the loader has no live pass, or its pass just ended."""
        if cursor.exhausted:
            return _SKIPPED
        # its pass just ended (the fast path saw StopIteration)
        if cursor.iterator is not None and self._pass_ended(cursor, index):
            return _SKIPPED
        for _attempt in range(2):  # a fresh pass (a restored one may be empty), then one more
            iterator = cursor.iterator if cursor.iterator is not None else cursor.start_pass()
            try:
                batch = next(iterator)
            except StopIteration:
                if self._pass_ended(cursor, index):
                    return _SKIPPED
                continue
            cursor.batch_idx += 1
            return batch
        raise RuntimeError(
            f"loader {self._plan.names[index]!r} yielded no batch in a fresh pass; an empty loader "
            "cannot be scheduled (check its dataset length, batch_size and drop_last)"
        )

    def _check_length(self, cursor: Cursor, index: int) -> None:
        """One WARNING per loader whose pass yields another number of batches than its len()."""
        declared = self._plan.lengths[index]
        if declared is None or cursor.batch_idx in (0, declared) or cursor.length_warned:
            return
        cursor.length_warned = True
        logger.warning(
            "loader %r declares %d batches (len) but its pass yielded %d: the epoch length and "
            "quotas are computed from len(), so passes drift against epochs. Make __len__ match "
            "what one pass yields (with workers, an iterable's last batch of each worker can be "
            "partial: shard so that every worker's share divides by the batch size, or use "
            "drop_last)",
            self._plan.names[index],
            declared,
            cursor.batch_idx,
        )

    def state_dict(self) -> dict[str, Any]:
        """The v1 Iterator State (plus epoch, fingerprint, version and per-loader counts)."""
        return {
            KEY_SCHEDULE_POSITION: self.position,
            KEY_LOADER_STATES: [cursor.state_dict() for cursor in self._cursors],
            KEY_TOTAL_BATCHES: self.total_batches,
            KEY_LOADER_CYCLES: dict(self.loader_cycles),
            KEY_PREFETCHED_BATCHES: sum(_in_flight(c.loader) for c in self._cursors),
            KEY_EPOCH: self.epoch,
            KEY_FINGERPRINT: self._plan.fingerprint,
            KEY_VERSION: STATE_VERSION,
            KEY_LOADER_BATCHES: list(self.loader_batches),
            KEY_LOADER_SAMPLES: list(self.loader_samples),
        }

    def load_state_dict(self, state: dict[str, Any] | IteratorState) -> None:
        """Continue from a state of this epoch: schedule position and per-loader counts."""
        if not isinstance(state, IteratorState):
            state = IteratorState.from_dict(state, self._plan.phase.value)
        if state.epoch != self.epoch:
            raise ValueError(
                f"this iterator walks epoch {self.epoch} (got a state of epoch {state.epoch}); "
                "load it into the iterator of its own epoch"
            )
        self.position = state.schedule_position
        self.total_batches = state.total_batches
        self.loader_cycles = {int(k): int(v) for k, v in state.loader_cycles.items()}
        self.loader_batches = list(state.loader_batches)
        self.loader_samples = list(state.loader_samples)

    def proportions(self) -> list[dict[str, Any]]:
        """Per loader: batches and samples drawn this epoch, expected vs actual share of batches."""
        plan = self._plan
        expected = expected_shares(plan.config, plan.lengths, plan.total)
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
            for i, name in enumerate(plan.names)
        ]
