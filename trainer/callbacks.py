"""A short list of callbacks: subclass :class:`Callback` and override what you need."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from trainer.result import FitResult

__all__ = ["Callback"]

GenericTrainer = Any  # the trainer calling the hook (trainer.GenericTrainer); no import cycle


class Callback:
    """No-op hooks called by :class:`~trainer.GenericTrainer` in this order of a run.

    Raising ``KeyboardInterrupt`` from a hook stops ``fit()`` like pressing stop in a notebook; the
    trainer stays resumable in memory and a second ``fit()`` continues from the next batch.
    """

    def on_fit_start(self, trainer: GenericTrainer) -> None: ...

    def on_train_batch_end(
        self,
        trainer: GenericTrainer,
        outputs: dict[str, Any],
        batch_idx: int,
        dataloader_idx: int,
        dataloader_name: str,
    ) -> None: ...

    def on_optimizer_step(self, trainer: GenericTrainer) -> None:
        """After each optimizer step and its validation, before its checkpoint: what a hook
        changes (parameters clamped, ...) is in that file, and a resume does not run it again."""

    def on_validation_end(self, trainer: GenericTrainer, metrics: dict[str, float]) -> None: ...

    def on_log(self, trainer: GenericTrainer, metrics: dict[str, float], step: int) -> None:
        """A group of metrics was recorded at optimizer step ``step`` (see trainer.loggers)."""

    def on_epoch_end(self, trainer: GenericTrainer, epoch: int) -> None: ...

    def on_checkpoint(self, trainer: GenericTrainer, path: Path | None) -> None: ...

    def on_fit_end(self, trainer: GenericTrainer, result: FitResult) -> None: ...
