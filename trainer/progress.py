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

from trainer.metrics import describe

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
    """The bar of one epoch's ``total`` batches, starting at ``initial`` (a resumed epoch)."""

    def __init__(self, total: int, initial: int, epoch: int, *, enabled: bool) -> None:
        self.enabled = enabled
        self.bar = tqdm(
            total=total, initial=initial, desc=f"epoch {epoch}", disable=not enabled, leave=True
        )
        self.started = self._shown = time.monotonic()
        self.samples = self.steps = self._samples_shown = 0
        self.loss: float | None = None

    def batch(self, samples: int) -> None:
        """One batch of ``samples`` samples done."""
        self.bar.update(1)
        self.samples += samples

    def step(self, losses: list[torch.Tensor], optimizer: Any, global_step: int) -> None:
        """An optimizer step closed a window with these losses (read at most twice a second)."""
        self.steps += 1
        now = time.monotonic()
        if not self.enabled or now - self._shown < _REFRESH_S or not losses:
            return
        value = float(torch.stack([x.float() for x in losses]).mean())
        self.loss = (
            value if self.loss is None else _SMOOTHING * self.loss + (1 - _SMOOTHING) * value
        )
        rate = (self.samples - self._samples_shown) / max(now - self._shown, 1e-9)
        self._shown, self._samples_shown = now, self.samples
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
        self.bar.close()

    def __enter__(self) -> EpochProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
