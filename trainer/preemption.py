"""Preemption: a signal sets a flag; the loop saves at the next optimizer step and returns."""

from __future__ import annotations

import logging
import signal
import threading
from types import FrameType, TracebackType
from typing import Any

import torch
import torch.distributed as dist

__all__ = ["PreemptionFlag"]

logger = logging.getLogger(__name__)


class PreemptionFlag:
    """Context manager installing handlers for ``signals`` (names) that set :attr:`requested`.

    Handlers are installed only in the main thread and restored on exit. Under torch.distributed the
    decision is agreed by all ranks (:meth:`agreed` reduces with MAX), so every rank saves and stops
    at the same step.
    """

    def __init__(self, signals: tuple[str, ...]) -> None:
        self.signals = tuple(s for s in signals if hasattr(signal, s))
        self.requested = False
        self.signal_name: str | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        self.requested = True
        self.signal_name = signal.Signals(signum).name
        logger.warning(
            "Received %s: saving at the next optimizer step, then stopping", self.signal_name
        )

    def __enter__(self) -> PreemptionFlag:
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

    def agreed(self, device: torch.device | None = None) -> bool:
        """Whether any rank was asked to stop (one small all-reduce under torch.distributed)."""
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            flag = torch.tensor([1 if self.requested else 0], device=device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            self.requested = bool(flag.item())
        return self.requested
