"""Per-sample seeding: randomness drawn from the global RNGs becomes a function of the sample.

``make_loader(..., per_sample_seed=True)`` seeds the Python (``random``), numpy (``numpy.random``)
and torch (CPU default generator) global RNGs right before one sample is read, and puts the caller's
three RNG states back right after. Augmentations written the usual way (torchvision-style transforms,
``torch.rand``, ``np.random``, ``random`` inside ``__getitem__`` or a stream's ``__iter__``) then
depend on the sample only:

* map-style datasets: around each ``dataset[index]``, seeded from ``derive_seed(seed, epoch,
  index)`` (the same seed as :func:`statefuldata.sample_rng` ``(seed, epoch, index)``, so torch draws
  equal those of that generator). Identical after any resume, for any worker count and for any rank
  layout; different from epoch to epoch. A dataset's batched ``__getitems__`` is bypassed (each
  sample needs its own seed), so every sample goes through ``__getitem__``.
* streams: around each ``next()`` on the stream. A stream that can tell the worker-independent index
  of the item it yields next exposes it as a method ``next_sample_index() -> int`` and is keyed by
  ``(seed, epoch, rank, index)``: its values are then also equal between worker counts. Any other
  stream is keyed by ``(seed, epoch, rank, worker_id, position)``, ``position`` counting the items
  this worker read in this pass: identical after a resume with the same worker count.

The epoch is :func:`statefuldata.current_epoch` (the pass being produced, known in every worker,
persistent ones included, and restored with the loader's state); outside a loader pass it is 0.
Users who draw from :func:`statefuldata.sample_rng` instead get the same epoch inside a worker from
``current_epoch()``: ``sample_rng(seed, current_epoch(), index)``.

Cost: about 0.1 ms per sample (``python -m benchmarks per_sample_seed``: 92 µs for the RNG work
alone, 130 µs added per item in a loader, of which saving and restoring numpy's legacy global state
is 73 µs and deriving the seed 10 µs). Against a 50 µs item that is far over a 5% budget, so the
option is off by default, and ``verify_resume`` names it when a resumed run differs only in tensor
values. For items of a few milliseconds (image decoding) it costs a few percent.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from typing import Any, ClassVar, TypeVar

import numpy as np
import torch
from torch.utils.data import Dataset, IterableDataset, get_worker_info

from statefuldata.epochs import current_epoch
from statefuldata.errors import IncompatibleStateError
from statefuldata.fallback import SkipFallback
from statefuldata.seeding import derive_seed

__all__ = ["seeded_call"]

PER_SAMPLE_SEED_DEFAULT = False
"""Default of ``make_loader(per_sample_seed=...)``: off, because it costs > 5% of a 50 µs item."""

# Seed-path tags keep per-sample keys apart from every other key derived from the loader's seed
# (worker seeds are (epoch, rank, worker_id); ShuffleBuffer uses tags 3 and 4).
_TAG_INDEX = 1
_TAG_SHARD = 2

_T = TypeVar("_T")
_TORCH = torch.default_generator


def seeded_call(seed: int, fn: Callable[..., _T], *args: Any) -> _T:
    """Run ``fn(*args)`` with the Python, numpy and torch CPU global RNGs seeded from ``seed``.

    The caller's three RNG states are restored afterwards, also when ``fn`` raises. Seeding follows
    :func:`statefuldata.seed_worker`: ``random.seed(seed)``, ``numpy.random.seed(seed % 2**32)`` and
    the torch CPU generator's ``manual_seed(seed)`` (CUDA generators are not touched).

    Example:
        >>> a = seeded_call(5, lambda: (random.random(), torch.rand(1).item()))
        >>> a == seeded_call(5, lambda: (random.random(), torch.rand(1).item()))
        True
    """
    python_state, numpy_state, torch_state = (
        random.getstate(),
        np.random.get_state(),
        _TORCH.get_state(),
    )
    random.seed(seed)
    np.random.seed(seed % 2**32)
    _TORCH.manual_seed(seed)
    try:
        return fn(*args)
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)
        _TORCH.set_state(torch_state)


def _epoch() -> int:
    try:
        return current_epoch()
    except RuntimeError:  # read outside a loader pass (e.g. loader.dataset[i] in the main process)
        return 0


def _key(seed: int, *path: Any) -> int:
    try:
        return derive_seed(seed, *path)
    except (TypeError, ValueError) as exc:
        raise TypeError(
            f"per_sample_seed keys each sample by non-negative integers (got the path {path!r}: "
            f"{exc}); use a sampler that yields int indices, a next_sample_index() that returns "
            "an int >= 0, or per_sample_seed=False"
        ) from exc


class _Forwarding:
    """Attribute access falls through to the wrapped dataset (``set_epoch``, ``features``, ...)."""

    dataset: Any

    def __getattr__(self, name: str) -> Any:
        dataset = self.__dict__.get("dataset")
        if dataset is None or name.startswith("__"):
            raise AttributeError(name)
        return getattr(dataset, name)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.dataset!r})"


class SeededMap(_Forwarding, Dataset[Any]):
    """Map-style: ``dataset[index]`` read under ``derive_seed(seed, epoch, index)``."""

    def __init__(self, dataset: Any, *, seed: int) -> None:
        self.dataset, self.seed = dataset, seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: Any) -> Any:
        return seeded_call(_key(self.seed, _epoch(), index), self.dataset.__getitem__, index)


class SeededStream(_Forwarding, IterableDataset[Any]):
    """A stream whose every ``next()`` runs under the item's own seed (see the module docstring).

    Without state methods: positions count from the start of each pass, which is what the skip
    fallback replays on a restore (it wraps this stream, so skipped items are seeded one by one).
    """

    def __init__(self, dataset: Any, *, seed: int, rank: int) -> None:
        self.dataset, self.seed, self.rank = dataset, seed, rank
        self._start = self._position = 0

    def __len__(self) -> int:
        return len(self.dataset)

    def __iter__(self) -> Iterator[Any]:
        self._position, self._start = self._start, 0  # consume a loaded position now
        return self._generate(iter(self.dataset))

    def _generate(self, items: Iterator[Any]) -> Iterator[Any]:
        epoch = _epoch()  # read at the first next(): the pass is being produced by then
        info = get_worker_info()
        worker = 0 if info is None else info.id
        index_of = getattr(self.dataset, "next_sample_index", None)
        index_of = index_of if callable(index_of) else None
        while True:
            if index_of is not None:
                key = _key(self.seed, epoch, self.rank, _TAG_INDEX, index_of())
            else:
                key = _key(self.seed, epoch, self.rank, _TAG_SHARD, worker, self._position)
            try:
                item = seeded_call(key, next, items)
            except StopIteration:
                return
            self._position += 1
            yield item


class StatefulSeededStream(SeededStream):
    """:class:`SeededStream` over a checkpointable stream: its state plus the position.

    State keys: ``source`` (the stream's own state), ``position`` (items read in this pass).
    """

    KEY_SOURCE: ClassVar[str] = "source"
    KEY_POSITION: ClassVar[str] = "position"

    def state_dict(self) -> dict[str, Any]:
        return {self.KEY_SOURCE: self.dataset.state_dict(), self.KEY_POSITION: self._position}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        expected = {self.KEY_SOURCE, self.KEY_POSITION}
        if not isinstance(state, dict) or set(state) != expected:
            got = sorted(state) if isinstance(state, dict) else type(state).__name__
            raise IncompatibleStateError(
                f"a per-sample seeded stream's state must have keys {sorted(expected)} (got {got}); "
                "it was saved without per_sample_seed=True, so build the loader the way it was saved"
            )
        position = state[self.KEY_POSITION]
        if isinstance(position, bool) or not isinstance(position, int) or position < 0:
            raise IncompatibleStateError(f"'position' must be an int >= 0 (got {position!r})")
        self.dataset.load_state_dict(state[self.KEY_SOURCE])
        self._start = position


def per_sample_seeded(data: Any, *, seed: int, rank: int, map_style: bool) -> Any:
    """Wrap ``data`` (as :func:`statefuldata.checkpointable` returns it) for per-sample seeding.

    Example:
        >>> class Noisy(list):
        ...     def __getitem__(self, index):
        ...         return random.random()
        >>> ds = per_sample_seeded(Noisy(range(4)), seed=0, rank=0, map_style=True)
        >>> ds[2] == ds[2] and ds[2] != ds[3]
        True
    """
    if map_style:
        return SeededMap(data, seed=seed)
    if isinstance(data, SkipFallback):  # seed under the fallback, so replayed items are seeded too
        return SkipFallback(SeededStream(data.dataset, seed=seed, rank=rank), name=data.name)
    return StatefulSeededStream(data, seed=seed, rank=rank)
