"""Adapters that let the manager drive loaders that cannot checkpoint themselves."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any, ClassVar

import torch

from statefuldata.errors import IncompatibleStateError
from statefuldata.fallback import SkipCounter

__all__ = ["SkipBatchesLoader"]

logger = logging.getLogger(__name__)


def _samplers(loader: Any) -> list[Any]:
    batch_sampler = getattr(loader, "batch_sampler", None)
    found = [getattr(loader, "sampler", None), getattr(batch_sampler, "sampler", None)]
    return [s for s in found if s is not None]


def _generators(loader: Any) -> list[torch.Generator]:
    """The generators a pass of ``loader`` draws its order and worker seeds from, in a fixed order."""
    found: list[torch.Generator] = []
    for owner in (loader, *_samplers(loader)):
        generator = getattr(owner, "generator", None)
        if isinstance(generator, torch.Generator) and all(generator is not g for g in found):
            found.append(generator)
    return found


def _check_reproducible(loader: Any, name: str) -> None:
    for sampler in _samplers(loader):
        if getattr(sampler, "generator", False) is None:
            raise ValueError(
                f"loader {name!r} is a plain DataLoader whose {type(sampler).__name__} draws a new "
                "random order from the global RNG at every pass, so no checkpoint can bring its "
                "order back. Build it with statefuldata.make_loader(dataset, shuffle=True, seed=...) "
                "(O(1) restore), or pass DataLoader(..., generator=torch.Generator().manual_seed(0))"
            )


class SkipBatchesLoader:
    """Wrap a plain ``torch.utils.data.DataLoader`` (no state methods): restore by skipping batches.

    Counting and skipping are those of :class:`statefuldata.SkipFallback` (one mechanism,
    :class:`statefuldata.fallback.SkipCounter`, here over batches). Skipped batches are fully loaded
    and collated, so a restore costs as much as re-reading that part of the pass. The state records the loader's generator states at the start of the current pass,
    so a restore in any pass replays that pass's order (and its workers' seeds). A loader that shuffles
    from the global RNG (no ``generator``) is refused: its order cannot be brought back. One WARNING
    per restore says how to make it O(1): build the loader with ``statefuldata.make_loader``.

    State keys: ``batches_yielded``, ``pass_generator_states`` (one ByteTensor per generator).
    """

    KEY_BATCHES: ClassVar[str] = "batches_yielded"
    KEY_GENERATORS: ClassVar[str] = "pass_generator_states"

    def __init__(self, loader: Any, *, name: str = "") -> None:
        self.loader = loader
        self.name = name or type(loader).__name__
        _check_reproducible(loader, self.name)
        self._generators = _generators(loader)
        self._counter = SkipCounter()
        self._pass_states: list[torch.Tensor] = [g.get_state() for g in self._generators]
        self._restore_states: list[torch.Tensor] | None = None
        self._batches: Any = None

    def __len__(self) -> int:
        return len(self.loader)

    @property
    def batch_size(self) -> int | None:
        return getattr(self.loader, "batch_size", None)

    @property
    def dataset(self) -> Any:
        return getattr(self.loader, "dataset", None)

    @property
    def num_workers(self) -> int:
        return int(getattr(self.loader, "num_workers", 0))

    def __iter__(self) -> Iterator[Any]:
        if self._restore_states is not None:
            for generator, state in zip(self._generators, self._restore_states):
                generator.set_state(state)
            self._restore_states = None
        self._pass_states = [g.get_state() for g in self._generators]
        return self._counter.start(
            self._open,
            ended_early=self._ended_early,
            skipped=self._warn,
            superseded=(
                f"this iterator over loader {self.name!r} was superseded by load_state_dict(); "
                "call iter() again"
            ),
        )

    def close(self) -> None:
        """Stop the worker processes of the current pass (the next ``iter()`` starts new ones)."""
        batches, self._batches = self._batches, None
        shutdown = getattr(batches, "_shutdown_workers", None)
        if callable(shutdown):
            shutdown()

    def _open(self) -> Iterator[Any]:
        self.close()
        batches: Iterator[Any] = iter(self.loader)
        self._batches = batches
        return batches

    def _ended_early(self, skipped: int, skip: int) -> str:
        return (
            f"cannot restore loader {self.name!r}: it ended after {skipped} batches while "
            f"skipping to the saved position of {skip} batches; the data or order changed"
        )

    def _warn(self, skip: int) -> None:
        logger.warning(
            "Restored loader %r by loading and discarding %d batches (plain DataLoader, "
            "skip-based). Fix: build it with statefuldata.make_loader(...) so it restores in O(1).",
            self.name,
            skip,
        )

    def state_dict(self) -> dict[str, Any]:
        return {
            self.KEY_BATCHES: self._counter.count,
            self.KEY_GENERATORS: [state.clone() for state in self._pass_states],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        keys = {self.KEY_BATCHES, self.KEY_GENERATORS}
        if not isinstance(state, dict) or not {self.KEY_BATCHES} <= set(state) <= keys:
            raise IncompatibleStateError(
                f"SkipBatchesLoader state must have the keys {sorted(keys)} (got {state!r})"
            )
        generators = state.get(self.KEY_GENERATORS)
        if generators is not None and len(generators) != len(self._generators):
            raise IncompatibleStateError(
                f"loader {self.name!r}: the state holds {len(generators)} generator state(s) but the "
                f"loader draws from {len(self._generators)}; rebuild it as it was when saved"
            )
        self._restore_states = None if generators is None else list(generators)
        self._counter.restore(int(state[self.KEY_BATCHES]))
