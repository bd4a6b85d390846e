"""One piece of checkpoint work in flight at a time, in the background; its error is raised later.

A :class:`BackgroundJob` hands at most one function at a time to the process's checkpoint worker
thread (started once and kept: starting a thread per save costs milliseconds on a busy machine,
which is what an asynchronous save must not cost). Whoever comes next calls
:meth:`BackgroundJob.wait` first: it waits for the function and raises what it raised, once. A
KeyboardInterrupt that arrives while waiting is held back until the work is done, so the folder is
never given up with a write still going on; an interpreter that exits waits for queued work too.

Example:
    >>> job = BackgroundJob()
    >>> job.start(lambda: None, "a save")
    >>> job.wait()
"""

from __future__ import annotations

import atexit
import logging
import queue
import threading
from collections.abc import Callable

import attrs

__all__ = ["BackgroundJob"]

logger = logging.getLogger(__name__)


_Tasks = queue.SimpleQueue[Callable[[], None] | None]


class _Worker:
    """The one thread that runs every job of the process, in the order they were started."""

    def __init__(self) -> None:
        self._tasks: _Tasks = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._mutex = threading.Lock()
        self.pending: set[threading.Event] = set()

    def submit(self, task: Callable[[], None], done: threading.Event) -> None:
        with self._mutex:
            self.pending.add(done)
            if self._thread is None or not self._thread.is_alive():
                self._tasks = queue.SimpleQueue()  # its own: a thread that ends drops its queue
                self._thread = threading.Thread(
                    target=self._loop, args=(self._tasks,), name="checkpoint-writer", daemon=True
                )
                self._thread.start()
            self._tasks.put(task)

    @staticmethod
    def _loop(tasks: _Tasks) -> None:
        while (task := tasks.get()) is not None:
            task()
            del task  # what the job held goes now, not at the next one

    @property
    def current(self) -> threading.Thread | None:
        return self._thread

    def drain(self) -> None:
        """Wait for every queued job, then end the thread (at interpreter exit: a save in flight
        is finished, and no thread is left inside torch while the interpreter shuts down, which
        aborts the process)."""
        for done in list(self.pending):
            done.wait()
        with self._mutex:
            thread, tasks, self._thread = self._thread, self._tasks, None
        if thread is not None and thread.is_alive():
            tasks.put(None)
            thread.join()


_WORKER = _Worker()
atexit.register(_WORKER.drain)


@attrs.define(eq=False)
class BackgroundJob:
    """At most one function in flight in the background (see the module docstring)."""

    _done: threading.Event | None = attrs.field(init=False, default=None)
    _error: BaseException | None = attrs.field(init=False, default=None)
    _label: str = attrs.field(init=False, default="")

    @property
    def busy(self) -> bool:
        """Whether the function started last is still running (or queued)."""
        return self._done is not None and not self._done.is_set()

    def start(self, fn: Callable[[], object], label: str) -> None:
        """Run ``fn`` in the background; ``label`` names it in logs and errors ("the save of X").

        Raises:
            RuntimeError: Called while the previous function is in flight (call :meth:`wait`).
        """
        if self._done is not None:
            raise RuntimeError(
                f"{self._label} is still in flight; call wait() before starting {label}"
            )
        done = threading.Event()
        self._label, self._done = label, done

        def task() -> None:
            try:
                fn()
            except BaseException as exc:  # raised by wait() in the thread that comes next
                self._error = exc
            finally:
                _WORKER.pending.discard(done)
                done.set()

        _WORKER.submit(task, done)

    def wait(self, *, during: BaseException | None = None) -> None:
        """Wait for the function in flight; raise its error (each error is raised once).

        Args:
            during: An exception already propagating: a failure of the background work is then
                logged (ERROR) and attached to it as a note instead of replacing it.
        """
        done = self._done
        if done is None or threading.current_thread() is _WORKER.current:
            return  # nothing in flight, or called by the work itself
        interrupted: KeyboardInterrupt | None = None
        while not done.is_set():
            try:
                done.wait()
            except KeyboardInterrupt as exc:  # finish the write first: latest stays consistent
                interrupted = exc
                logger.warning("Waiting for %s to finish before stopping", self._label)
        self._done, error, self._error = None, self._error, None
        carrier = during if during is not None else interrupted
        if error is not None:
            if hasattr(error, "add_note"):  # Python >= 3.11
                error.add_note(f"raised in the background by {self._label}")
            if carrier is None:
                raise error
            logger.error("%s failed: %s: %s", self._label, type(error).__name__, error)
            if hasattr(carrier, "add_note"):
                carrier.add_note(f"also, {self._label} failed: {type(error).__name__}: {error}")
        if interrupted is not None:
            raise interrupted
