"""``DataLoaderManager``: drives several loaders through one schedule, with tiny, exact state.

The schedule of an epoch is rebuilt from (config, loader lengths, epoch, seed) and never stored; the
state is the position in it plus each loader's own position. A loader's pass continues across epoch
boundaries; an exhausted loader starts a new pass (fresh order) when cycled, and its remaining
entries are skipped when not.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from torch.utils.data import DataLoader

from statefuldata.adapters import SkipBatchesLoader
from statefuldata.config import MultiDataLoaderConfig, SamplingStrategy
from statefuldata.epoch import (
    KEYS_ITERATOR,
    Cursor,
    EpochIterator,
    Group,
    drop_pass,
    fingerprint_of,
    park_pass,
)
from statefuldata.errors import IncompatibleStateError
from statefuldata.loader import ignore_signals_in_workers
from statefuldata.schedule import (
    choice_rng_for_epoch,
    epoch_length,
    rng_state_to_plain,
)
from statefuldata.state import (
    STATE_VERSION,
    DataLoaderState,
    join_loader_state,
)

__all__ = ["DataLoaderManager", "EpochIterator", "PhaseLoader"]

logger = logging.getLogger(__name__)

PHASES = ("train", "val")
KEYS_MANAGER = ("choice_rng_state", "choice_rng", "train_iterator_state", "val_iterator_state")


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


class DataLoaderManager:
    """Mix several loaders per phase following a :class:`MultiDataLoaderConfig`; resume exactly.

    Example:
        >>> from statefuldata import make_loader
        >>> m = DataLoaderManager(
        ...     [make_loader(list(range(6)), batch_size=2), make_loader(list(range(4)), batch_size=2)],
        ...     train_config=MultiDataLoaderConfig(sampling_strategy="round_robin"),
        ... )
        >>> [(i, b.tolist()) for i, _, b in m.create_epoch_iterator("train", 0)]
        [(0, [0, 1]), (1, [0, 1]), (0, [2, 3]), (1, [2, 3]), (0, [4, 5])]

    State (v1 ``dataloader_manager_state``): ``choice_rng_state``, ``choice_rng``,
    ``train_iterator_state``, ``val_iterator_state``; each iterator state records its epoch and a
    fingerprint of the configuration. Resume guarantee: the remaining ``(loader, batch)`` sequence
    after ``load_state_dict`` equals the uninterrupted one, at any batch and across epochs.
    """

    def __init__(
        self,
        train_loaders: Sequence[Any],
        val_loaders: Sequence[Any] | None = None,
        train_config: MultiDataLoaderConfig | None = None,
        val_config: MultiDataLoaderConfig | None = None,
    ) -> None:
        self._groups: dict[str, Group] = {}
        self._add_group("train", train_loaders, train_config or MultiDataLoaderConfig())
        if val_loaders:
            self._add_group("val", val_loaders, val_config or MultiDataLoaderConfig())
        self.config_snapshot: dict[str, Any] | None = None

    def _add_group(self, phase: str, loaders: Sequence[Any], config: MultiDataLoaderConfig) -> None:
        if isinstance(loaders, (str, bytes)) or not isinstance(loaders, Sequence) or not loaders:
            raise ValueError(
                f"{phase}_loaders must be a non-empty list of loaders (got {loaders!r}); "
                "pass e.g. [make_loader(dataset, batch_size=32)]"
            )
        if not isinstance(config, MultiDataLoaderConfig):
            raise TypeError(
                f"{phase}_config must be a MultiDataLoaderConfig (got {type(config).__name__})"
            )
        names = config.dataloader_names or tuple(f"{phase}_{i}" for i in range(len(loaders)))
        config.validate_for(len(loaders), list(names))
        adopted = [_adopt(loader, name) for loader, name in zip(loaders, names)]
        lengths = [_length(loader) for loader in adopted]
        total = epoch_length(config, lengths)
        self._groups[phase] = Group(
            phase=phase,
            config=config,
            names=tuple(names),
            cursors=[Cursor(loader) for loader in adopted],
            lengths=lengths,
            total=total,
            fingerprint=fingerprint_of(phase, config, names, adopted, lengths),
        )

    def _group(self, phase: str) -> Group:
        if phase not in PHASES:
            raise ValueError(f"phase must be one of {list(PHASES)} (got {phase!r})")
        if phase not in self._groups:
            raise ValueError(
                f"no {phase} loaders were given; pass {phase}_loaders=[...] to DataLoaderManager"
            )
        return self._groups[phase]

    def has_phase(self, phase: str) -> bool:
        return phase in self._groups

    def names(self, phase: str = "train") -> tuple[str, ...]:
        return self._group(phase).names

    def loaders(self, phase: str = "train") -> list[Any]:
        return [cursor.loader for cursor in self._group(phase).cursors]

    def epoch_length(self, phase: str = "train") -> int:
        return self._group(phase).total

    def fingerprint(self, phase: str = "train") -> dict[str, Any]:
        return self._group(phase).fingerprint

    def current_iterator(self, phase: str = "train") -> EpochIterator | None:
        return self._group(phase).current

    def create_epoch_iterator(
        self, phase: str = "train", epoch: int | None = None
    ) -> EpochIterator:
        """The iterator of ``epoch`` (default: the restored epoch, else the one after the last).

        After :meth:`load_state_dict`, asking for the saved epoch continues it mid-way; asking for
        the next epoch is allowed when the saved one was complete (a checkpoint at its last batch).
        """
        group = self._group(phase)
        pending, group.pending = group.pending, None
        pending_rng, group.pending_rng = group.pending_rng, None
        requested, group.requested = group.requested, None
        if epoch is None:
            epoch = self._next_epoch(group, pending, requested)
        if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
            raise ValueError(f"'epoch' must be an int >= 0 (got {epoch!r})")
        group.generation += 1
        resume = pending is not None and pending["epoch"] == epoch
        if pending is not None and not resume:
            complete = pending["schedule_position"] >= group.total
            if not (complete and epoch == pending["epoch"] + 1):
                raise IncompatibleStateError(
                    f"the loaded {phase} state is at step {pending['schedule_position']} of "
                    f"{group.total} in epoch {pending['epoch']}; it cannot start epoch {epoch}. "
                    f"Ask for epoch {pending['epoch']} (or {pending['epoch'] + 1} once it is complete)"
                )
        rng_plain = None
        if group.config.sampling_strategy is SamplingStrategy.WEIGHTED_RANDOM:
            saved = pending_rng if resume else None
            rng_plain = (
                saved
                if saved is not None
                else rng_state_to_plain(choice_rng_for_epoch(group.config, epoch))
            )
        iterator = EpochIterator(group, epoch, rng_plain)
        if resume:
            iterator.position = pending["schedule_position"]
            iterator.total_batches = pending["total_batches"]
            iterator.loader_cycles = {int(k): int(v) for k, v in pending["loader_cycles"].items()}
            iterator.loader_batches = list(pending["loader_batches"])
            iterator.loader_samples = list(pending["loader_samples"])
        else:
            for cursor in group.cursors:
                cursor.exhausted = False
        group.current = iterator
        return iterator

    def set_epoch(self, epoch: int, phase: str = "train") -> None:
        """Choose the epoch of the next :meth:`create_epoch_iterator` of ``phase`` that names none.

        torch's convention: an epoch in flight is not touched. A loaded state resumes its own epoch
        (a different request is ignored with a WARNING), unless it is complete and ``epoch`` is the
        one after it. Without ``set_epoch`` the next epoch is the one after the last.
        """
        group = self._group(phase)
        if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
            raise ValueError(f"'epoch' must be an int >= 0 (got {epoch!r})")
        group.requested = epoch

    @staticmethod
    def _next_epoch(group: Group, pending: dict[str, Any] | None, requested: int | None) -> int:
        if pending is not None:
            saved = pending["epoch"]
            complete = pending["schedule_position"] >= group.total
            if requested is None or requested == saved or (complete and requested == saved + 1):
                return saved if requested is None else requested
            logger.warning(
                "set_epoch(%d) ignored for %s: the loaded state resumes epoch %d at step %d of %d "
                "and a loaded position is never discarded; call set_epoch(%d)",
                requested,
                group.phase,
                saved,
                pending["schedule_position"],
                group.total,
                saved,
            )
            return saved
        if requested is not None:
            return requested
        return group.current.epoch + 1 if group.current else 0

    def reset_phase(self, phase: str) -> None:
        """Drop live passes of a phase so its next epoch starts every loader on a fresh pass.

        Loaders with ``persistent_workers=True`` keep their workers (the next pass reuses them).
        """
        group = self._group(phase)
        group.generation += 1
        group.pending, group.pending_rng = None, None
        for cursor in group.cursors:
            drop_pass(cursor, keep_workers=True)
            cursor.batch_idx, cursor.exhausted = 0, False

    def close(self) -> None:
        """Stop every loader's worker processes (the manager stays usable: passes restart lazily)."""
        for group in self._groups.values():
            for cursor in group.cursors:
                drop_pass(cursor)

    def release_workers(self) -> None:
        """Stop every worker process but keep every position: a live pass resumes where it stood
        at its next draw (from the loader's state, so a skip-based loader replays its skip)."""
        for group in self._groups.values():
            for cursor in group.cursors:
                park_pass(cursor)

    def ignore_signals_in_workers(self, names: Sequence[str]) -> None:
        """Workers started from now on by every loader ignore the signals ``names`` (e.g. the
        trainer's preemption signals, which a scheduler sends to the whole process group)."""
        for group in self._groups.values():
            for cursor in group.cursors:
                ignore_signals_in_workers(cursor.loader, tuple(names))

    def state_dict(self) -> dict[str, Any]:
        """The v1 ``dataloader_manager_state`` (plain types and tensors only)."""
        states = {}
        for phase in PHASES:
            group = self._groups.get(phase)
            if group is None:
                states[phase] = None
            elif group.pending is not None:
                states[phase] = group.pending
            elif group.current is not None:
                states[phase] = group.current.state_dict()
            else:
                states[phase] = None
        train = self._groups["train"]
        current = train.current
        if train.pending is not None:
            choice_rng, epoch = train.pending_rng, train.pending["epoch"]
        else:
            choice_rng = current.choice_rng if current is not None else None
            epoch = current.epoch if current is not None else None
        return {
            "choice_rng_state": {
                "seed": train.config.choice_rng_seed,
                "epoch": epoch,
                "strategy": train.config.sampling_strategy.value,
            },
            "choice_rng": choice_rng,
            "train_iterator_state": states["train"],
            "val_iterator_state": states["val"],
        }

    def load_state_dict(self, state: dict[str, Any], *, strict: bool = True) -> None:
        """Restore positions; takes effect at the next :meth:`create_epoch_iterator`.

        Raises ``IncompatibleStateError`` if the state was taken under another configuration
        (``strict=False`` skips the fingerprint comparison, at your own risk).
        """
        if not isinstance(state, dict) or set(state) != set(KEYS_MANAGER):
            got = sorted(state) if isinstance(state, dict) else type(state).__name__
            raise IncompatibleStateError(
                f"manager state must have keys {sorted(KEYS_MANAGER)} (got {got}); pass the dict "
                "returned by DataLoaderManager.state_dict()"
            )
        for phase in PHASES:
            iterator_state = state[f"{phase}_iterator_state"]
            if iterator_state is None:
                continue
            group = self._group(phase)
            self._check_iterator_state(group, iterator_state, strict)
            group.generation += 1
            for cursor, raw in zip(group.cursors, iterator_state["loader_states"]):
                entry = DataLoaderState.from_dict(raw)
                drop_pass(cursor)
                loader_state = join_loader_state(entry)
                if loader_state is not None:
                    cursor.loader.load_state_dict(loader_state)
                cursor.iterator, cursor.batch_idx, cursor.exhausted = (
                    None,
                    entry.batch_idx,
                    entry.exhausted,
                )
            group.pending, group.current, group.requested = iterator_state, None, None
            if phase == "train":
                group.pending_rng = state["choice_rng"]
        if iterator_state := state["train_iterator_state"]:
            logger.debug(
                "restored train position %d (epoch %d); %d prefetched batches will be fetched again",
                iterator_state["schedule_position"],
                iterator_state["epoch"],
                iterator_state["prefetched_batches"],
            )

    def _check_iterator_state(self, group: Group, state: dict[str, Any], strict: bool) -> None:
        if not isinstance(state, dict) or set(state) != set(KEYS_ITERATOR):
            got = sorted(state) if isinstance(state, dict) else type(state).__name__
            raise IncompatibleStateError(
                f"{group.phase} iterator state must have keys {sorted(KEYS_ITERATOR)} (got {got})"
            )
        if state["version"] != STATE_VERSION:
            raise IncompatibleStateError(
                f"{group.phase} iterator state has version {state['version']}, this library reads "
                f"version {STATE_VERSION}; upgrade statefuldata to read it"
            )
        if len(state["loader_states"]) != len(group.cursors):
            raise IncompatibleStateError(
                f"{group.phase} state has {len(state['loader_states'])} loaders, this manager has "
                f"{len(group.cursors)}; rebuild the pipeline the state was taken with"
            )
        if strict and state["fingerprint"] != group.fingerprint:
            diff = {
                key: {"saved": state["fingerprint"].get(key), "current": value}
                for key, value in group.fingerprint.items()
                if state["fingerprint"].get(key) != value
            }
            raise IncompatibleStateError(
                f"{group.phase} state was taken under another configuration: {diff}. Rebuild the "
                "pipeline with the saved configuration, or pass strict=False to load it anyway"
            )

    def as_loader(self, phase: str = "train") -> PhaseLoader:
        """View one phase as a loader whose passes are epochs, e.g. for :func:`verify_resume`."""
        self._group(phase)
        return PhaseLoader(self, phase)

    def proportions(self, phase: str = "train") -> list[dict[str, Any]]:
        """Per-epoch proportions report of the current (or last) epoch of ``phase``."""
        current = self._group(phase).current
        if current is None:
            raise RuntimeError(
                f"no {phase} epoch has been iterated yet; call create_epoch_iterator first"
            )
        return current.proportions()


