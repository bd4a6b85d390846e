"""Known causes of an inexact resume, recognised in a loader's datasets (used by verify_resume)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

HF_SHUFFLE_BUFFER = (
    "Cause: a Hugging Face IterableDataset.shuffle(buffer_size=...) keeps a shuffle buffer that its "
    "state_dict does not store (a documented limit of `datasets`), so a resume refills the buffer "
    "with other examples and the order differs. Use instead: a map-style datasets.Dataset with "
    "make_loader(..., shuffle=True) (exact, O(1) resume), or drop .shuffle() and let the epoch "
    "reorder the shards of to_iterable_dataset(num_shards=...) (make_loader forwards set_epoch)"
)


def _datasets(obj: Any, depth: int = 0) -> Iterator[Any]:
    """The datasets behind a loader: views and wrappers are unwrapped, manager phases expanded."""
    if obj is None or depth > 8:
        return
    manager = getattr(obj, "manager", None)
    if manager is not None and callable(getattr(manager, "loaders", None)):
        for loader in manager.loaders(getattr(obj, "phase", "train")):
            yield from _datasets(loader, depth + 1)
        return
    dataset = getattr(obj, "dataset", None)
    if depth:
        yield obj
    if dataset is not None and dataset is not obj:
        yield from _datasets(dataset, depth + 1)


def _has_hf_shuffle_buffer(dataset: Any) -> bool:
    if not type(dataset).__module__.startswith("datasets."):
        return False
    node = getattr(dataset, "_ex_iterable", None)
    for _ in range(32):
        if node is None:
            return False
        if type(node).__name__ == "BufferShuffledExamplesIterable":
            return True
        node = getattr(node, "ex_iterable", None)
    return False


def inexact_resume_hint(loader: Any) -> str:
    """Why resuming ``loader`` is inexact and what to use instead, when the cause is known."""
    for dataset in _datasets(loader):
        if _has_hf_shuffle_buffer(dataset):
            return HF_SHUFFLE_BUFFER
    return ""
