"""``PhaseGroup``: the loaders of one phase, where each stands, and the phase's epoch iterators.

A group owns its cursors, its current :class:`~statefuldata.EpochIterator` and a loaded state not yet
resumed. It restores itself through :meth:`PhaseGroup.load_state_dict` (the cursors load their
loaders at once; the iterator's own position waits for the next :meth:`PhaseGroup.create_iterator`,
which hands it to the new iterator's ``load_state_dict``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from torch.utils.data import DataLoader

from statefuldata.adapters import SkipBatchesLoader
from statefuldata.config import MultiDataLoaderConfig, SamplingStrategy
from statefuldata.cursor import Cursor
from statefuldata.elastic import cursor_entry, finish_restore, plan_restore
from statefuldata.epoch import EpochIterator
from statefuldata.errors import IncompatibleStateError
from statefuldata.phase import Phase, PhasePlan, fingerprint_of
from statefuldata.schedule import choice_rng_for_epoch, epoch_length, rng_state_to_plain
from statefuldata.state import IteratorState
from statefuldata.validators import check_epoch

logger = logging.getLogger(__name__)


def _length(loader: Any) -> int | None:
    try:
        return len(loader)
    except TypeError:
        return None


def _adopt(loader: Any, name: str) -> Any:
    if hasattr(loader, "state_dict") and hasattr(loader, "load_state_dict"):
        return loader
    if isinstance(loader, DataLoader) or hasattr(loader, "__iter__"):
        return SkipBatchesLoader(loader, name=name)
    raise TypeError(f"loader {name!r} must be iterable (got {type(loader).__name__})")


class PhaseGroup:
    """The loaders of one phase of a :class:`~statefuldata.DataLoaderManager` and where they stand."""

    def __init__(self, phase: Phase, loaders: Sequence[Any], config: MultiDataLoaderConfig) -> None:
        label = phase.value
        if isinstance(loaders, (str, bytes)) or not isinstance(loaders, Sequence) or not loaders:
            raise ValueError(
                f"{label}_loaders must be a non-empty list of loaders (got {loaders!r}); "
                "pass e.g. [make_loader(dataset, batch_size=32)]"
            )
        if not isinstance(config, MultiDataLoaderConfig):
            raise TypeError(
                f"{label}_config must be a MultiDataLoaderConfig (got {type(config).__name__})"
            )
        names = config.dataloader_names or tuple(f"{label}_{i}" for i in range(len(loaders)))
        config.validate_for(len(loaders), list(names))
        adopted = [_adopt(loader, name) for loader, name in zip(loaders, names)]
        lengths = [_length(loader) for loader in adopted]
        self.plan = PhasePlan(
            phase=phase,
            config=config,
            names=tuple(names),
            lengths=tuple(lengths),
            total=epoch_length(config, lengths),
            fingerprint=fingerprint_of(phase, config, names, adopted, lengths),
        )
        self.cursors = [Cursor(loader) for loader in adopted]
        self.current: EpochIterator | None = None
        self._pending: IteratorState | None = None  # loaded, not yet resumed
        self._pending_rng: Any = None
        self._requested: int | None = None  # set_epoch() for the next create_iterator()

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch of the next :meth:`create_iterator` that names none."""
        self._requested = check_epoch(epoch)

    def create_iterator(self, epoch: int | None = None) -> EpochIterator:
        """The iterator of ``epoch`` (default: the loaded epoch, else the one after the last)."""
        pending, self._pending = self._pending, None
        pending_rng, self._pending_rng = self._pending_rng, None
        requested, self._requested = self._requested, None
        if epoch is None:
            epoch = self._next_epoch(pending, requested)
        check_epoch(epoch)
        self._retire_current()
        plan = self.plan
        resume = pending is not None and pending.epoch == epoch
        if pending is not None and not resume:
            if not (pending.is_complete(plan.total) and epoch == pending.epoch + 1):
                raise IncompatibleStateError(
                    f"the loaded {plan.phase.value} state is at step {pending.schedule_position} "
                    f"of {plan.total} in epoch {pending.epoch}; it cannot start epoch {epoch}. "
                    f"Ask for epoch {pending.epoch} (or {pending.epoch + 1} once it is complete)"
                )
        choice_rng = None
        if plan.config.sampling_strategy is SamplingStrategy.WEIGHTED_RANDOM:
            saved = pending_rng if resume else None
            choice_rng = (
                saved
                if saved is not None
                else rng_state_to_plain(choice_rng_for_epoch(plan.config, epoch))
            )
        iterator = EpochIterator(plan, self.cursors, epoch, choice_rng)
        if pending is not None and resume:
            iterator.load_state_dict(pending)
        else:
            for cursor in self.cursors:
                cursor.exhausted = False
        self.current = iterator
        return iterator

    def _next_epoch(self, pending: IteratorState | None, requested: int | None) -> int:
        if pending is not None:
            saved = pending.epoch
            complete = pending.is_complete(self.plan.total)
            if requested is None or requested == saved or (complete and requested == saved + 1):
                return saved if requested is None else requested
            logger.warning(
                "set_epoch(%d) ignored for %s: the loaded state resumes epoch %d at step %d of %d "
                "and a loaded position is never discarded; call set_epoch(%d)",
                requested,
                self.plan.phase.value,
                saved,
                pending.schedule_position,
                self.plan.total,
                saved,
            )
            return saved
        if requested is not None:
            return requested
        return self.current.epoch + 1 if self.current else 0

    def _retire_current(self) -> None:
        if self.current is not None:
            self.current.retire()

    def reset(self) -> None:
        """Drop live passes so the next epoch starts every loader on a fresh pass."""
        self._retire_current()
        self._pending, self._pending_rng = None, None
        for cursor in self.cursors:
            cursor.drop_pass(keep_workers=True)
            cursor.batch_idx, cursor.exhausted = 0, False

    def state_dict(self) -> dict[str, Any] | None:
        """The v1 Iterator State: the loaded one not yet resumed, else the current iterator's."""
        if self._pending is not None:
            return self._pending.to_dict()
        return None if self.current is None else self.current.state_dict()

    def choice_rng_state(self) -> tuple[Any, int | None]:
        """``(choice RNG at the epoch's start, epoch)`` of the loaded or current epoch."""
        if self._pending is not None:
            return self._pending_rng, self._pending.epoch
        if self.current is None:
            return None, None
        return self.current.choice_rng, self.current.epoch

    def load_state_dict(
        self,
        state: dict[str, Any],
        *,
        choice_rng: Any = None,
        strict: bool = True,
        restart_incompatible_sources: bool = False,
    ) -> IteratorState:
        """Restore the loaders now; the next :meth:`create_iterator` continues the saved epoch.

        Raises ``IncompatibleStateError`` if the state was taken under another configuration
        (``strict=False`` skips the fingerprint comparison), or under another world size or
        ``num_workers`` for a loader whose position cannot move (see :mod:`statefuldata.elastic`;
        ``restart_incompatible_sources=True`` restarts their current pass instead).
        """
        plan = self.plan
        record = IteratorState.from_dict(state, plan.phase.value)
        record.check_compatible(
            plan.phase.value,
            n_loaders=len(self.cursors),
            fingerprint=plan.fingerprint,
            strict=False,
        )
        actions = plan_restore(
            plan.phase.value,
            plan.names,
            [cursor.loader for cursor in self.cursors],
            record.loader_states,
            record.fingerprint,
            plan.fingerprint,
            strict=strict,
            restart=restart_incompatible_sources,
        )
        self._retire_current()
        batches = record.fingerprint.get("batch_sizes") or [None] * len(self.cursors)
        for cursor, entry, action, batch in zip(
            self.cursors, record.loader_states, actions, batches
        ):
            cursor.load_state_dict(cursor_entry(action, entry))
            finish_restore(action, cursor.loader, entry, batch)
        self._pending, self.current, self._requested = record, None, None
        self._pending_rng = choice_rng
        return record
