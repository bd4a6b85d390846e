"""Preemption and Ctrl-C: a signal sets a flag; the loop acts on it at the next step boundary.

:class:`PreemptionFlag` turns SIGTERM/SIGUSR1 (what Slurm, Kubernetes and torchrun send before they
kill a job) into "save at the next optimizer step, then return". :class:`InterruptFlag` turns the
first Ctrl-C (or a notebook's stop button) into a ``KeyboardInterrupt`` raised at the next batch
boundary, where the trainer's in-memory state is whole, so a second ``fit()`` continues exactly; a
second Ctrl-C interrupts at once.
"""

from __future__ import annotations

import logging
import signal
import threading
from types import FrameType, TracebackType
from typing import Any

import torch
import torch.distributed as dist

__all__ = ["InterruptFlag", "PreemptionFlag"]

logger = logging.getLogger(__name__)


class _SignalFlag:
    """Installs handlers for ``signals`` (names) in the main thread; restores them on exit."""

    def __init__(self, signals: tuple[str, ...]) -> None:
        self.signals = tuple(s for s in signals if hasattr(signal, s))
        self.requested = False
        self.signal_name: str | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        raise NotImplementedError

    def __enter__(self) -> Any:
        if threading.current_thread() is threading.main_thread():
            for name in self.signals:
                number = getattr(signal, name)
                self._previous[number] = signal.signal(number, self._handle)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)
        self._previous.clear()


class PreemptionFlag(_SignalFlag):
    """Context manager installing handlers for ``signals`` (names) that set :attr:`requested`.

    Handlers are installed only in the main thread and restored on exit. Under torch.distributed the
    decision is agreed by all ranks (:meth:`agreed` reduces with MAX), so every rank saves and stops
    at the same step. A local request is never cleared by the agreement: a signal that lands while
    this rank is inside the all-reduce is contributed at the next boundary, on every rank.
    """

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        self.requested = True
        self.signal_name = signal.Signals(signum).name
        logger.warning(
            "Received %s: saving at the next optimizer step, then stopping", self.signal_name
        )

    def __enter__(self) -> PreemptionFlag:
        return super().__enter__()

    def agreed(self, device: torch.device | None = None) -> bool:
        """Whether any rank was asked to stop (one small all-reduce under torch.distributed)."""
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            flag = torch.tensor([1 if self.requested else 0], device=device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            return bool(flag.item())
        return self.requested


class InterruptFlag(_SignalFlag):
    """Defers the first SIGINT to the next batch boundary (:meth:`raise_if_requested`).

    A second SIGINT before that boundary raises ``KeyboardInterrupt`` at once and sets
    :attr:`hard`: the trainer then knows its in-memory state may be mid-batch.
    """

    def __init__(self, enabled: bool = True) -> None:
        super().__init__(("SIGINT",) if enabled else ())
        self.hard = False

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        if self.requested:
            self.hard = True
            raise KeyboardInterrupt
        self.requested = True
        logger.warning(
            "Interrupted: stopping at the end of this batch so that fit() can continue exactly "
            "(interrupt again to stop at once)"
        )

    def __enter__(self) -> InterruptFlag:
        return super().__enter__()

    def raise_if_requested(self) -> None:
        """Raise the deferred ``KeyboardInterrupt`` (called where the loop's state is whole)."""
        if self.requested:
            self.requested = False
            raise KeyboardInterrupt
