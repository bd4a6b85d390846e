"""``make_loader``: a torchdata ``StatefulDataLoader`` wired for exact, O(1) resumes."""

from __future__ import annotations

import contextlib
import gc
import logging
import signal
import threading
import warnings
from collections.abc import Callable, Iterator
from multiprocessing import forkserver, resource_tracker
from typing import Any

import attrs
import torch
from torch.utils.data import get_worker_info
from torchdata.stateful_dataloader import StatefulDataLoader

from statefuldata.epochs import report_epoch
from statefuldata.persample import PER_SAMPLE_SEED_DEFAULT, per_sample_seeded
from statefuldata.protocols import StatefulSampler
from statefuldata.samplers import PositionSampler, SequentialSampler, ShuffledSampler
from statefuldata.seeding import derive_seed, seed_worker
from statefuldata.shuffle import ShuffleBuffer, check_shuffle_request
from statefuldata.torchdata_state import start_passes_at_iter
from statefuldata.views import EpochView, epoch_aware
from statefuldata.wrapping import checkpointable, is_map_style

__all__ = ["SeededStatefulDataLoader", "close_loader", "make_loader"]

logger = logging.getLogger(__name__)


def quiet_stateful_dataloader(*args: Any, cls: type = StatefulDataLoader, **kwargs: Any) -> Any:
    """Build a StatefulDataLoader without torchdata 0.11's ``set_vital`` deprecation warning."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="'set_vital' is deprecated", category=UserWarning)
        return cls(*args, **kwargs)


#: Signals a worker of our loaders ignores: they are meant for the main process (Ctrl-C, and the
#: preemption signals that Slurm, Kubernetes and torchrun send to the whole process group). A worker
#: still exits when the main process goes (torch's workers watch their parent).
WORKER_IGNORED_SIGNALS = ("SIGINT", "SIGTERM", "SIGUSR1")


def _ignore_signals(names: tuple[str, ...]) -> None:
    for name in names:
        number = getattr(signal, name, None)
        if number is not None:
            signal.signal(number, signal.SIG_IGN)


@attrs.define(eq=False)
class _WorkerSeeder:
    """Picklable ``worker_init_fn``: seeds a worker from ``(seed, epoch, rank, worker_id)``.

    The epoch is the one the main process published for this pass (see :mod:`statefuldata.epochs`);
    ``epoch`` is the fallback for datasets that are not wrapped in an epoch view.
    """

    seed: int
    rank: int
    epoch: int = 0
    user_fn: Callable[[int], None] | None = None
    ignored_signals: tuple[str, ...] = WORKER_IGNORED_SIGNALS

    def __call__(self, worker_id: int) -> None:
        _ignore_signals(self.ignored_signals)
        info = get_worker_info()
        view = getattr(info, "dataset", None)
        view = view if isinstance(view, EpochView) else None
        epoch = self.epoch if view is None else view.channel.read()[1]
        seed_worker(worker_id, seed=self.seed, epoch=epoch, rank=self.rank)
        if view is not None:
            view.worker_started()
        else:
            report_epoch(epoch)
        if self.user_fn is not None:
            self.user_fn(worker_id)


@attrs.define(eq=False)
class _SignalShield:
    """Picklable ``worker_init_fn`` wrapper for loaders not built by :func:`make_loader`."""

    ignored_signals: tuple[str, ...]
    user_fn: Callable[[int], None] | None = None

    def __call__(self, worker_id: int) -> None:
        _ignore_signals(self.ignored_signals)
        if self.user_fn is not None:
            self.user_fn(worker_id)


def _start_helpers_shielded(context: Any, names: tuple[str, ...]) -> None:
    """Start multiprocessing's helper processes with ``names`` blocked, if they are not running.

    With the ``spawn`` and ``forkserver`` start methods, workers come with a resource tracker (and a
    fork server): processes of the main process's group that a group-wide SIGUSR1 would kill
    (Python blocks only SIGINT and SIGTERM in them). Blocked signals stay blocked across their exec.
    """
    method = context if isinstance(context, str) else getattr(context, "_name", None)
    if method not in ("spawn", "forkserver") or not hasattr(signal, "pthread_sigmask"):
        return
    if threading.current_thread() is not threading.main_thread():
        return
    numbers = {getattr(signal, n) for n in names if hasattr(signal, n)}
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, numbers)
    try:
        resource_tracker.ensure_running()
        if method == "forkserver":
            forkserver.ensure_running()
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def ignore_signals_in_workers(loader: Any, names: tuple[str, ...]) -> None:
    """Make the worker processes ``loader`` starts from now on ignore the signals ``names``.

    Our loaders' workers ignore :data:`WORKER_IGNORED_SIGNALS` already; this adds ``names`` to them,
    and wraps the ``worker_init_fn`` of any other DataLoader-like object (workers already running
    keep their handlers). Used by the trainer for its configured preemption signals.
    """
    names = tuple(dict.fromkeys((*WORKER_IGNORED_SIGNALS, *names)))
    inner = getattr(loader, "loader", None)  # an adapter around a plain DataLoader
    target = loader if hasattr(loader, "worker_init_fn") else inner
    if target is None or not hasattr(target, "worker_init_fn"):
        return
    if getattr(target, "num_workers", 0) > 0:
        _start_helpers_shielded(getattr(target, "multiprocessing_context", None), names)
    init = target.worker_init_fn
    if isinstance(init, (_WorkerSeeder, _SignalShield)):
        init.ignored_signals = names
    else:
        target.worker_init_fn = _SignalShield(names, init)


class _RetiredIterator:
    def __next__(self) -> Any:
        raise RuntimeError(
            "this DataLoader iterator was superseded by load_state_dict() or a newer iter(); "
            "call iter(loader) again to continue from the loader's current state"
        )


_RETIRED_CLASSES: dict[type, type] = {}


class SeededStatefulDataLoader(StatefulDataLoader):
    """A ``StatefulDataLoader`` that knows the epoch of each pass and tells its workers.

    The epoch of a new pass is, in this order: the one recorded in a loaded state (a resumed pass
    keeps its epoch); else the epoch its sampler resolves for the pass (for the samplers of this
    package, which follow ``sampler.set_epoch``); else the one given to :meth:`set_epoch`; else the
    previous pass's plus one. Before the pass starts it is published to the workers (fresh or
    persistent), which seed their RNGs from it, report it from :func:`statefuldata.current_epoch`
    and forward it to ``dataset.set_epoch``. It travels in the state under ``KEY_EPOCH``.

    With ``persistent_workers=True`` a pass that ran to its end is followed by the next one on the
    same workers; a pass abandoned midway is followed by fresh workers (its prefetched work must not
    leak into the next pass).
    """

    KEY_EPOCH = "statefuldata_epoch"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        start_passes_at_iter(self)  # torchdata < 0.11: a pass starts at iter(), as from 0.11 on
        self._epoch = -1
        self._restored_epoch: int | None = None
        self._requested: int | None = None

    @property
    def epoch(self) -> int:
        """Pass index of the current (or last) iterator; -1 before the first."""
        return self._epoch

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch of the next pass (torch's convention); a pass in flight is not touched.

        Forwarded to the sampler when it has ``set_epoch``. A loaded state still resumes its own
        epoch (see :meth:`ShuffledSampler.set_epoch <statefuldata.ShuffledSampler.set_epoch>`).
        """
        if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
            raise ValueError(f"'epoch' must be an int >= 0 (got {epoch!r})")
        set_sampler_epoch = getattr(self.sampler, "set_epoch", None)
        if callable(set_sampler_epoch):
            set_sampler_epoch(epoch)
        self._requested = epoch

    def _next_epoch(self) -> int:
        requested, self._requested = self._requested, None
        if self.next_iter_state is not None and self._restored_epoch is not None:
            epoch, self._restored_epoch = self._restored_epoch, None
            return epoch
        if isinstance(self.sampler, PositionSampler):
            return self.sampler.next_epoch
        return requested if requested is not None else self._epoch + 1

    def _start_pass(self, epoch: int) -> None:
        self._epoch = epoch
        if isinstance(self.worker_init_fn, _WorkerSeeder):
            self.worker_init_fn.epoch = epoch
        if isinstance(self.dataset, EpochView):
            self.dataset.begin_pass(epoch)

    def _shutdown_current(self) -> None:
        """Retire the current iterator: stop its workers and make it raise if used again.

        torchdata drops replaced iterators without stopping their workers (they would linger until
        collected), and an iterator kept by the caller would go on from its old position after
        ``load_state_dict``; a retired one raises instead.
        """
        iterator = self._iterator
        if iterator is None:
            return
        shutdown = getattr(iterator, "_shutdown_workers", None)
        if callable(shutdown):
            shutdown()
        cls = type(iterator)
        if not issubclass(cls, _RetiredIterator):
            if cls not in _RETIRED_CLASSES:
                _RETIRED_CLASSES[cls] = type(f"Retired{cls.__name__}", (_RetiredIterator, cls), {})
            iterator.__class__ = _RETIRED_CLASSES[cls]

    def _reusable(self) -> bool:
        """Persistent workers whose last pass ran to its end can start the next pass.

        A pass has ended when it raised StopIteration, or when it yielded all ``len(self)`` batches
        (a scheduler that draws exactly a loader's length never asks for one more).
        """
        iterator = self._iterator
        if not (
            self.persistent_workers
            and self.num_workers > 0
            and iterator is not None
            and not isinstance(iterator, _RetiredIterator)
        ):
            return False
        if iterator._finished:
            return True
        try:
            return int(iterator._num_yielded) >= len(self)
        except TypeError:  # an iterable without a length
            return False

    def _next_pass(self) -> Any:
        if self._reusable():
            self._start_pass(self._next_epoch())
            iterator: Any = self._iterator  # type: ignore[has-type]
            iterator._reset(self)
        else:
            self._iterator = self._get_iterator()
        return self._iterator

    def __iter__(self) -> Any:
        # torchdata's own __iter__ resets persistent iterators without passing through
        # _get_iterator, so the epoch would never move; every pass start goes through _next_pass.
        state_dict_iterator: bool = self._initial_iter_for_state_dict  # type: ignore[has-type]
        if state_dict_iterator:  # made by state_dict() before the first iter(): it is this pass
            self._initial_iter_for_state_dict = False
        else:
            self._next_pass()
        iterator: Any = self._iterator
        if iterator._finished:  # restored from a state taken after its pass ended
            iterator = self._next_pass()
        return iterator

    def _get_iterator(self) -> Any:
        self._shutdown_current()
        self._start_pass(self._next_epoch())
        if self.num_workers == 0:
            return super()._get_iterator()
        with frozen_heap_for_fork():
            return super()._get_iterator()

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        return {**state, self.KEY_EPOCH: self._epoch}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state = dict(state_dict)
        epoch = state.pop(self.KEY_EPOCH, None)
        self._shutdown_current()
        super().load_state_dict(state)
        self._restored_epoch = None if epoch is None or not state else int(epoch)


