"""Adapters that let the manager drive loaders that cannot checkpoint themselves."""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterator
from typing import Any, ClassVar

from statefuldata.errors import IncompatibleStateError

__all__ = ["SkipBatchesLoader"]

logger = logging.getLogger(__name__)


class SkipBatchesLoader:
    """Wrap a plain ``torch.utils.data.DataLoader`` (no state methods): restore by skipping batches.

    Skipped batches are fully loaded and collated, so a restore costs as much as re-reading that part
    of the pass. It is exact only if the loader's order is deterministic (seeded generator). One WARNING
    per restore says how to fix it: build the loader with ``statefuldata.make_loader``.

    State keys: ``batches_yielded``.
    """

    KEY_BATCHES: ClassVar[str] = "batches_yielded"

    def __init__(self, loader: Any, *, name: str = "") -> None:
        self.loader = loader
        self.name = name or type(loader).__name__
        self._yielded = 0
        self._skip = 0
        self._generation = 0

    def __len__(self) -> int:
        return len(self.loader)

    @property
    def batch_size(self) -> int | None:
        return getattr(self.loader, "batch_size", None)

    @property
    def dataset(self) -> Any:
        return getattr(self.loader, "dataset", None)

    def __iter__(self) -> Iterator[Any]:
        skip, self._skip = self._skip, 0
        self._yielded = skip
        self._generation += 1
        return self._generate(skip, self._generation)

    def _generate(self, skip: int, generation: int) -> Iterator[Any]:
        batches = iter(self.loader)
        if skip:
            skipped = sum(1 for _ in itertools.islice(batches, skip))
            if skipped < skip:
                raise RuntimeError(
                    f"cannot restore loader {self.name!r}: it ended after {skipped} batches while "
                    f"skipping to the saved position of {skip} batches; the data or order changed"
                )
            logger.warning(
                "Restored loader %r by loading and discarding %d batches (plain DataLoader, "
                "skip-based). Fix: build it with statefuldata.make_loader(...) so it restores in O(1).",
                self.name,
                skip,
            )
        for batch in batches:
            if self._generation != generation:
                raise RuntimeError(
                    f"this iterator over loader {self.name!r} was superseded by load_state_dict(); "
                    "call iter() again"
                )
            self._yielded += 1
            yield batch

    def state_dict(self) -> dict[str, Any]:
        return {self.KEY_BATCHES: self._yielded}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if not isinstance(state, dict) or set(state) != {self.KEY_BATCHES}:
            raise IncompatibleStateError(
                f"SkipBatchesLoader state must have the key {self.KEY_BATCHES!r} (got {state!r})"
            )
        self._skip = self._yielded = int(state[self.KEY_BATCHES])
        self._generation += 1
