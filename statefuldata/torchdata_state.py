"""Where torchdata keeps things inside ``StatefulDataLoader.state_dict()``, and our edits of it.

Every torchdata-private key this package reads or writes is a constant here, and every edit of a
torchdata state (the v1 split and join) or of its behaviour (:func:`start_passes_at_iter`, for
torchdata < 0.11) is a function here. Checked against torchdata 0.8.0, 0.9.0, 0.10.0, 0.10.1 and
0.11.0 with torch 2.13 (0.8 to 0.10 share one ``stateful_dataloader`` implementation);
``tests/statefuldata/test_torchdata_state.py`` pins it for the installed version, so an upgrade
that moves a key fails there, naming the key.

Layout (``num_workers=0``): a flat dict with the keys of :data:`SINGLE_PROCESS_KEYS`. With workers:
``{_snapshot: {_main_snapshot: {...}, _worker_snapshots: {"worker_<i>": {...}}, ...}, ...}``; the
main snapshot holds the sampler side, each worker snapshot its copy of the dataset's state.

The batch sampler's state ``{"samples_yielded": int, "sampler_state": <our sampler's state>}`` sits
under :data:`KEY_SAMPLER_ITER_STATE` from torchdata 0.11 on (its iterator is stateful) and under
:data:`KEY_INDEX_SAMPLER_STATE` before (the batch sampler itself is). :func:`join_state`
puts it where the installed version reads it, so a loader state written under 0.10 resumes under
0.11 and back.
"""

from __future__ import annotations

import copy
import functools
import itertools
import logging
import warnings
from collections.abc import Callable, Iterator
from typing import Any

from torch.utils.data.dataloader import _InfiniteConstantSampler
from torchdata.stateful_dataloader import Stateful, StatefulDataLoader
from torchdata.stateful_dataloader.sampler import BatchSampler

try:  # torchdata >= 0.11: the batch sampler's iterator holds the state
    from torchdata.stateful_dataloader.sampler import _BatchSamplerIterator
except ImportError:  # pragma: no cover - older torchdata
    _BatchSamplerIterator = None

__all__ = [
    "KEY_DATASET_STATE",
    "KEY_FETCHER_STATE",
    "KEY_INDEX_SAMPLER_STATE",
    "KEY_ITERATOR_FINISHED",
    "KEY_MAIN_SNAPSHOT",
    "KEY_NUM_YIELDED",
    "KEY_SAMPLER_ITER_STATE",
    "KEY_SAMPLER_STATE",
    "KEY_SAMPLES_YIELDED",
    "KEY_SNAPSHOT",
    "KEY_STEPS_SINCE_SNAPSHOT",
    "KEY_WORKER_SNAPSHOTS",
    "PRIVATE_ATTRIBUTES",
    "SINGLE_PROCESS_KEYS",
    "batch_sampler_key",
    "batch_with_islice",
    "installed_batch_sampler_key",
    "join_state",
    "snapshot_now",
    "split_state",
    "start_passes_at_iter",
]

logger = logging.getLogger(__name__)

KEY_SNAPSHOT = "_snapshot"
KEY_MAIN_SNAPSHOT = "_main_snapshot"
KEY_WORKER_SNAPSHOTS = "_worker_snapshots"
KEY_SAMPLER_ITER_STATE = "_sampler_iter_state"
KEY_INDEX_SAMPLER_STATE = "_index_sampler_state"
KEY_DATASET_STATE = "dataset_state"
KEY_FETCHER_STATE = "fetcher_state"
KEY_NUM_YIELDED = "_num_yielded"
KEY_ITERATOR_FINISHED = "_iterator_finished"
#: Multi-process only: the step of the worker snapshot, the batches yielded since, the worker that
#: yielded the last batch, and (in the main snapshot) the batches the sampler side handed out.
KEY_SNAPSHOT_STEP = "_snapshot_step"
KEY_STEPS_SINCE_SNAPSHOT = "_steps_since_snapshot"
KEY_LAST_YIELDED_WORKER = "_last_yielded_worker_id"
KEY_SAMPLER_ITER_YIELDED = "_sampler_iter_yielded"
#: Inside the batch sampler's state: the sampler's own state, and the samples handed out.
KEY_SAMPLER_STATE = "sampler_state"
KEY_SAMPLES_YIELDED = "samples_yielded"