@contextlib.contextmanager
def frozen_heap_for_fork() -> Iterator[None]:
    """Keep the garbage collector of forked workers off the objects they inherit.

    DataLoader iterators live in reference cycles. A worker forked while an abandoned iterator is
    still uncollected inherits it and may collect it: its ``__del__`` then shuts down workers that
    are not the child's own (signalling their queues), and pass starts stall for seconds. Freezing
    the heap across the fork (``gc.freeze``, undone in the parent right after, unless the caller had
    frozen it already) leaves children nothing inherited to collect. Our loaders also retire the
    iterators they replace, so nothing of theirs lingers to be collected in the first place.
    """
    already_frozen = gc.get_freeze_count() > 0
    gc.freeze()
    try:
        yield
    finally:
        if not already_frozen:
            gc.unfreeze()


def close_loader(loader: Any) -> None:
    """Stop a loader's worker processes now instead of whenever garbage collection runs.

    Abandoning a multi-process iterator mid-pass leaves its workers alive until the iterator is
    collected; collection can then happen at an awkward moment (while new workers are being forked)
    and hang. Call this when a loader will not be iterated again, or before replacing its iterator.
    """
    close = getattr(loader, "close", None)
    if callable(close):
        close()
        return
    iterator = getattr(loader, "_iterator", None)
    shutdown = getattr(iterator, "_shutdown_workers", None)
    if callable(shutdown):
        shutdown()
    if iterator is not None and getattr(loader, "persistent_workers", False):
        loader._iterator = None  # a persistent loader would reuse its dead workers otherwise