class PhaseLoader:
    """A manager phase seen as one loader: each ``iter()`` is the next epoch (see :meth:`as_loader`).

    ``set_epoch(e)`` chooses the epoch of the next ``iter()``, torch's convention; an epoch in flight
    and a loaded position are kept. Lightning and other frameworks carry its state through
    ``state_dict``/``load_state_dict``.
    """

    KEY_FINISHED = "statefuldata_pass_finished"  # optional: resume into the next epoch

    def __init__(self, manager: DataLoaderManager, phase: str) -> None:
        self.manager, self.phase = manager, phase

    def __iter__(self) -> EpochIterator:
        return self.manager.create_epoch_iterator(self.phase)

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch of the next ``iter()`` (see :meth:`DataLoaderManager.set_epoch`)."""
        self.manager.set_epoch(epoch, self.phase)

    def __len__(self) -> int:
        return self.manager.epoch_length(self.phase)

    def state_dict(self) -> dict[str, Any]:
        return self.manager.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Load a manager state; with ``KEY_FINISHED`` set, the next ``iter()`` is the next epoch."""
        state = dict(state)
        finished = state.pop(self.KEY_FINISHED, False)
        self.manager.load_state_dict(state)
        saved = state.get(f"{self.phase}_iterator_state")
        if finished and saved is not None:
            self.manager.set_epoch(int(saved["epoch"]) + 1, self.phase)

    def close(self) -> None:
        self.manager.close()
