"""One piece of checkpoint work in flight at a time, on its own thread; its error is raised later.

A :class:`BackgroundJob` runs at most one function at a time on a fresh non-daemon thread (so an
interpreter that exits waits for a save to finish rather than leaving half a temp file). Whoever
comes next calls :meth:`BackgroundJob.wait` first: it joins the thread and raises what the function
raised, once. A KeyboardInterrupt that arrives while waiting is held back until the work is done:
the folder is never given up with a write still going on.

Example:
    >>> job = BackgroundJob()
    >>> job.start(lambda: None, "a save")
    >>> job.wait()
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import attrs

__all__ = ["BackgroundJob"]

logger = logging.getLogger(__name__)


@attrs.define(eq=False)
class BackgroundJob:
    """At most one function in flight on a background thread (see the module docstring)."""

    _thread: threading.Thread | None = attrs.field(init=False, default=None)
    _error: BaseException | None = attrs.field(init=False, default=None)
    _label: str = attrs.field(init=False, default="")

    @property
    def busy(self) -> bool:
        """Whether a function is still running."""
        return self._thread is not None and self._thread.is_alive()

    def start(self, fn: Callable[[], object], label: str) -> None:
        """Run ``fn`` on a new thread; ``label`` names it in logs and errors ("the save of X").

        Raises:
            RuntimeError: Called while the previous function is in flight (call :meth:`wait`).
        """
        if self._thread is not None:
            raise RuntimeError(
                f"{self._label} is still in flight; call wait() before starting {label}"
            )
        self._label = label
        self._thread = threading.Thread(
            target=self._run, args=(fn,), name=f"checkpoint: {label}", daemon=False
        )
        self._thread.start()

    def _run(self, fn: Callable[[], object]) -> None:
        try:
            fn()
        except BaseException as exc:  # raised by wait() in the thread that comes next
            self._error = exc

    def wait(self, *, during: BaseException | None = None) -> None:
        """Wait for the function in flight; raise its error (each error is raised once).

        Args:
            during: An exception already propagating: a failure of the background work is then
                logged (ERROR) and attached to it as a note instead of replacing it.
        """
        thread = self._thread
        if thread is None or thread is threading.current_thread():
            return
        interrupted: KeyboardInterrupt | None = None
        while thread.is_alive():
            try:
                thread.join()
            except KeyboardInterrupt as exc:  # finish the write first: latest stays consistent
                interrupted = exc
                logger.warning("Waiting for %s to finish before stopping", self._label)
        self._thread, error, self._error = None, self._error, None
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
