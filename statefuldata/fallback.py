"""Skip-based restore for iterables that cannot checkpoint themselves.

:class:`SkipFallback` counts the items it hands out. Restoring a count re-opens the stream and
discards that many items *inside the worker, before collation* (no batches are built for skipped
items), logging one WARNING per restore that names the dataset, the count and the fix. The cost of
a restore grows with the position; implementing ``state_dict``/``load_state_dict`` on the dataset
makes it O(1).
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterable, Iterator
from typing import Any, ClassVar

import attrs
from torch.utils.data import IterableDataset

from statefuldata.errors import IncompatibleStateError

__all__ = ["SkipFallback"]

logger = logging.getLogger(__name__)


def _reiterable(_instance: object, _attribute: attrs.Attribute[Any], value: object) -> None:
    if not isinstance(value, Iterable):
        raise TypeError(f"SkipFallback needs an iterable (got {type(value).__name__})")
    if isinstance(value, Iterator):
        raise TypeError(
            f"SkipFallback needs a re-iterable source, got a one-shot iterator "
            f"({type(value).__name__}); pass an object whose __iter__ opens the stream anew "
            "(e.g. an IterableDataset), so a restore can re-open and skip"
        )


@attrs.define(eq=False)
class SkipFallback(IterableDataset[Any]):
    """Make any re-iterable checkpointable by counting and skipping.

    Example:
        >>> ds = SkipFallback(range(5), name="numbers")
        >>> it = iter(ds); _ = next(it), next(it)
        >>> state = ds.state_dict()   # {"items_yielded": 2}
        >>> ds.load_state_dict(state); list(ds)   # warns once, skips 2
        [2, 3, 4]

    State keys: ``items_yielded``. Resume guarantee: exact for deterministic streams; cost O(count).
    """

    KEY_ITEMS: ClassVar[str] = "items_yielded"

    dataset: Iterable[Any] = attrs.field(validator=_reiterable)
    name: str = attrs.field(default="", kw_only=True)
    _items: int = attrs.field(init=False, default=0)
    _skip: int = attrs.field(init=False, default=0)
    _generation: int = attrs.field(init=False, default=0)

    def __attrs_post_init__(self) -> None:
        if not self.name:
            self.name = type(self.dataset).__name__

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]  # TypeError when the source has none

    def __iter__(self) -> Iterator[Any]:
        skip, self._skip = self._skip, 0
        self._items = skip
        self._generation += 1
        return self._generate(skip, self._generation)

    def _generate(self, skip: int, generation: int) -> Iterator[Any]:
        source = iter(self.dataset)
        if skip:
            skipped = sum(1 for _ in itertools.islice(source, skip))
            if skipped < skip:
                raise RuntimeError(
                    f"cannot restore {self.name!r}: the stream ended after {skipped} items while "
                    f"skipping to the saved position of {skip} items; the data changed since the "
                    "checkpoint, or the stream is not deterministic"
                )
            logger.warning(
                "Restoring %r by skipping %d items (skip-based fallback, cost grows with the "
                "position). Fix: implement state_dict()/load_state_dict() on %s so it restores in O(1).",
                self.name,
                skip,
                type(self.dataset).__name__,
            )
        for item in source:
            if self._generation != generation:
                raise RuntimeError(
                    f"this iterator over {self.name!r} was superseded by load_state_dict() or a new "
                    "iter(); call iter() again to continue from the loaded state"
                )
            self._items += 1
            yield item

    def state_dict(self) -> dict[str, Any]:
        return {self.KEY_ITEMS: self._items}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if not isinstance(state, dict) or set(state) != {self.KEY_ITEMS}:
            got = sorted(state) if isinstance(state, dict) else type(state).__name__
            raise IncompatibleStateError(
                f"SkipFallback state must have the key {self.KEY_ITEMS!r} (got {got}); pass the "
                "dict returned by state_dict()"
            )
        count = state[self.KEY_ITEMS]
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise IncompatibleStateError(f"{self.KEY_ITEMS!r} must be an int >= 0 (got {count!r})")
        self._skip = self._items = count
        self._generation += 1  # a live iterator raises instead of continuing from the old position
