"""The two-method protocols that decide what gets checkpointed.

Timing rules, for every implementation in this package and the ones we expect from users:

* ``state_dict()`` works at any time, including before the first item.
* ``load_state_dict(state)`` takes effect at the next ``iter()``. Consume the loaded state inside
  ``__iter__`` itself, not lazily in a generator body: a loader may call ``iter()`` and never draw
  (a restore at the very end of a pass), and the pending state must not leak into the next pass. An iterator that is already live
  when state is loaded either follows the new state (samplers) or raises on its next item
  (iterables): it never silently continues from the old position.
* State holds only ``int, float, bool, str, None``, lists, tuples, dicts and tensors, so it loads
  with ``torch.load(..., weights_only=True)``. It stores positions, never data.

Example of a checkpointable iterable dataset::

    class Counter(torch.utils.data.IterableDataset):
        def __init__(self, n):
            self.n, self._start, self._pos = n, 0, 0

        def __iter__(self):
            self._pos, self._start = self._start, 0  # consume the loaded state now
            return self._items()

        def _items(self):
            while self._pos < self.n:
                self._pos += 1
                yield self._pos - 1

        def state_dict(self):
            return {"position": self._pos}

        def load_state_dict(self, state):
            self._start = state["position"]

    assert isinstance(Counter(3), CheckpointableIterable)
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

__all__ = ["CheckpointableIterable", "StatefulSampler"]


@runtime_checkable
class CheckpointableIterable(Protocol):
    """An iterable whose position can be saved and restored (see the module docstring)."""

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


@runtime_checkable
class StatefulSampler(Protocol):
    """A sampler whose position can be saved and restored (see the module docstring)."""

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...
