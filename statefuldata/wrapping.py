"""``checkpointable(dataset)``: decide how a dataset's position is checkpointed."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from torch.utils.data import IterableDataset

from statefuldata.fallback import SkipFallback
from statefuldata.protocols import CheckpointableIterable

__all__ = ["checkpointable"]


def is_map_style(dataset: Any) -> bool:
    """A dataset indexed by position: ``__getitem__`` and ``__len__``, and not an IterableDataset."""
    return (
        not isinstance(dataset, IterableDataset)
        and hasattr(dataset, "__getitem__")
        and hasattr(dataset, "__len__")
    )


def checkpointable(dataset: Any, *, name: str | None = None) -> Any:
    """Return ``dataset`` in a form whose position survives a checkpoint.

    * Map-style datasets are returned unchanged: the sampler holds the position.
    * Iterables that implement ``state_dict``/``load_state_dict`` are returned unchanged.
    * Any other iterable is wrapped in :class:`SkipFallback` (restore by counting and skipping,
      with a WARNING that says how to make it O(1)).

    :func:`statefuldata.make_loader` then hands the DataLoader a view of the result that carries the
    epoch into workers, forwards ``set_epoch`` and applies a loaded state to the resumed pass only
    (a Hugging Face ``IterableDataset`` would re-apply it on later passes by itself); see
    :mod:`statefuldata.views`.

    Example:
        >>> checkpointable([1, 2, 3]) == [1, 2, 3]
        True
    """
    if is_map_style(dataset) or isinstance(dataset, CheckpointableIterable):
        return dataset
    if isinstance(dataset, Iterable):
        return SkipFallback(dataset, name=name or "")
    raise TypeError(
        f"checkpointable() needs a map-style dataset (__getitem__ and __len__) or an iterable "
        f"(got {type(dataset).__name__}); wrap your data in a torch Dataset or IterableDataset"
    )