#: The keys of a single-process loader's state (and, less the last three, of a main snapshot).
SINGLE_PROCESS_KEYS = (
    KEY_INDEX_SAMPLER_STATE,
    KEY_SAMPLER_ITER_STATE,
    "_sampler_iter_yielded",
    "_IterableDataset_len_called",
    "_shared_seed",
    KEY_NUM_YIELDED,
    KEY_FETCHER_STATE,
    KEY_DATASET_STATE,
    KEY_ITERATOR_FINISHED,
)

#: Private attributes of ``StatefulDataLoader`` (first) and of its iterators (second) that
#: :class:`statefuldata.SeededStatefulDataLoader` and the epoch iterator use.
PRIVATE_ATTRIBUTES = (
    ("_iterator", "_initial_iter_for_state_dict", "next_iter_state", "_get_iterator"),
    ("_num_yielded", "_finished", "_reset", "_shutdown_workers", "_send_idx", "_rcvd_idx"),
)

# The keys a batch sampler's state may sit under, in the order they are looked up.
_BATCH_KEYS = (KEY_SAMPLER_ITER_STATE, KEY_INDEX_SAMPLER_STATE)
# torchdata's BatchSampler state: its keys, whatever the version.
_TORCHDATA_BATCH_STATE = frozenset({KEY_SAMPLES_YIELDED, KEY_SAMPLER_STATE, "sampler_iter_state"})


@functools.cache
def installed_batch_sampler_key() -> str:
    """The key under which the installed torchdata reports its batch sampler's state.

    Found by asking a one-item loader, not from the version number.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="'set_vital' is deprecated", category=UserWarning)
        state = StatefulDataLoader([0], batch_size=1).state_dict()
    key = batch_sampler_key(state)
    if key is None:
        raise RuntimeError(
            "the installed torchdata reports no batch sampler state under "
            f"{' or '.join(_BATCH_KEYS)} (its state has keys {sorted(state)}); statefuldata "
            "supports torchdata >=0.8,<0.12: install a version in that range"
        )
    return key


def batch_sampler_key(state: dict[str, Any]) -> str | None:
    """The key of ``state`` (single-process state or main snapshot) holding a batch sampler's state."""
    return next((key for key in _BATCH_KEYS if isinstance(state.get(key), dict)), None)


def _is_torchdata_batch_state(value: Any) -> bool:
    return (
        isinstance(value, dict)
        and KEY_SAMPLES_YIELDED in value
        and set(value) <= _TORCHDATA_BATCH_STATE
    )


def _take_sampler(part: dict[str, Any]) -> Any:
    """Pop the sampler's state out of the batch sampler's state in ``part`` (copied, not edited)."""
    key = batch_sampler_key(part)
    if key is None or KEY_SAMPLER_STATE not in part[key]:
        return None
    part[key] = batch = dict(part[key])
    return batch.pop(KEY_SAMPLER_STATE)


def _put_sampler(part: dict[str, Any], sampler: Any) -> None:
    """Put a batch sampler's state where the installed torchdata reads it, with ``sampler`` in it."""
    key = batch_sampler_key(part)
    installed = installed_batch_sampler_key()
    if key is not None and key != installed and part.get(installed) is None:
        if _is_torchdata_batch_state(part[key]):  # written by a torchdata of the other layout
            logger.debug("moving the batch sampler state from %r to %r", key, installed)
            part[installed], part[key] = part[key], None
            key = installed
    if sampler is None:
        return
    if key is None:
        raise ValueError(
            f"a sampler state is stored for this loader, but its loader state has no batch sampler "
            f"state under {' or '.join(_BATCH_KEYS)} to put it in; pass the entry produced by "
            "split_state() for the same loader"
        )
    part[key][KEY_SAMPLER_STATE] = sampler


