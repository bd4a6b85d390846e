"""Dataset views that carry the epoch into DataLoader workers (see :mod:`statefuldata.epochs`).

:func:`epoch_aware` wraps what :func:`statefuldata.checkpointable` returns: map-style datasets in
:class:`EpochAwareMap` (or :class:`StatefulEpochAwareMap`), iterables in :class:`EpochAwareIterable`.
A view forwards any other attribute to its dataset and reports the dataset's own ``state_dict()``.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

from torch.utils.data import Dataset, IterableDataset, get_worker_info

from statefuldata.epochs import EpochChannel, forward_epoch, local_epoch, report_epoch
from statefuldata.protocols import CheckpointableIterable
from statefuldata.seeding import seed_worker

_END = object()


class EpochView:
    """What both views share: the channel, the seeding recipe and attribute forwarding."""

    def __init__(self, dataset: Any, *, seed: int, rank: int) -> None:
        self.dataset = dataset
        self.channel = EpochChannel()
        self.seed, self.rank = seed, rank
        self._seen = -1  # generation this process last entered, and its epoch
        self._seen_epoch = 0

    def __getattr__(self, name: str) -> Any:
        dataset = self.__dict__.get("dataset")
        if dataset is None or name.startswith("__"):
            raise AttributeError(name)
        return getattr(dataset, name)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.dataset!r})"

    def begin_pass(self, epoch: int) -> None:
        """Main process, before a pass starts: publish ``epoch`` and forward it to the dataset.

        Forwarding here first matters for datasets whose epoch lives in shared memory (Hugging
        Face's): the workers' own ``set_epoch`` calls then find the value already set, instead of
        racing to update it.
        """
        self.channel.publish(epoch)
        self._seen, self._seen_epoch = self.channel.read()
        self._forward_epoch(epoch)

    def worker_started(self) -> int:
        """Called by the worker seeder at worker start-up: enter the current pass without reseeding."""
        self._seen, self._seen_epoch = self.channel.read()
        self._forward_epoch(self._seen_epoch)
        report_epoch(self._seen_epoch)
        return self._seen_epoch

    def _sync(self) -> int:
        """Epoch of the pass being produced; enter it first if it is new to this process."""
        if self.channel.generation == self._seen:  # the fast path, once per batch
            return self._seen_epoch
        self._seen, self._seen_epoch = self.channel.read()
        epoch = self._seen_epoch
        info = get_worker_info()
        if info is not None:  # a persistent worker starting another pass
            seed_worker(info.id, seed=self.seed, epoch=epoch, rank=self.rank)
            report_epoch(epoch)
        self._forward_epoch(epoch)
        return epoch

    def _forward_epoch(self, epoch: int) -> None:
        forward_epoch(self.dataset, epoch)


class EpochAwareMap(EpochView, Dataset[Any]):
    """Map-style view (see the module docstring)."""

    def __init__(self, dataset: Any, *, seed: int, rank: int) -> None:
        super().__init__(dataset, seed=seed, rank=rank)
        # looked up once: a missing attribute costs an AttributeError inside getattr every batch
        self._batched = hasattr(dataset, "__getitems__")

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: Any) -> Any:
        epoch, previous = self._sync(), getattr(local_epoch, "epoch", None)
        local_epoch.epoch = epoch
        try:
            return self.dataset[index]
        finally:
            local_epoch.epoch = previous

    def __getitems__(self, indices: list[Any]) -> list[Any]:
        epoch, previous = self._sync(), getattr(local_epoch, "epoch", None)
        local_epoch.epoch = epoch
        try:
            dataset = self.dataset
            return dataset.__getitems__(indices) if self._batched else [dataset[i] for i in indices]
        finally:
            local_epoch.epoch = previous


class StatefulEpochAwareMap(EpochAwareMap):
    """Map-style view of a dataset that has its own ``state_dict``/``load_state_dict``."""

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = self.dataset.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.dataset.load_state_dict(state)


class EpochAwareIterable(EpochView, IterableDataset[Any]):
    """Iterable view: forwards the epoch, and applies a loaded state to the resumed pass only.

    Until a pass around a load (the resumed one, or a later one reset to the dataset's first state)
    hands out its first item, ``state_dict()`` reports the state that pass starts from: datasets that
    apply a state lazily (Hugging Face applies it at the first item) would otherwise report a stale
    one, and a checkpoint taken right after a resume would be wrong.
    """

    def __init__(self, dataset: Any, *, seed: int, rank: int) -> None:
        super().__init__(dataset, seed=seed, rank=rank)
        stateful = isinstance(dataset, CheckpointableIterable)
        self._pristine = copy.deepcopy(dataset.state_dict()) if stateful else None
        self._resuming = False  # a state was loaded and its pass has not started yet
        self._loaded = False  # a state was loaded in this process at some point
        self._starting: dict[str, Any] | None = None  # state of a pass that has not drawn yet

    def __len__(self) -> int:
        return len(self.dataset)

    def __iter__(self) -> Iterator[Any]:
        epoch = self._sync()
        if self._resuming:
            self._resuming = False
        elif self._loaded and self._pristine is not None:
            self._starting = copy.deepcopy(self._pristine)
            self.dataset.load_state_dict(copy.deepcopy(self._pristine))
        return self._items(iter(self.dataset), epoch, get_worker_info() is not None)

    def _items(self, items: Iterator[Any], epoch: int, in_worker: bool) -> Iterator[Any]:
        if in_worker:  # a worker produces one pass at a time: its epoch is already reported
            if self._starting is not None:
                first = next(items, _END)
                self._starting = None
                if first is _END:
                    return
                yield first
            yield from items
            return
        while True:  # the main process may interleave passes of several loaders
            previous = getattr(local_epoch, "epoch", None)
            local_epoch.epoch = epoch
            try:
                item = next(items, _END)
            finally:
                local_epoch.epoch = previous
            self._starting = None
            if item is _END:
                return
            yield item

    def state_dict(self) -> dict[str, Any]:
        if self._starting is not None:
            return copy.deepcopy(self._starting)
        state: dict[str, Any] = self.dataset.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._resuming = self._loaded = True
        self._starting = copy.deepcopy(state)
        self.dataset.load_state_dict(state)


def epoch_aware(dataset: Any, *, seed: int, rank: int, map_style: bool) -> Any:
    """Wrap a dataset returned by :func:`statefuldata.checkpointable` in the matching view."""
    if isinstance(dataset, EpochView):
        return dataset
    if not map_style:
        return EpochAwareIterable(dataset, seed=seed, rank=rank)
    if isinstance(dataset, CheckpointableIterable):
        return StatefulEpochAwareMap(dataset, seed=seed, rank=rank)
    return EpochAwareMap(dataset, seed=seed, rank=rank)
