"""What a run shows while it trains: a tqdm bar per epoch and one INFO line per epoch and validation.

The bar (tqdm.auto: a widget in notebooks) is kept after its epoch and shows the global step, the
smoothed training loss, the learning rate and samples per second; it is refreshed at most twice a
second, so it costs nothing per batch beyond tqdm's counter. ``progress_bar=False`` turns it off.
When the user has configured no logging at all, the trainer's INFO lines go to stderr through one
console handler (:func:`ensure_console_logging`); configured logging is left alone.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

import torch
from tqdm.auto import tqdm

from trainer.metrics import describe, mean_loss

__all__ = ["EpochProgress", "ensure_console_logging"]

logger = logging.getLogger("trainer.loop")

_REFRESH_S = 0.5
_SMOOTHING = 0.9


def ensure_console_logging(name: str = "trainer") -> None:
    """Send ``name``'s INFO lines to stderr unless logging is configured somewhere already."""
    package = logging.getLogger(name)
    if logging.getLogger().handlers or package.handlers:
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    package.addHandler(handler)
    if package.level == logging.NOTSET:
        package.setLevel(logging.INFO)


class EpochProgress:
    """The bar of one epoch's ``total`` batches of ``epoch_iter`` (a resumed epoch starts at its
    position); samples are read from the iterator's counts when shown, not counted per batch."""

    def __init__(self, total: int, epoch_iter: Any, epoch: int, *, enabled: bool) -> None:
        # none when off: even a disabled tqdm starts tqdm's monitor thread, which wakes every 10 s
        self.bar = (
            tqdm(total=total, initial=epoch_iter.position, desc=f"epoch {epoch}", leave=True)
            if enabled
            else None
        )
        self._epoch_iter = epoch_iter
        self.started = self._shown = time.monotonic()
        self._samples_at_start = self._samples_shown = self._samples_now()
        self.loss: float | None = None

    def _samples_now(self) -> int:
        return sum(self._epoch_iter.loader_samples)

    @property
    def samples(self) -> int:
        """Samples trained on in this epoch since the bar started."""
        return self._samples_now() - self._samples_at_start

    def batch(self) -> None:
        """One batch done."""
        if self.bar is not None:
            self.bar.update(1)

    def step(
        self, losses: list[tuple[torch.Tensor, str, int]], optimizer: Any, global_step: int
    ) -> None:
        """An optimizer step closed a window with these ``(loss, loader name, batch index)``
        losses (read at most twice a second)."""
        if self.bar is None or not losses:
            return
        now = time.monotonic()
        if now - self._shown < _REFRESH_S:
            return
        value = mean_loss(losses)
        self.loss = (
            value if self.loss is None else _SMOOTHING * self.loss + (1 - _SMOOTHING) * value
        )
        samples = self._samples_now()
        rate = (samples - self._samples_shown) / max(now - self._shown, 1e-9)
        self._shown, self._samples_shown = now, samples
        self.bar.set_postfix(
            step=global_step,
            loss=f"{self.loss:.4g}",
            lr=f"{optimizer.param_groups[0]['lr']:.3g}",
            samples_s=f"{rate:.0f}",
            refresh=False,
        )

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def summarize(self, state: Any, metrics: dict[str, float]) -> None:
        """The epoch's INFO line: step, the latest training metrics, time and samples/s."""
        elapsed = self.elapsed()
        logger.info(
            "epoch %d done: step %d%s (%.1f s, %.0f samples/s)",
            state.epoch,
            state.global_step,
            describe(metrics, "train"),
            elapsed,
            self.samples / max(elapsed, 1e-9),
        )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()

    def __enter__(self) -> EpochProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