def split_state(state: dict[str, Any] | None) -> tuple[Any, Any, dict[str, Any] | None]:
    """Move the sampler and dataset parts out of a loader's own state (``state`` is not edited).

    Returns:
        ``(sampler_state, dataset_state, rest)``: the sampler's state (None when it has none), the
        dataset's (single process: its state; with workers: ``{"worker_<i>": state}`` of the
        workers that have one; None when none has) and the rest of ``state``.
    """
    if state is None:
        return None, None, None
    rest = copy.copy(state)
    if KEY_SNAPSHOT in rest:
        rest[KEY_SNAPSHOT] = snapshot = dict(rest[KEY_SNAPSHOT])
        snapshot[KEY_MAIN_SNAPSHOT] = main = dict(snapshot[KEY_MAIN_SNAPSHOT])
        sampler = _take_sampler(main)
        snapshot[KEY_WORKER_SNAPSHOTS] = workers = {
            key: dict(worker) for key, worker in snapshot[KEY_WORKER_SNAPSHOTS].items()
        }
        datasets = {
            key: worker.pop(KEY_DATASET_STATE)
            for key, worker in workers.items()
            if worker.get(KEY_DATASET_STATE) is not None
        }
        return sampler, datasets or None, rest
    sampler = _take_sampler(rest)
    dataset = rest.pop(KEY_DATASET_STATE) if rest.get(KEY_DATASET_STATE) is not None else None
    return sampler, dataset, rest


def join_state(sampler: Any, dataset: Any, rest: dict[str, Any] | None) -> Any:
    """Inverse of :func:`split_state`: the loader's own state, ready for load_state_dict."""
    if rest is None:
        return None
    state = copy.deepcopy(rest)
    if KEY_SNAPSHOT in state:
        _put_sampler(state[KEY_SNAPSHOT][KEY_MAIN_SNAPSHOT], sampler)
        for key, worker in state[KEY_SNAPSHOT][KEY_WORKER_SNAPSHOTS].items():
            worker.setdefault(KEY_DATASET_STATE, None)
            if dataset is not None and key in dataset:
                worker[KEY_DATASET_STATE] = dataset[key]
    else:
        _put_sampler(state, sampler)
        if KEY_FETCHER_STATE in state or KEY_NUM_YIELDED in state:
            state[KEY_DATASET_STATE] = dataset
    return state


def snapshot_now(
    state: dict[str, Any],
    advance_sampler: Callable[[Any, int | None], tuple[Any, int] | None],
    batch_size: int,
) -> dict[str, Any]:
    """``state`` with its worker snapshot moved up to the step it was taken at, when that is free.

    A multi-process state is torchdata's last worker snapshot plus the number of batches yielded
    since (``snapshot_every_n_steps`` apart); a restore loads those batches again and drops them.
    When no worker holds state (a map-style dataset without ``state_dict``: workers only fetch the
    indices they are sent), the snapshot is moved forward on the sampler side instead, without
    loading anything: ``advance_sampler(sampler_state, samples)`` returns the sampler's state
    ``samples`` indices later and the indices moved (``samples=None``: to the end of the pass, for a
    pass that ended), or None when it cannot (e.g. past the end of the pass). Returns ``state``
    itself (not edited) whenever a condition does not hold.
    """
    steps = state.get(KEY_STEPS_SINCE_SNAPSHOT)
    snapshot = state.get(KEY_SNAPSHOT)
    if not steps or not isinstance(snapshot, dict):
        return state
    workers = snapshot.get(KEY_WORKER_SNAPSHOTS) or {}
    if any(
        worker.get(KEY_DATASET_STATE) is not None or worker.get(KEY_FETCHER_STATE) is not None
        for worker in workers.values()
    ):
        return state
    main = snapshot.get(KEY_MAIN_SNAPSHOT)
    key = batch_sampler_key(main) if isinstance(main, dict) else None
    if key is None or main is None:
        return state
    batch = main[key]
    if not _is_torchdata_batch_state(batch) or batch.get("sampler_iter_state") is not None:
        return state
    # a pass that ended has handed out every index of its sampler (its last partial batch too)
    finished = bool(state.get(KEY_ITERATOR_FINISHED))
    moved_sampler = advance_sampler(
        batch.get(KEY_SAMPLER_STATE), None if finished else int(steps) * batch_size
    )
    if moved_sampler is None:
        return state
    sampler, samples = moved_sampler
    moved_main = {
        **main,
        key: {
            **batch,
            KEY_SAMPLES_YIELDED: batch[KEY_SAMPLES_YIELDED] + samples,
            KEY_SAMPLER_STATE: sampler,
        },
    }
    if isinstance(main.get(KEY_SAMPLER_ITER_YIELDED), int):
        moved_main[KEY_SAMPLER_ITER_YIELDED] = main[KEY_SAMPLER_ITER_YIELDED] + steps
    moved = {
        **snapshot,
        KEY_MAIN_SNAPSHOT: moved_main,
        KEY_SNAPSHOT_STEP: snapshot[KEY_SNAPSHOT_STEP] + steps,
    }
    last = snapshot.get(KEY_LAST_YIELDED_WORKER)
    if isinstance(last, int) and workers:  # workers hand out batches in turn
        moved[KEY_LAST_YIELDED_WORKER] = (last + steps) % len(workers)
    return {**state, KEY_SNAPSHOT: moved, KEY_STEPS_SINCE_SNAPSHOT: 0}


