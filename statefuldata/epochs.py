"""The epoch a DataLoader pass is producing, known in every worker: :func:`current_epoch`.

:func:`statefuldata.make_loader` hands the DataLoader a thin *view* of the dataset (map-style or
iterable) that carries an :class:`EpochChannel`: two integers in shared memory, ``(generation, epoch)``,
written by the main process before each pass (before workers are forked, or before persistent
workers are told to start a new pass) and read by the view wherever the dataset is read. So:

* inside a worker, or in the main process while a pass with ``num_workers=0`` fetches, the view knows
  the epoch (pass index) being produced: :func:`current_epoch` returns it;
* before the first item of each pass, in every worker (and in the main process for
  ``num_workers=0``), the view calls ``dataset.set_epoch(epoch)`` when the dataset has one, so
  epoch-aware streams (Hugging Face ``.shuffle()``, webdataset, ...) reshuffle per epoch;
* persistent workers, which torch keeps across passes, reseed their Python, numpy and torch RNGs from
  ``(seed, epoch, rank, worker_id)`` when they see a new generation, exactly as fresh workers are
  seeded at start-up (``worker_init_fn`` is not called again);
* a stateful iterable is given a loaded state for the resumed pass only: every later pass in that
  process starts from the state the dataset had when the loader was built. Hugging Face
  ``IterableDataset`` re-applies a loaded state on every pass of the same epoch by itself; the view
  undoes that.

The view forwards any other attribute to the dataset (``loader.dataset.features`` works) and its
``state_dict()`` is the dataset's own, so loader states keep their shape.
"""

from __future__ import annotations

import contextlib
import copy
import ctypes
import multiprocessing
import threading
from collections.abc import Iterator
from multiprocessing.context import get_spawning_popen
from typing import Any

from torch.utils.data import Dataset, IterableDataset, get_worker_info

from statefuldata.protocols import CheckpointableIterable
from statefuldata.seeding import seed_worker

__all__ = ["current_epoch"]

_local = threading.local()
_END = object()


def current_epoch() -> int:
    """The epoch (pass index) being produced, inside a worker of a loader built by ``make_loader``.

    Also answers in the main process while a ``num_workers=0`` pass reads the dataset (from the
    dataset's ``__getitem__``, ``__getitems__`` or ``__iter__``). Correct with
    ``persistent_workers=True`` and after a resume (the resumed pass reports its own epoch).

    Example:
        >>> from statefuldata import make_loader
        >>> class Tagged(list):
        ...     def __getitem__(self, index):
        ...         return current_epoch()
        >>> loader = make_loader(Tagged(range(3)), batch_size=3)
        >>> [batch.tolist() for _ in range(2) for batch in loader]
        [[0, 0, 0], [1, 1, 1]]

    Raises:
        RuntimeError: outside any pass of such a loader.
    """
    epoch = getattr(_local, "epoch", None)
    if epoch is None:
        raise RuntimeError(
            "current_epoch() is only known while a pass of a loader built by "
            "statefuldata.make_loader reads the dataset: inside one of its DataLoader workers, or "
            "in the main process during a num_workers=0 pass (got a call outside both)"
        )
    return int(epoch)


def report_epoch(epoch: int) -> None:
    """Report ``epoch`` from :func:`current_epoch` in this process from now on (worker start-up)."""
    _local.epoch = epoch


@contextlib.contextmanager
def producing(epoch: int) -> Iterator[None]:
    """Report ``epoch`` from :func:`current_epoch` in this thread while the block runs."""
    previous = getattr(_local, "epoch", None)
    _local.epoch = epoch
    try:
        yield
    finally:
        _local.epoch = previous


class EpochChannel:
    """``(generation, epoch)`` shared between the main process and the DataLoader workers.

    The main process calls :meth:`publish` before each pass; readers compare the generation with the
    last one they saw to notice a new pass (two passes may have the same epoch). The shared memory
    travels to workers by fork inheritance or while a worker is being spawned; any other pickling
    (``copy.deepcopy``, saving the dataset) takes a detached snapshot instead.
    """

    def __init__(self, generation: int = 0, epoch: int = 0) -> None:
        self._shared = multiprocessing.RawArray(ctypes.c_longlong, [generation, epoch])

    def publish(self, epoch: int) -> None:
        self._shared[1] = int(epoch)
        self._shared[0] += 1

    def read(self) -> tuple[int, int]:
        shared = self._shared
        return shared[0], shared[1]

    def __getstate__(self) -> dict[str, Any]:
        if get_spawning_popen() is not None:
            return {"shared": self._shared}
        return {"snapshot": self.read()}

    def __setstate__(self, state: dict[str, Any]) -> None:
        if "shared" in state:
            self._shared = state["shared"]
        else:
            self.__init__(*state["snapshot"])  # type: ignore[misc]


class EpochView:
    """What both views share: the channel, the seeding recipe and attribute forwarding."""

    def __init__(self, dataset: Any, *, seed: int, rank: int) -> None:
        self.dataset = dataset
        self.channel = EpochChannel()
        self.seed, self.rank = seed, rank
        self._seen = -1  # generation this process last entered

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
        self._seen = self.channel.read()[0]
        self._forward_epoch(epoch)

    def worker_started(self) -> int:
        """Called by the worker seeder at worker start-up: enter the current pass without reseeding."""
        generation, epoch = self.channel.read()
        self._seen = generation
        self._forward_epoch(epoch)
        _local.epoch = epoch
        return epoch

    def _sync(self) -> int:
        """Epoch of the pass being produced; enter it first if it is new to this process."""
        generation, epoch = self.channel.read()
        if generation != self._seen:
            self._seen = generation
            info = get_worker_info()
            if info is not None:  # a persistent worker starting another pass
                seed_worker(info.id, seed=self.seed, epoch=epoch, rank=self.rank)
                _local.epoch = epoch
            self._forward_epoch(epoch)
        return epoch

    def _forward_epoch(self, epoch: int) -> None:
        set_epoch = getattr(self.dataset, "set_epoch", None)
        if callable(set_epoch):
            set_epoch(epoch)


class EpochAwareMap(EpochView, Dataset):
    """Map-style view (see the module docstring)."""

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: Any) -> Any:
        epoch = self._sync()
        if get_worker_info() is not None:
            return self.dataset[index]
        with producing(epoch):
            return self.dataset[index]

    def __getitems__(self, indices: list[Any]) -> list[Any]:
        epoch = self._sync()
        getitems = getattr(self.dataset, "__getitems__", None)
        with contextlib.nullcontext() if get_worker_info() is not None else producing(epoch):
            if callable(getitems):
                return getitems(indices)
            dataset = self.dataset
            return [dataset[i] for i in indices]


class StatefulEpochAwareMap(EpochAwareMap):
    """Map-style view of a dataset that has its own ``state_dict``/``load_state_dict``."""

    def state_dict(self) -> dict[str, Any]:
        return self.dataset.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.dataset.load_state_dict(state)


class EpochAwareIterable(EpochView, IterableDataset):
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
        if self._starting is not None:
            with contextlib.nullcontext() if in_worker else producing(epoch):
                first = next(items, _END)
            self._starting = None
            if first is _END:
                return
            yield first
        if in_worker:
            yield from items
            return
        while True:
            with producing(epoch):
                item = next(items, _END)
            if item is _END:
                return
            yield item

    def state_dict(self) -> dict[str, Any]:
        if self._starting is not None:
            return copy.deepcopy(self._starting)
        return self.dataset.state_dict()

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
