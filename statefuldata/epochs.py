"""The epoch a DataLoader pass is producing, known in every worker: :func:`current_epoch`.

:func:`statefuldata.make_loader` hands the DataLoader a thin *view* of the dataset (map-style or
iterable, :mod:`statefuldata.views`) that carries an :class:`EpochChannel`: two integers in shared
memory, ``(generation, epoch)``, written by the main process before each pass (before workers are
forked, or before persistent workers are told to start a new pass) and read by the view wherever the
dataset is read. So:

* inside a worker, or in the main process while a pass with ``num_workers=0`` fetches, the view knows
  the epoch (pass index) being produced: :func:`current_epoch` returns it;
* before each pass, in the main process and then in every worker, the view calls
  ``dataset.set_epoch(epoch)`` when the dataset has one (see :func:`forward_epoch`, which also sets
  webdataset's deterministic shard shuffle), so epoch-aware streams (Hugging Face ``.shuffle()``,
  webdataset, ...) reshuffle per epoch, identically in every process and after a resume;
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

import ctypes
import multiprocessing
import sys
import threading
from multiprocessing.context import get_spawning_popen
from typing import Any

from statefuldata.fallback import SkipFallback

__all__ = ["current_epoch"]

# ``.epoch``: what current_epoch() reports in this thread (views set it around each fetch)
local_epoch = threading.local()


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
    epoch = getattr(local_epoch, "epoch", None)
    if epoch is None:
        raise RuntimeError(
            "current_epoch() is only known while a pass of a loader built by "
            "statefuldata.make_loader reads the dataset: inside one of its DataLoader workers, or "
            "in the main process during a num_workers=0 pass (got a call outside both)"
        )
    return int(epoch)


def report_epoch(epoch: int) -> None:
    """Report ``epoch`` from :func:`current_epoch` in this process from now on (worker start-up)."""
    local_epoch.epoch = epoch


def forward_epoch(dataset: Any, epoch: int) -> None:
    """``dataset.set_epoch(epoch)``, looking through :class:`~statefuldata.SkipFallback`.

    A webdataset pipeline has no ``set_epoch``; its deterministic shard shuffle
    (``WebDataset(..., shardshuffle=n, seed=s, detshuffle=True)``) counts passes per process
    instead, which fresh workers restart at 0 and a resume gets wrong. Its ``detshuffle`` stages are
    set to ``epoch`` here, so every process shuffles the shards of epoch ``e`` the same way.
    """
    target = dataset
    for _ in range(4):
        set_epoch = getattr(target, "set_epoch", None)
        if callable(set_epoch):
            set_epoch(epoch)
            return
        if not isinstance(target, SkipFallback):
            break
        target = target.dataset
    filters = sys.modules.get("webdataset.filters")
    stages = getattr(target, "pipeline", None)
    if filters is not None and isinstance(stages, list):
        for stage in stages:
            if isinstance(stage, filters.detshuffle):
                stage.epoch = epoch - 1  # its run() adds one before seeding


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

    @property
    def generation(self) -> int:
        return self._shared[0]

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
