"""``GenericTrainer``: a thin loop that resumes mid-epoch bit-exactly from one checkpoint file.

Per batch: fetch, forward under the precision context, backward (scaled when AMP); at the
accumulation boundary: unscale, clip, step, zero, scheduler step; then maybe validate, maybe
checkpoint, maybe stop for preemption. Checkpoints are taken only at optimizer-step boundaries.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import attrs
import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from statefuldata import DataLoaderManager, seed_everything
from trainer.callbacks import Callback
from trainer.config import GenericTrainerConfig, SchedulerInterval, ValidationFrequency
from trainer.manager import CheckpointManager
from trainer.persistence import Persistence
from trainer.precision import make_precision
from trainer.preemption import PreemptionFlag
from trainer.resume import ResumeState
from trainer.rng import restore_rng_states
from trainer.validation import run_validation

__all__ = ["FitResult", "GenericTrainer"]

logger = logging.getLogger(__name__)

StepFn = Callable[..., dict[str, Any]]
SNAPSHOT_CAP = 100  # batches between worker snapshots when no step checkpoints are configured


@attrs.frozen
class FitResult:
    """How ``fit()`` ended: ``status`` is "completed", "preempted" or "already_complete"."""

    status: str
    epoch: int
    global_step: int
    checkpoint_path: Path | None = None
    metrics: dict[str, float] = attrs.field(factory=dict)


class _Preempted(Exception):
    """Unwinds the loop after the preemption checkpoint is written."""


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _distributed() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class GenericTrainer(Persistence):
    """Train ``model`` with ``optimizers`` over a mix of loaders; save and resume exactly.

    Example:
        >>> trainer = GenericTrainer(GenericTrainerConfig(), model, torch.optim.SGD(model.parameters(), 0.1))
        >>> trainer.set_training_step(lambda t, batch, i, di, name: {"loss": model(batch).mean()})
        >>> trainer.fit([make_loader(dataset, batch_size=32, shuffle=True)], max_epochs=3)  # doctest: +SKIP

    Resume guarantee: a run interrupted at any optimizer step (preemption, crash after a checkpoint,
    KeyboardInterrupt in memory) and resumed ends with parameters, optimizer and scheduler states
    equal to the uninterrupted run's, having seen the same batches in the same order.
    """

    def __init__(
        self,
        config: GenericTrainerConfig,
        model: torch.nn.Module,
        optimizers: torch.optim.Optimizer | Sequence[torch.optim.Optimizer],
        schedulers: Any = None,
        *,
        callbacks: Sequence[Callback] = (),
    ) -> None:
        if not isinstance(config, GenericTrainerConfig):
            raise TypeError(
                f"'config' must be a GenericTrainerConfig (got {type(config).__name__})"
            )
        self.config = config
        self.optimizers = _as_list(optimizers)
        self.schedulers = _as_list(schedulers)
        if not self.optimizers:
            raise ValueError("GenericTrainer needs at least one optimizer (got none)")
        if len(self.schedulers) > len(self.optimizers):
            raise ValueError(
                f"scheduler i belongs to optimizer i: got {len(self.schedulers)} schedulers for "
                f"{len(self.optimizers)} optimizers; pass at most one scheduler per optimizer"
            )
        device = config.device
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        self.model = model.to(self.device)
        in_optimizers = {
            id(p) for o in self.optimizers for g in o.param_groups for p in g["params"]
        }
        self._params_outside_optimizers = [
            p for p in self.model.parameters() if id(p) not in in_optimizers
        ]
        self.precision = make_precision(config.performance, self.device)
        self.checkpoints = CheckpointManager(config.checkpoint)
        self.callbacks = list(callbacks)
        self.rank, self.world_size = _distributed()
        self.state = ResumeState()
        self.metrics_history: dict[str, list[list[float]]] = {}
        self.last_checkpoint: Path | None = None
        self._training_step: StepFn | None = None
        self._validation_step: StepFn | None = None
        self._manager: DataLoaderManager | None = None
        self._sources: tuple[Any, Any] | None = None
        self._snapshot: dict[str, Any] | None = None
        self._epoch_iter: Any = None
        self._inflight: tuple[int, str, Any] | None = None
        self._window: set[int] = set()
        self._window_losses: list[torch.Tensor] = []
        self._pending_data: dict[str, Any] | None = None
        self._pending_rng: dict[str, Any] | None = None
        self._has_state = False
        self._saved_at: int | None = None

    # ------------------------------------------------------------------ setup
    def set_training_step(self, fn: StepFn) -> None:
        """``fn(trainer, batch, batch_idx, dataloader_idx, dataloader_name) -> {"loss": tensor, ...}``."""
        self._training_step = fn

    def set_validation_step(self, fn: StepFn) -> None:
        """Same signature; every value returned is averaged into validation metrics."""
        self._validation_step = fn

    @property
    def dataloader_manager(self) -> DataLoaderManager | None:
        return self._manager

    # ------------------------------------------------------------------ fit
    def fit(
        self,
        train_loaders: Any,
        val_loaders: Any = None,
        max_epochs: int = 1,
        resume_from_checkpoint: str | Path | None = None,
    ) -> FitResult:
        """Train until ``max_epochs`` epochs are done, resuming from where training stands.

        Where training stands: the state in memory (a second ``fit()`` after a KeyboardInterrupt,
        or a :func:`~trainer.checkpoints.load_checkpoint` before ``fit()``), else an explicit
        ``resume_from_checkpoint`` path, else the newest valid checkpoint in ``root_dir`` (auto-resume;
        ``"latest"`` asks for it explicitly and starts fresh when there is none).
        """
        if self._training_step is None:
            raise RuntimeError("no training step: call trainer.set_training_step(fn) before fit()")
        if isinstance(max_epochs, bool) or not isinstance(max_epochs, int) or max_epochs < 1:
            raise ValueError(f"'max_epochs' must be an int >= 1 (got {max_epochs!r})")
        manager = self._adopt_data(train_loaders, val_loaders)
        self._resume(resume_from_checkpoint)
        if self.state.epoch >= max_epochs:
            logger.info(
                "Training is already complete: %d of %d epochs done (step %d); nothing to train. "
                "Raise max_epochs to continue.",
                self.state.epoch,
                max_epochs,
                self.state.global_step,
            )
            return FitResult(
                "already_complete", self.state.epoch, self.state.global_step, self.last_checkpoint
            )
        self._set_snapshot_cadence(manager)
        if self._pending_rng is not None:
            restore_rng_states(self._pending_rng)
            self._pending_rng = None
        elif not self._has_state:
            seed_everything(self.config.seed)
        self._has_state = True
        self.model.train()
        for callback in self.callbacks:
            callback.on_fit_start(self)
        try:
            with PreemptionFlag(self.config.preemption.signals) as preemption:
                while self.state.epoch < max_epochs:
                    self._run_epoch(manager, preemption, max_epochs)
        except _Preempted:
            result = FitResult(
                "preempted", self.state.epoch, self.state.global_step, self.last_checkpoint
            )
        except KeyboardInterrupt:
            logger.warning(
                "Interrupted at epoch %d, batch %d (step %d). The trainer keeps its place: call "
                "fit() again to continue from the next batch.",
                self.state.epoch,
                self.state.batch_in_epoch,
                self.state.global_step,
            )
            raise
        else:
            result = FitResult(
                "completed",
                self.state.epoch,
                self.state.global_step,
                self.last_checkpoint,
                self.latest_metrics(),
            )
        for callback in self.callbacks:
            callback.on_fit_end(self, result)
        return result

    def _set_snapshot_cadence(self, manager: DataLoaderManager) -> None:
        """Worker snapshots at the checkpoint cadence instead of every batch.

        State stays exact at any step either way: torchdata replays the batches since the last
        snapshot on restore. Without step checkpoints a preemption can still save at any step, so the
        interval is capped to keep that replay short.
        """
        every = self.config.checkpoint.save_every_n_steps
        accumulate = self.config.performance.gradient_accumulation_steps
        interval = every * accumulate if every else min(manager.epoch_length(), SNAPSHOT_CAP)
        for loader in manager.loaders("train"):
            if hasattr(loader, "snapshot_every_n_steps"):
                loader.snapshot_every_n_steps = max(1, interval)

    def _run_epoch(
        self, manager: DataLoaderManager, preemption: PreemptionFlag, max_epochs: int
    ) -> None:
        epoch = self.state.epoch
        iterator = self._epoch_iter
        if iterator is None or iterator.epoch != epoch:
            iterator = self._epoch_iter = manager.create_epoch_iterator("train", epoch)
        show = self.config.progress_bar and self.rank == 0
        with tqdm(
            total=len(iterator),
            initial=iterator.position,
            desc=f"epoch {epoch}",
            disable=not show,
            leave=False,
        ) as bar:
            if self.state.micro_step >= self.config.performance.gradient_accumulation_steps:
                # interrupted between the window's last backward and its optimizer step
                self._optimizer_step(preemption)
            if self._inflight is not None:
                self._train_batch(*self._inflight, preemption)
                bar.update(1)
            for loader_idx, name, batch in iterator:
                self._inflight = (loader_idx, name, batch)
                self._train_batch(loader_idx, name, batch, preemption)
                bar.update(1)
        if self.state.micro_step > 0:
            self._optimizer_step(preemption)  # a partial window closes with the epoch
        if (
            self.config.scheduler_interval is SchedulerInterval.EPOCH
            and self.state.optimizer_steps_in_epoch
        ):
            for scheduler in self.schedulers:
                scheduler.step()
        if self.config.validation.frequency is ValidationFrequency.PER_EPOCH:
            self.validate()
        for callback in self.callbacks:
            callback.on_epoch_end(self, epoch)
        self.state.epoch, self.state.batch_in_epoch, self.state.optimizer_steps_in_epoch = (
            epoch + 1,
            0,
            0,
        )
        self.state.completed = self.state.epoch >= max_epochs
        self.state.phase = "done" if self.state.completed else "train"
        self._epoch_iter = None
        every = self.config.checkpoint.save_every_n_epochs
        if every and (self.state.epoch % every == 0 or self.state.completed):
            self.save("epoch_end")

    def _train_batch(
        self, loader_idx: int, name: str, batch: Any, preemption: PreemptionFlag
    ) -> None:
        batch_idx = self.state.batch_in_epoch
        batch = self._to_device(batch)
        with self.precision.autocast():
            outputs = self._training_step(self, batch, batch_idx, loader_idx, name)  # type: ignore[misc]
        loss = outputs.get("loss") if isinstance(outputs, dict) else None
        if not isinstance(loss, torch.Tensor):
            raise TypeError(
                f"the training step must return a dict with a 'loss' tensor (got {type(outputs).__name__}"
                f"{' with keys ' + str(sorted(outputs)) if isinstance(outputs, dict) else ''})"
            )
        weights = self.config.loss_weights_per_loader
        weight = 1.0 if weights is None else float(weights[loader_idx])
        if weight != 0.0:
            scale = weight / self.config.performance.gradient_accumulation_steps
            self.precision.backward(loss if scale == 1.0 else loss * scale)
            ids = self.config.per_loader_optimizer_id
            self._window.update(range(len(self.optimizers)) if ids is None else (ids[loader_idx],))
        self._window_losses.append(loss.detach())
        self.state.batch_in_epoch += 1
        self.state.micro_step += 1
        self._inflight = None
        for callback in self.callbacks:
            callback.on_train_batch_end(self, outputs, batch_idx, loader_idx, name)
        if self.state.micro_step >= self.config.performance.gradient_accumulation_steps:
            self._optimizer_step(preemption)

    def _optimizer_step(self, preemption: PreemptionFlag) -> None:
        ids = sorted(self._window)
        for i in ids:
            self.precision.unscale_(self.optimizers[i])
        clip = self.config.performance.clip_grad_norm
        if clip is not None and ids:
            params = [
                p
                for i in ids
                for g in self.optimizers[i].param_groups
                for p in g["params"]
                if p.grad is not None
            ]
            torch.nn.utils.clip_grad_norm_(params, clip)
        stepped = [i for i in ids if self.precision.step(self.optimizers[i])]
        self.precision.update()
        for optimizer in self.optimizers:
            optimizer.zero_grad(set_to_none=True)
        for param in self._params_outside_optimizers:
            param.grad = None
        if self.config.scheduler_interval is SchedulerInterval.STEP:
            for i in stepped:
                if i < len(self.schedulers):
                    self.schedulers[i].step()
        self._window.clear()
        self.state.global_step += 1
        self.state.optimizer_steps_in_epoch += 1
        self.state.micro_step = 0
        step = self.state.global_step
        if step % self.config.log_every_n_steps == 0 and self._window_losses:
            value = float(torch.stack([x.float() for x in self._window_losses]).mean())
            self._record("train/loss", value)
            if self.rank == 0:
                logger.info("epoch %d step %d loss %.6f", self.state.epoch, step, value)
        self._window_losses.clear()
        validation = self.config.validation
        if (
            validation.frequency is ValidationFrequency.EVERY_N_STEPS
            and step % validation.every_n_steps == 0
        ):
            self.validate()
        every = self.config.checkpoint.save_every_n_steps
        if every and step % every == 0:
            self.save("step")
        for callback in self.callbacks:  # after this step's validation and checkpoint
            callback.on_optimizer_step(self)
        if preemption.agreed(self.device if self.device.type == "cuda" else None):
            self.state.preempted = True
            if self._saved_at != step:
                self.save("preempted")
            raise _Preempted

    # ------------------------------------------------------------------ validation and metrics
    def validate(self) -> dict[str, float]:
        """Run every validation loader once; returns per-loader and global metrics."""
        if (
            self._validation_step is None
            or self._manager is None
            or not self._manager.has_phase("val")
        ):
            return {}
        metrics = run_validation(
            self, self._manager, self._validation_step, self.config.validation.aggregation
        )
        for key, value in metrics.items():
            self._record(key, value)
        for callback in self.callbacks:
            callback.on_validation_end(self, metrics)
        return metrics

    def _record(self, key: str, value: float) -> None:
        self.metrics_history.setdefault(key, []).append([self.state.global_step, float(value)])

    def latest_metrics(self) -> dict[str, float]:
        return {key: points[-1][1] for key, points in self.metrics_history.items() if points}

    def _to_device(self, batch: Any) -> Any:
        if self.device.type == "cpu":
            return batch
        if isinstance(batch, torch.Tensor):
            return batch.to(self.device, non_blocking=True)
        if isinstance(batch, dict):
            return {k: self._to_device(v) for k, v in batch.items()}
        if isinstance(batch, (list, tuple)):
            return type(batch)(self._to_device(v) for v in batch)
        return batch
