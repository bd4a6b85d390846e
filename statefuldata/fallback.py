"""Skip-based restore for iterables that cannot checkpoint themselves.

:class:`SkipCounter` is the one skip mechanism: it counts what a pass hands out and, after a
restore, discards that many from the next pass before handing anything out.
:class:`SkipFallback` (items of a dataset) and :class:`statefuldata.SkipBatchesLoader` (batches of
a plain DataLoader) are both built on it.

:class:`SkipFallback` counts the items it hands out. Restoring a count re-opens the stream and
discards that many items *inside the worker, before collation* (no batches are built for skipped
items), logging one WARNING per restore that names the dataset, the count and the fix. The cost of
a restore grows with the position; implementing ``state_dict``/``load_state_dict`` on the dataset
makes it O(1).
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Iterable, Iterator
from typing import Any, ClassVar

import attrs
from torch.utils.data import IterableDataset

from statefuldata.errors import IncompatibleStateError
from statefuldata.validators import check_int

__all__ = ["SkipFallback"]  # SkipCounter is a helper of this module and adapters.py

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
class SkipCounter:
    """Counts what the current pass handed out; a restored count is skipped at the next pass.

    ``count`` is the position to save. :meth:`restore` sets it and makes the next :meth:`start`
    discard that many items first; a pass started earlier then raises instead of continuing from
    the old position. The owner supplies the source and its messages, so each wrapper keeps its
    own wording and logger.
    """

    count: int = 0
    _skip: int = 0
    _generation: int = 0

    def restore(self, count: int) -> None:
        """Resume at ``count``: the next pass skips that many and counts on from there."""
        self._skip = self.count = count
        self._generation += 1

    def start(
        self,
        open_source: Callable[[], Iterator[Any]],
        *,
        ended_early: Callable[[int, int], str],
        skipped: Callable[[int], None],
        superseded: str,
    ) -> Iterator[Any]:
        """A new pass over ``open_source()`` (opened at the first ``next``).

        Args:
            open_source: Opens the stream anew.
            ended_early: ``(skipped, wanted) -> message`` of the RuntimeError raised when the stream
                ends while skipping.
            skipped: Called with the count once the skip is done (the owner's WARNING).
            superseded: Message of the RuntimeError raised by a pass a restore or a newer pass
                replaced.
        """
        skip, self._skip = self._skip, 0
        self.count = skip
        self._generation += 1
        return self._run(open_source, skip, self._generation, ended_early, skipped, superseded)

    def _run(
        self,
        open_source: Callable[[], Iterator[Any]],
        skip: int,
        generation: int,
        ended_early: Callable[[int, int], str],
        skipped: Callable[[int], None],
        superseded: str,
    ) -> Iterator[Any]:
        source = open_source()
        if skip:
            done = sum(1 for _ in itertools.islice(source, skip))
            if done < skip:
                raise RuntimeError(ended_early(done, skip))
            skipped(skip)
        for item in source:
            if self._generation != generation:
                raise RuntimeError(superseded)
            self.count += 1
            yield item


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
    _counter: SkipCounter = attrs.field(init=False, factory=SkipCounter)

    def __attrs_post_init__(self) -> None:
        if not self.name:
            self.name = type(self.dataset).__name__

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]  # TypeError when the source has none

    def __iter__(self) -> Iterator[Any]:
        return self._counter.start(
            lambda: iter(self.dataset),
            ended_early=self._ended_early,
            skipped=self._warn,
            superseded=(
                f"this iterator over {self.name!r} was superseded by load_state_dict() or a new "
                "iter(); call iter() again to continue from the loaded state"
            ),
        )

    def _ended_early(self, skipped: int, skip: int) -> str:
        return (
            f"cannot restore {self.name!r}: the stream ended after {skipped} items while "
            f"skipping to the saved position of {skip} items; the data changed since the "
            "checkpoint, or the stream is not deterministic"
        )

    def _warn(self, skip: int) -> None:
        logger.warning(
            "Restoring %r by skipping %d items (skip-based fallback, cost grows with the "
            "position). Fix: implement state_dict()/load_state_dict() on %s so it restores in O(1).",
            self.name,
            skip,
            type(self.dataset).__name__,
        )

    def state_dict(self) -> dict[str, Any]:
        return {self.KEY_ITEMS: self._counter.count}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if not isinstance(state, dict) or set(state) != {self.KEY_ITEMS}:
            got = sorted(state) if isinstance(state, dict) else type(state).__name__
            raise IncompatibleStateError(
                f"SkipFallback state must have the key {self.KEY_ITEMS!r} (got {got}); pass the "
                "dict returned by state_dict()"
            )
        count = state[self.KEY_ITEMS]
        check_int(self.KEY_ITEMS, count, minimum=0, single=True, error=IncompatibleStateError)
        self._counter.restore(int(count))  # a live iterator raises instead of going on