def _check(name: str, value: Any, *, minimum: int, hint: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"'{name}' must be an int (got {value!r})")
    if value < minimum:
        raise ValueError(f"'{name}' must be >= {minimum} (got {value}); {hint}")


def make_loader(
    dataset: Any,
    *,
    batch_size: int = 1,
    shuffle: bool = False,
    seed: int = 0,
    num_workers: int = 0,
    drop_last: bool = False,
    rank: int = 0,
    world_size: int = 1,
    per_sample_seed: bool = PER_SAMPLE_SEED_DEFAULT,
    shuffle_buffer_size: int | None = None,
    **dataloader_kwargs: Any,
) -> StatefulDataLoader:
    """Build a ``StatefulDataLoader`` whose state is exact at every batch and O(1) to restore.

    Map-style datasets get a :class:`ShuffledSampler` (``shuffle=True``) or :class:`SequentialSampler`,
    strided over ``rank``/``world_size``; iterables go through :func:`checkpointable` (their own state,
    or the skip fallback). Workers are seeded from ``(seed, epoch, rank, worker_id)`` and the loader's
    generator from ``(seed, rank)``. A ``sampler=`` you pass is used as is (``shuffle`` must stay False).

    An iterable is shuffled with ``shuffle=True, shuffle_buffer_size=N``: a :class:`ShuffleBuffer`
    of N items, exactly resumable. ``per_sample_seed=True`` seeds the Python, numpy and torch global
    RNGs from the sample around each read (``derive_seed(seed, epoch, index)`` for map-style data),
    so augmentations drawn from them survive resumes and worker counts (see
    :mod:`statefuldata.persample`; off by default for its cost). Inside a worker,
    :func:`statefuldata.current_epoch` gives the epoch, e.g. for ``sample_rng(seed, epoch, index)``.

    Example:
        >>> loader = make_loader(list(range(10)), batch_size=4, shuffle=True, seed=1)
        >>> state = loader.state_dict()  # works before the first batch
    """
    _check("batch_size", batch_size, minimum=1, hint="use batch_size=1 or more")
    _check("seed", seed, minimum=0, hint="seeds are non-negative, e.g. seed=0")
    _check("num_workers", num_workers, minimum=0, hint="use 0 for no worker processes")
    _check("world_size", world_size, minimum=1, hint="use 1 without distributed training")
    _check("rank", rank, minimum=0, hint="ranks are numbered 0..world_size-1")
    if rank >= world_size:
        raise ValueError(
            f"'rank' must be < world_size (got rank={rank}, world_size={world_size}); "
            "ranks are numbered 0..world_size-1"
        )
    if "batch_sampler" in dataloader_kwargs:
        raise ValueError(
            "make_loader builds its own batching; got batch_sampler=... "
            "Pass sampler=... with batch_size instead, or build a StatefulDataLoader yourself"
        )
    sampler = dataloader_kwargs.pop("sampler", None)
    if sampler is not None and shuffle:
        raise ValueError(
            f"pass either shuffle=True or sampler=..., not both (got shuffle=True and sampler="
            f"{type(sampler).__name__}); make_loader shuffles with ShuffledSampler, so drop shuffle "
            "to use your own sampler"
        )
    data = checkpointable(dataset)
    map_style = is_map_style(data)
    check_shuffle_request(
        dataset, map_style=map_style, shuffle=shuffle, shuffle_buffer_size=shuffle_buffer_size
    )
    if not isinstance(per_sample_seed, bool):
        raise TypeError(f"'per_sample_seed' must be True or False (got {per_sample_seed!r})")
    if map_style:
        if sampler is None:
            if shuffle:
                sampler = ShuffledSampler(
                    len(data), seed=seed, rank=rank, world_size=world_size, drop_last=drop_last
                )
            else:
                sampler = SequentialSampler(
                    len(data), rank=rank, world_size=world_size, drop_last=drop_last
                )
        elif not isinstance(sampler, StatefulSampler):
            logger.warning(
                "sampler %s has no state_dict/load_state_dict: restores will replay it from the "
                "start of the epoch (cost grows with the position). Use ShuffledSampler or "
                "SequentialSampler, or implement the two methods.",
                type(sampler).__name__,
            )
    elif sampler is not None:
        raise ValueError(
            f"sampler applies to map-style datasets; {type(dataset).__name__} is iterable "
            "and orders its own items. Shuffle it with shuffle=True, shuffle_buffer_size=N instead"
        )
    if per_sample_seed:
        data = per_sample_seeded(data, seed=seed, rank=rank, map_style=map_style)
    if shuffle_buffer_size is not None:
        data = ShuffleBuffer(data, shuffle_buffer_size, seed=seed, rank=rank)
    seeder = _WorkerSeeder(
        seed=seed, rank=rank, user_fn=dataloader_kwargs.pop("worker_init_fn", None)
    )
    generator = dataloader_kwargs.pop("generator", None)
    if generator is None:
        generator = torch.Generator().manual_seed(derive_seed(seed, rank))
    return quiet_stateful_dataloader(
        epoch_aware(data, seed=seed, rank=rank, map_style=map_style),
        cls=SeededStatefulDataLoader,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        drop_last=drop_last,
        worker_init_fn=seeder,
        generator=generator,
        **dataloader_kwargs,
    )
