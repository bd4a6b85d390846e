"""``Cursor``: where one loader of a scheduler phase stands, and how it saves and restores that."""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterator
from typing import Any

import attrs

from statefuldata.seeded_loader import SeededStatefulDataLoader
from statefuldata.state import DataLoaderState, join_loader_state, split_loader_state
from statefuldata.workers import close_loader, frozen_heap_for_fork

logger = logging.getLogger(__name__)


@attrs.define(eq=False)
class Cursor:
    """One loader's live pass, the batches drawn in it, and whether it is done.

    State: the v1 ``DataLoaderState`` (:meth:`state_dict`, restored by :meth:`load_state_dict`).
    ``parked`` holds the loader's state while its workers are released mid-pass
    (:meth:`DataLoaderManager.release_workers <statefuldata.DataLoaderManager.release_workers>`);
    the next draw resumes the pass from it. ``length_warned`` is set once a pass yielded another
    number of batches than the loader's ``len()`` (one WARNING per loader).
    """

    loader: Any
    iterator: Iterator[Any] | None = None
    batch_idx: int = 0
    exhausted: bool = False
    parked: dict[str, Any] | None = None
    length_warned: bool = False

    def start_pass(self) -> Iterator[Any]:
        """Start the loader's next pass (heap frozen across the fork of foreign loaders' workers)."""
        loader = self.loader
        if getattr(loader, "num_workers", 0) > 0 and not isinstance(
            loader, SeededStatefulDataLoader
        ):
            with frozen_heap_for_fork():
                self.iterator = iter(loader)
        else:
            self.iterator = iter(loader)
        self.parked = None
        return self.iterator

    def drop_pass(self, *, keep_workers: bool = False) -> None:
        """Forget the live pass; stop its workers unless they persist and ``keep_workers``."""
        if not (keep_workers and getattr(self.loader, "persistent_workers", False)):
            close_loader(self.loader)
        self.iterator, self.parked = None, None

    def park_pass(self) -> None:
        """Stop the worker processes but keep the position: the pass resumes at its next draw."""
        if self.iterator is None or getattr(self.loader, "num_workers", 0) == 0:
            if self.iterator is None:
                close_loader(self.loader)  # e.g. persistent workers idle after a finished pass
            return
        state = copy.deepcopy(self.loader.state_dict())
        self.drop_pass()
        self.loader.load_state_dict(copy.deepcopy(state))
        self.parked = state

    def state_dict(self) -> dict[str, Any]:
        """The v1 ``DataLoaderState`` of this loader (its own state split into the v1 fields)."""
        own = self.parked if self.parked is not None else self.loader.state_dict()
        entry = split_loader_state(copy.deepcopy(own))
        entry.batch_idx, entry.exhausted = self.batch_idx, self.exhausted
        return entry.to_dict()

    def load_state_dict(self, state: dict[str, Any] | DataLoaderState) -> None:
        """Restore from :meth:`state_dict` output: the live pass is dropped, the loader loaded."""
        entry = state if isinstance(state, DataLoaderState) else DataLoaderState.from_dict(state)
        self.drop_pass()
        loader_state = join_loader_state(entry)
        if loader_state is not None:
            self.loader.load_state_dict(loader_state)
        self.iterator, self.batch_idx, self.exhausted = None, entry.batch_idx, entry.exhausted
