"""``PhaseLoader``: one phase of a :class:`statefuldata.DataLoaderManager` seen as one loader."""

from __future__ import annotations

from typing import Any, Protocol

from statefuldata.epoch import EpochIterator
from statefuldata.phase import Phase
from statefuldata.state import KEY_EPOCH

__all__ = ["PhaseLoader"]


class _Scheduler(Protocol):
    """What a :class:`PhaseLoader` needs of its manager (:class:`statefuldata.DataLoaderManager`)."""

    def create_epoch_iterator(
        self, phase: Phase | str = ..., epoch: int | None = ...
    ) -> EpochIterator: ...

    def set_epoch(self, epoch: int, phase: Phase | str = ...) -> None: ...

    def epoch_length(self, phase: Phase | str = ...) -> int: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any], *, strict: bool = ...) -> None: ...

    def close(self) -> None: ...


class PhaseLoader:
    """A manager phase seen as one loader: each ``iter()`` is the next epoch (see :meth:`as_loader`).

    ``set_epoch(e)`` chooses the epoch of the next ``iter()``, torch's convention; an epoch in flight
    and a loaded position are kept. Lightning and other frameworks carry its state through
    ``state_dict``/``load_state_dict``.
    """

    KEY_FINISHED = "statefuldata_pass_finished"  # optional: resume into the next epoch

    def __init__(self, manager: _Scheduler, phase: Phase | str) -> None:
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
        saved = state.get(Phase.of(self.phase).state_key)
        if finished and saved is not None:
            self.manager.set_epoch(int(saved[KEY_EPOCH]) + 1, self.phase)

    def close(self) -> None:
        self.manager.close()
