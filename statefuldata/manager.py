"""``DataLoaderManager``: drives several loaders through one schedule, with tiny, exact state.

The schedule of an epoch is rebuilt from (config, loader lengths, epoch, seed) and never stored; the
state is the position in it plus each loader's own position. A loader's pass continues across epoch
boundaries; an exhausted loader starts a new pass (fresh order) when cycled, and its remaining
entries are skipped when not. Each phase is a :class:`~statefuldata.group.PhaseGroup` that restores
itself; the manager dispatches to them.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from statefuldata.config import MultiDataLoaderConfig
from statefuldata.epoch import EpochIterator
from statefuldata.errors import IncompatibleStateError
from statefuldata.group import PhaseGroup
from statefuldata.phase import Phase
from statefuldata.phase_loader import PhaseLoader
from statefuldata.validators import check_epoch
from statefuldata.workers import ignore_signals_in_workers

__all__ = ["DataLoaderManager", "EpochIterator", "PhaseLoader"]

logger = logging.getLogger(__name__)

#: Keys of the v1 ``dataloader_manager_state``. ``choice_rng_state`` (the name is the format's) is
#: the recipe of the train phase's choice RNG, ``{"seed", "epoch", "strategy"}``; the RNG's state
#: itself, which the checkpoint's top-level ``choice_rng_state`` copies, is under ``choice_rng``.
KEY_CHOICE_RNG_RECIPE = "choice_rng_state"
KEY_CHOICE_RNG = "choice_rng"
KEYS_MANAGER = (KEY_CHOICE_RNG_RECIPE, KEY_CHOICE_RNG, *(p.state_key for p in Phase))


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
    Methods taking a ``phase`` accept a :class:`~statefuldata.Phase` or its value.
    """

    def __init__(
        self,
        train_loaders: Sequence[Any],
        val_loaders: Sequence[Any] | None = None,
        train_config: MultiDataLoaderConfig | None = None,
        val_config: MultiDataLoaderConfig | None = None,
    ) -> None:
        self._groups: dict[Phase, PhaseGroup] = {}
        self._groups[Phase.TRAIN] = PhaseGroup(
            Phase.TRAIN, train_loaders, train_config or MultiDataLoaderConfig()
        )
        if val_loaders:
            self._groups[Phase.VAL] = PhaseGroup(
                Phase.VAL, val_loaders, val_config or MultiDataLoaderConfig()
            )
        self.config_snapshot: dict[str, Any] | None = None

    def _group(self, phase: Phase | str) -> PhaseGroup:
        member = Phase.of(phase)
        group = self._groups.get(member)
        if group is None:
            raise ValueError(
                f"no {member.value} loaders were given; pass {member.value}_loaders=[...] to "
                "DataLoaderManager"
            )
        return group

    def has_phase(self, phase: Phase | str) -> bool:
        """Whether the manager has loaders for ``phase``."""
        return Phase.of(phase) in self._groups

    def names(self, phase: Phase | str = Phase.TRAIN) -> tuple[str, ...]:
        """The loader names of ``phase``, in loader order."""
        return self._group(phase).plan.names

    def loaders(self, phase: Phase | str = Phase.TRAIN) -> list[Any]:
        """The loaders of ``phase`` (plain iterables wrapped in :class:`SkipBatchesLoader`)."""
        return [cursor.loader for cursor in self._group(phase).cursors]

    def epoch_length(self, phase: Phase | str = Phase.TRAIN) -> int:
        """Steps in one epoch of ``phase`` (see :func:`statefuldata.schedule.epoch_length`)."""
        return self._group(phase).plan.total

    def fingerprint(self, phase: Phase | str = Phase.TRAIN) -> dict[str, Any]:
        """The configuration a state of ``phase`` is taken under (compared on restore)."""
        return self._group(phase).plan.fingerprint

    def current_iterator(self, phase: Phase | str = Phase.TRAIN) -> EpochIterator | None:
        """The latest epoch iterator of ``phase`` (None before the first)."""
        return self._group(phase).current

    def create_epoch_iterator(
        self, phase: Phase | str = Phase.TRAIN, epoch: int | None = None
    ) -> EpochIterator:
        """The iterator of ``epoch`` (default: the restored epoch, else the one after the last).

        After :meth:`load_state_dict`, asking for the saved epoch continues it mid-way; asking for
        the next epoch is allowed when the saved one was complete (a checkpoint at its last batch).
        """
        return self._group(phase).create_iterator(epoch)

    def set_epoch(self, epoch: int, phase: Phase | str = Phase.TRAIN) -> None:
        """Choose the epoch of the next :meth:`create_epoch_iterator` of ``phase`` that names none.

        torch's convention: an epoch in flight is not touched. A loaded state resumes its own epoch
        (a different request is ignored with a WARNING), unless it is complete and ``epoch`` is the
        one after it. Without ``set_epoch`` the next epoch is the one after the last.
        """
        group = self._group(phase)
        group.set_epoch(check_epoch(epoch))

    def reset_phase(self, phase: Phase | str) -> None:
        """Drop live passes of a phase so its next epoch starts every loader on a fresh pass.

        Loaders with ``persistent_workers=True`` keep their workers (the next pass reuses them).
        """
        self._group(phase).reset()

    def close(self) -> None:
        """Stop every loader's worker processes (the manager stays usable: passes restart lazily)."""
        for group in self._groups.values():
            for cursor in group.cursors:
                cursor.drop_pass()

    def __enter__(self) -> DataLoaderManager:
        return self

    def __exit__(self, *exc_info: object) -> None:
        """Leaving a ``with DataLoaderManager(...) as manager:`` block calls :meth:`close`.

        A loader's pass continues across epochs, so its workers outlive ``Trainer.fit`` in Lightning,
        which stops the workers of the DataLoaders it is given but not those behind ``as_loader()``.
        """
        self.close()

    def release_workers(self) -> None:
        """Stop every worker process but keep every position: a live pass resumes where it stood
        at its next draw (from the loader's state, so a skip-based loader replays its skip)."""
        for group in self._groups.values():
            for cursor in group.cursors:
                cursor.park_pass()

    def ignore_signals_in_workers(self, names: Sequence[str]) -> None:
        """Workers started from now on by every loader ignore the signals ``names`` (e.g. the
        trainer's preemption signals, which a scheduler sends to the whole process group)."""
        for group in self._groups.values():
            for cursor in group.cursors:
                ignore_signals_in_workers(cursor.loader, tuple(names))

    def state_dict(self) -> dict[str, Any]:
        """The v1 ``dataloader_manager_state`` (plain types and tensors only)."""
        train = self._groups[Phase.TRAIN]
        choice_rng, epoch = train.choice_rng_state()
        groups = {p: self._groups.get(p) for p in Phase}
        return {
            KEY_CHOICE_RNG_RECIPE: {
                "seed": train.plan.config.choice_rng_seed,
                "epoch": epoch,
                "strategy": train.plan.config.sampling_strategy.value,
            },
            KEY_CHOICE_RNG: choice_rng,
            **{p.state_key: None if g is None else g.state_dict() for p, g in groups.items()},
        }

    def load_state_dict(
        self,
        state: dict[str, Any],
        *,
        strict: bool = True,
        restart_incompatible_sources: bool = False,
    ) -> None:
        """Restore positions; takes effect at the next :meth:`create_epoch_iterator`.

        Raises ``IncompatibleStateError`` if the state was taken under another configuration
        (``strict=False`` skips the fingerprint comparison, at your own risk). Under another world
        size or ``num_workers`` (elastic resume, :mod:`statefuldata.elastic`) map-style loaders
        resume exactly; any other loader raises, or with ``restart_incompatible_sources=True``
        restarts its current pass with a WARNING naming it.
        """
        if not isinstance(state, dict) or set(state) != set(KEYS_MANAGER):
            got = sorted(state) if isinstance(state, dict) else type(state).__name__
            raise IncompatibleStateError(
                f"manager state must have keys {sorted(KEYS_MANAGER)} (got {got}); pass the dict "
                "returned by DataLoaderManager.state_dict()"
            )
        for phase in Phase:
            iterator_state = state[phase.state_key]
            if iterator_state is None:
                continue
            record = self._group(phase).load_state_dict(
                iterator_state,
                choice_rng=state[KEY_CHOICE_RNG] if phase is Phase.TRAIN else None,
                strict=strict,
                restart_incompatible_sources=restart_incompatible_sources,
            )
            if phase is Phase.TRAIN:
                logger.debug(
                    "restored train position %d (epoch %d); %d prefetched batches will be "
                    "fetched again",
                    record.schedule_position,
                    record.epoch,
                    record.prefetched_batches,
                )

    def as_loader(self, phase: Phase | str = Phase.TRAIN) -> PhaseLoader:
        """View one phase as a loader whose passes are epochs, e.g. for :func:`verify_resume`."""
        self._group(phase)
        return PhaseLoader(self, phase)

    def proportions(self, phase: Phase | str = Phase.TRAIN) -> list[dict[str, Any]]:
        """Per-epoch proportions report of the current (or last) epoch of ``phase``."""
        current = self._group(phase).current
        if current is None:
            raise RuntimeError(
                f"no {Phase.of(phase).value} epoch has been iterated yet; call "
                "create_epoch_iterator first"
            )
        return current.proportions()