class _PassAtIterBatchSampler(BatchSampler):
    """torchdata < 0.11's ``BatchSampler``, starting each pass when ``iter()`` is called.

    Its own ``__iter__`` is a generator: a loaded position, or the fresh sampler iterator of a new
    pass, is taken up only at the first batch, and until then its state is the previous pass's.
    A snapshot taken at a pass start (torchdata's multi-process step-0 snapshot) or right after a
    restore then resumes the wrong pass, and a fresh pass after a restored one that had ended
    yields nothing. Here ``iter()`` does that work at once, as torchdata 0.11's batch sampler
    iterator does; batches and state are otherwise the same.
    """

    # Set by torchdata < 0.11's BatchSampler.__init__ (declared for type checkers).
    next_yielded: int | None
    samples_yielded: int
    sampler_iter: Iterator[int]

    def __iter__(self) -> Iterator[list[int]]:
        if self.next_yielded is not None:  # a loaded position: this pass resumes it
            self.samples_yielded, self.next_yielded = self.next_yielded, None
            replays = not isinstance(self.sampler, (Stateful, _InfiniteConstantSampler))
            if replays and not isinstance(self.sampler_iter, Stateful):
                for _ in range(self.samples_yielded):
                    next(self.sampler_iter)
        elif self.samples_yielded > 0:  # a new pass
            self.sampler_iter, self.samples_yielded = iter(self.sampler), 0
        return self._batches()

    def _batches(self) -> Iterator[list[int]]:
        while True:
            batch = list(itertools.islice(self.sampler_iter, self.batch_size))
            self.samples_yielded += len(batch)
            if not batch or (self.drop_last and len(batch) < self.batch_size):
                return
            yield batch


def start_passes_at_iter(loader: Any) -> None:
    """Give ``loader`` torchdata 0.11's pass start under torchdata < 0.11 (see above).

    Applies to torchdata's own ``BatchSampler`` of those versions (the one ``batch_size=`` makes),
    in place; a no-op from torchdata 0.11 on and for any other batch sampler.
    """
    batch_sampler = getattr(loader, "batch_sampler", None)
    if type(batch_sampler) is BatchSampler and hasattr(batch_sampler, "next_yielded"):
        batch_sampler.__class__ = _PassAtIterBatchSampler


if _BatchSamplerIterator is not None:

    class _IsliceBatchSamplerIterator(_BatchSamplerIterator):
        """torchdata 0.11's batch sampler iterator, drawing each batch with one ``islice``.

        Its own ``__next__`` draws index by index in Python (an append and a counter update per
        sample); the batches, ``samples_yielded`` and the state are the same.
        """

        def __next__(self) -> list[int]:
            batch = list(itertools.islice(self.sampler_iter, self.batch_size))
            self.samples_yielded += len(batch)
            if not batch or (self.drop_last and len(batch) < self.batch_size):
                raise StopIteration
            return batch

    class _IsliceBatchSampler(BatchSampler):
        def __iter__(self) -> Iterator[list[int]]:
            return _IsliceBatchSamplerIterator(self.sampler, self.batch_size, self.drop_last)


def batch_with_islice(loader: Any) -> None:
    """Give ``loader``'s torchdata 0.11 ``BatchSampler`` (the one ``batch_size=`` makes) an
    iterator that takes each batch in one ``islice``, in place; a no-op for any other."""
    batch_sampler = getattr(loader, "batch_sampler", None)
    if (
        _BatchSamplerIterator is not None
        and type(batch_sampler) is BatchSampler
        and not hasattr(batch_sampler, "next_yielded")
    ):
        batch_sampler.__class__ = _IsliceBatchSampler
