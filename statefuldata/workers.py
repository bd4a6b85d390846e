"""Worker processes of our loaders: seeding, signal shielding, fork hygiene and shutdown."""

from __future__ import annotations

import atexit
import contextlib
import gc
import logging
import signal
import threading
import weakref
from collections.abc import Callable, Iterator
from multiprocessing import forkserver, resource_tracker
from typing import Any

import attrs
from torch.utils.data import get_worker_info

from statefuldata.epochs import report_epoch
from statefuldata.seeding import seed_worker
from statefuldata.views import EpochView

__all__ = ["close_loader"]

logger = logging.getLogger(__name__)


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


_OPEN_ITERATORS: weakref.WeakSet[Any] = weakref.WeakSet()
_OUR_WORKERS: weakref.WeakSet[Any] = weakref.WeakSet()  # processes, kept by multiprocessing


def close_at_exit(iterator: Any) -> Any:
    """Stop ``iterator``'s worker processes before the interpreter exits, if it still has any then.

    Our workers ignore SIGTERM (it is meant for the main process), and at exit ``multiprocessing``
    terminates daemonic children with SIGTERM and then waits for them: a script that ends with a
    multi-process iterator still open (held by a framework's loop, a cycle, a global) would hang
    there forever. This handler (registered after multiprocessing's and torch's, so it runs before
    them) shuts such workers down the regular way and kills any that does not stop. Returns
    ``iterator``.
    """
    _OPEN_ITERATORS.add(iterator)
    for worker in getattr(iterator, "_workers", None) or ():
        _OUR_WORKERS.add(worker)
    return iterator


@atexit.register
def _close_open_iterators() -> None:
    for iterator in list(_OPEN_ITERATORS):
        shutdown = getattr(iterator, "_shutdown_workers", None)
        try:
            if callable(shutdown):
                shutdown()
        except Exception:  # exiting anyway: never let one iterator keep the others open
            logger.debug("stopping a loader's workers at exit failed", exc_info=True)
    # Workers of iterators collected earlier: their shutdown's SIGTERM was ignored.
    for worker in list(_OUR_WORKERS):
        if worker.is_alive():
            worker.kill()
            worker.join(timeout=5)
