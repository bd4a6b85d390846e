"""``GenericTrainer``: a thin loop that resumes mid-epoch bit-exactly from one checkpoint file.

Per batch: fetch, forward under the precision context, backward (scaled when AMP); at the
accumulation boundary: unscale, clip, step, zero, scheduler step; then the step-boundary actions:
maybe validate, maybe checkpoint, callbacks, maybe stop for preemption. Checkpoints are taken only
at optimizer-step boundaries.

The work after a step (and at an epoch's end) is a short queue of actions: an interruption in the
middle of it resumes with the actions still due, so nothing runs twice and nothing is skipped.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import attrs
import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from statefuldata import DataLoaderManager, seed_everything
from trainer.callbacks import Callback
from trainer.config import (
    GenericTrainerConfig,
    NonFiniteLoss,
    SchedulerInterval,
    ValidationFrequency,
)
from trainer.inflight import EPOCH_ACTIONS, RUN_ONCE, STEP_ACTIONS, Action, Busy, LoopState
from trainer.manager import CheckpointManager
from trainer.persistence import SKIPPED_STEPS_KEY, Persistence
from trainer.precision import make_precision
from trainer.preemption import InterruptFlag, PreemptionFlag
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


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _distributed() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _check_optimizers(optimizers: list[Any], schedulers: list[Any]) -> None:
    for i, optimizer in enumerate(optimizers):
        if not isinstance(optimizer, torch.optim.Optimizer):
            hint = (
                "that is a model: pass the model second and its optimizer third, e.g. "
                "GenericTrainer(config, model, torch.optim.SGD(model.parameters(), lr=0.1))"
                if isinstance(optimizer, torch.nn.Module)
                else "pass torch.optim optimizers, e.g. torch.optim.AdamW(model.parameters())"
            )
            raise TypeError(
                f"optimizer {i} must be a torch.optim.Optimizer (got {type(optimizer).__name__}); "
                f"{hint}"
            )
    for i, scheduler in enumerate(schedulers):
        if not (hasattr(scheduler, "step") and hasattr(scheduler, "state_dict")):
            raise TypeError(
                f"scheduler {i} must be a torch.optim.lr_scheduler scheduler (got "
                f"{type(scheduler).__name__}); pass e.g. torch.optim.lr_scheduler.StepLR(opt, 10)"
            )


def _resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise ValueError(
            f"'device' must be 'auto', 'cpu', 'cuda', 'cuda:N' or another torch device (got "
            f"{name!r}: {exc})"
        ) from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ValueError(
                f"device={name!r} but CUDA is not available here (torch {torch.__version__}, "
                f"CUDA build {torch.version.cuda}); use device='auto' (CUDA when available, else "
                "CPU) or device='cpu'"
            )
        if device.index is not None and device.index >= count:
            raise ValueError(
                f"device={name!r} but only {count} CUDA device(s) are visible; use 'cuda:0'.."
                f"'cuda:{count - 1}' or device='auto'"
            )
    return device


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
        if not isinstance(model, torch.nn.Module):
            raise TypeError(
                f"'model' must be a torch.nn.Module (got {type(model).__name__}); the arguments "
                "are GenericTrainer(config, model, optimizers, schedulers=None)"
            )
        self.config = config
        self.optimizers = _as_list(optimizers)
        self.schedulers = _as_list(schedulers)
        if not self.optimizers:
            raise ValueError("GenericTrainer needs at least one optimizer (got none)")
        _check_optimizers(self.optimizers, self.schedulers)
        if len(self.schedulers) > len(self.optimizers):
            raise ValueError(
                f"scheduler i belongs to optimizer i: got {len(self.schedulers)} schedulers for "
                f"{len(self.optimizers)} optimizers; pass at most one scheduler per optimizer"
            )
        self.device = _resolve_device(config.device)
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
        self._loop = LoopState()
        self._pending_data: dict[str, Any] | None = None
        self._pending_rng: dict[str, Any] | None = None
        self._has_state = False

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
        ``"latest"`` asks for it explicitly and starts fresh when there is none). Data-loader workers
        are stopped when ``fit()`` returns or raises; a later ``fit()`` restarts them where the data
        stood.
        """
        if self._training_step is None:
            raise RuntimeError("no training step: call trainer.set_training_step(fn) before fit()")
        if isinstance(max_epochs, bool) or not isinstance(max_epochs, int) or max_epochs < 1:
            raise ValueError(f"'max_epochs' must be an int >= 1 (got {max_epochs!r})")
        manager = self._adopt_data(train_loaders, val_loaders)
        try:
            return self._fit(manager, resume_from_checkpoint, max_epochs)
        except BaseException as exc:
            loop = self._loop
            if loop.busy is not None:
                loop.dirty, loop.busy = loop.busy, None
            if isinstance(exc, KeyboardInterrupt):
                self._log_interrupt()
            raise
        finally:
            self._park_data(manager)

    def _fit(
        self, manager: DataLoaderManager, resume_from: str | Path | None, max_epochs: int
    ) -> FitResult:
        self._recover_or_resume(resume_from)
        if manager.epoch_length("train") == 0:
            raise ValueError(
                f"the train epoch has 0 steps (train_loader_config "
                f"{manager.fingerprint('train')['config']}), so fit() would 'complete' without "
                "training; set steps_per_epoch >= 1 or use loaders with at least one batch"
            )
        if self.state.epoch >= max_epochs and not self._loop.pending:
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
        manager.ignore_signals_in_workers(("SIGINT", *self.config.preemption.signals))
        if self._pending_rng is not None:
            restore_rng_states(self._pending_rng)
            self._pending_rng = None
        elif not self._has_state:
            seed_everything(self.config.seed)
        self._has_state = True
        self.model.train()
        for callback in self.callbacks:
            callback.on_fit_start(self)
        defer = self.config.preemption.defer_keyboard_interrupt
        with (
            PreemptionFlag(self.config.preemption.signals) as preemption,
            InterruptFlag(defer and "SIGINT" not in self.config.preemption.signals) as interrupt,
        ):
            preempted = self._train(manager, preemption, interrupt, max_epochs)
        status = "preempted" if preempted else "completed"
        result = FitResult(
            status,
            self.state.epoch,
            self.state.global_step,
            self.last_checkpoint,
            {} if preempted else self.latest_metrics(),
        )
        for callback in self.callbacks:
            callback.on_fit_end(self, result)
        return result

    def _log_interrupt(self) -> None:
        dirty = self._loop.dirty
        if dirty is None:
            logger.warning(
                "Interrupted at epoch %d, batch %d (step %d). The trainer keeps its place: call "
                "fit() again to continue from the next batch.",
                self.state.epoch,
                self.state.batch_in_epoch,
                self.state.global_step,
            )
        else:
            logger.warning(
                "Interrupted while %s (epoch %d, batch %d, step %d): the state in memory is "
                "mid-batch, so fit() again goes back to the last checkpoint in %s.",
                dirty.value,
                self.state.epoch,
                self.state.batch_in_epoch,
                self.state.global_step,
                self.checkpoints.root_dir,
            )

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

    def _train(
        self,
        manager: DataLoaderManager,
        preemption: PreemptionFlag,
        interrupt: InterruptFlag,
        max_epochs: int,
    ) -> bool:
        """Train epochs until ``max_epochs``; True when stopped by a preemption."""
        loop = self._loop
        while True:
            if self._drain(preemption, max_epochs):
                return True
            interrupt.raise_if_requested()
            if self.state.epoch >= max_epochs:
                return False
            if self._run_batches(manager, preemption, interrupt, max_epochs):
                return True
            if self.state.micro_step > 0:  # a partial window closes with the epoch
                self._optimizer_step()
                if self._drain(preemption, max_epochs):
                    return True
            loop.pending.extend(EPOCH_ACTIONS)

    def _run_batches(
        self,
        manager: DataLoaderManager,
        preemption: PreemptionFlag,
        interrupt: InterruptFlag,
        max_epochs: int,
    ) -> bool:
        """The rest of the current epoch's batches; True when stopped by a preemption."""
        loop, epoch = self._loop, self.state.epoch
        if loop.epoch_iter is None or loop.epoch_iter.epoch != epoch:
            loop.epoch_iter = manager.create_epoch_iterator("train", epoch)
        iterator = loop.epoch_iter
        accumulate = self.config.performance.gradient_accumulation_steps
        show = self.config.progress_bar and self.rank == 0
        with tqdm(
            total=len(iterator),
            initial=iterator.position,
            desc=f"epoch {epoch}",
            disable=not show,
            leave=False,
        ) as bar:
            if self.state.micro_step >= accumulate:
                # interrupted between the window's last backward and its optimizer step
                self._optimizer_step()
                if self._drain(preemption, max_epochs):
                    return True
            while True:
                loop.busy = Busy.FETCH
                item = next(iterator, None)
                loop.busy = None
                if item is None:
                    return False
                self._train_batch(*item)
                bar.update(1)
                if self.state.micro_step >= accumulate:
                    self._optimizer_step()
                    if self._drain(preemption, max_epochs):
                        return True
                interrupt.raise_if_requested()

    def _train_batch(self, loader_idx: int, name: str, batch: Any) -> None:
        loop = self._loop
        loop.busy = Busy.BATCH
        batch_idx = self.state.batch_in_epoch
        batch = self._to_device(batch)
        with self.precision.autocast():
            outputs = self._training_step(self, batch, batch_idx, loader_idx, name)  # type: ignore[misc]
        loss = _loss_of(outputs)
        weights = self.config.loss_weights_per_loader
        weight = 1.0 if weights is None else float(weights[loader_idx])
        if weight != 0.0:
            if not loss.requires_grad:
                raise ValueError(
                    f"the training step's 'loss' does not require grad (loader {name!r}, batch "
                    f"{batch_idx}): it was computed under torch.no_grad(), detached, or from "
                    "parameters with requires_grad=False; return a loss computed from the model's "
                    "output"
                )
            scale = weight / self.config.performance.gradient_accumulation_steps
            self.precision.backward(loss if scale == 1.0 else loss * scale)
            ids = self.config.per_loader_optimizer_id
            loop.window.update(range(len(self.optimizers)) if ids is None else (ids[loader_idx],))
        loop.window_losses.append((loss.detach(), name, batch_idx))
        self.state.batch_in_epoch += 1
        self.state.micro_step += 1
        loop.busy = None
        for callback in self.callbacks:
            callback.on_train_batch_end(self, outputs, batch_idx, loader_idx, name)

    def _optimizer_step(self) -> None:
        """Close the accumulation window: step the optimizers and queue the step's actions."""
        loop = self._loop
        loop.busy = Busy.STEP
        ids = sorted(loop.window)
        finite = self._losses_finite()
        if finite:
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
        else:
            stepped = []
        for optimizer in self.optimizers:
            optimizer.zero_grad(set_to_none=True)
        for param in self._params_outside_optimizers:
            param.grad = None
        if self.config.scheduler_interval is SchedulerInterval.STEP:
            for i in stepped:
                if i < len(self.schedulers):
                    self.schedulers[i].step()
        loop.window.clear()
        self.state.global_step += 1
        self.state.optimizer_steps_in_epoch += 1
        self.state.micro_step = 0
        step = self.state.global_step
        if not finite:
            self._record(SKIPPED_STEPS_KEY, loop.skipped_steps)
        if step % self.config.log_every_n_steps == 0 and loop.window_losses:
            value = float(torch.stack([x.float() for x, _, _ in loop.window_losses]).mean())
            self._record("train/loss", value)
            if self.rank == 0:
                logger.info("epoch %d step %d loss %.6f", self.state.epoch, step, value)
        loop.window_losses.clear()
        loop.busy = None
        loop.pending[:0] = STEP_ACTIONS

    def _losses_finite(self) -> bool:
        """Whether the window's losses are finite; raise or count a skip when one is not."""
        losses = self._loop.window_losses
        if not losses:
            return True
        if len(losses) == 1:
            finite = math.isfinite(losses[0][0].item())
        else:
            finite = bool(torch.isfinite(torch.stack([x.float() for x, _, _ in losses])).all())
        if finite:
            return True
        value, name, batch_idx = next((x, n, b) for x, n, b in losses if not torch.isfinite(x))
        where = (
            f"loss {float(value)} at epoch {self.state.epoch}, batch {batch_idx} of loader "
            f"{name!r} (optimizer step {self.state.global_step + 1})"
        )
        if self.config.nonfinite_loss is NonFiniteLoss.RAISE:
            raise FloatingPointError(
                f"non-finite {where}; the optimizer step was not taken. Lower the learning rate, "
                "enable clipping (PerformanceConfig(clip_grad_norm=...)), check the inputs, or set "
                "GenericTrainerConfig(nonfinite_loss='skip') to skip such steps"
            )
        self._loop.skipped_steps += 1
        logger.warning("Skipped the optimizer step: non-finite %s", where)
        return False

    # ------------------------------------------------------------------ step and epoch actions
    def _drain(self, preemption: PreemptionFlag, max_epochs: int) -> bool:
        """Run the queued actions in order; True when a preemption stops training."""
        pending = self._loop.pending
        while pending:
            action = pending[0]
            if action in RUN_ONCE:
                pending.pop(0)
            stop = self._act(action, preemption, max_epochs)
            if action not in RUN_ONCE:
                pending.pop(0)
            if stop:
                pending.clear()
                return True
        return False

    def _act(self, action: Action, preemption: PreemptionFlag, max_epochs: int) -> bool:
        step, validation = self.state.global_step, self.config.validation
        if action is Action.VALIDATE_IF_DUE:
            if validation.frequency is ValidationFrequency.EVERY_N_STEPS and (
                step % validation.every_n_steps == 0  # type: ignore[operator]
            ):
                self.validate()
        elif action is Action.SAVE_IF_DUE:
            every = self.config.checkpoint.save_every_n_steps
            if every and step % every == 0:
                self.save("step")
        elif action is Action.STEP_CALLBACKS:
            for callback in self.callbacks:  # after this step's validation and checkpoint
                callback.on_optimizer_step(self)
        elif action is Action.CHECK_PREEMPTION:
            if preemption.agreed(self.device if self.device.type == "cuda" else None):
                self.state.preempted = True
                if self._loop.saved_at != step:
                    self.save("preempted")
                return True
        elif action is Action.EPOCH_SCHEDULERS:
            if (
                self.config.scheduler_interval is SchedulerInterval.EPOCH
                and self.state.optimizer_steps_in_epoch
            ):
                for scheduler in self.schedulers:
                    scheduler.step()
        elif action is Action.EPOCH_VALIDATION:
            if validation.frequency is ValidationFrequency.PER_EPOCH:
                self.validate()
        elif action is Action.EPOCH_CALLBACKS:
            for callback in self.callbacks:
                callback.on_epoch_end(self, self.state.epoch)
        elif action is Action.NEXT_EPOCH:
            state = self.state
            state.epoch, state.batch_in_epoch, state.optimizer_steps_in_epoch = (
                state.epoch + 1,
                0,
                0,
            )
            state.completed = state.epoch >= max_epochs
            state.phase = "done" if state.completed else "train"
            self._loop.epoch_iter = None
        elif action is Action.EPOCH_SAVE:
            every = self.config.checkpoint.save_every_n_epochs
            if every and (self.state.epoch % every == 0 or self.state.completed):
                self.save("epoch_end")
        return False

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


def _loss_of(outputs: Any) -> torch.Tensor:
    loss = outputs.get("loss") if isinstance(outputs, dict) else None
    if isinstance(loss, torch.Tensor):
        return loss
    if isinstance(loss, (int, float)):
        raise TypeError(
            f"the training step returned 'loss' as a {type(loss).__name__} ({loss!r}); return the "
            "loss tensor itself (not loss.item()) so that it can be backpropagated"
        )
    raise TypeError(
        f"the training step must return a dict with a 'loss' tensor (got {type(outputs).__name__}"
        f"{' with keys ' + str(sorted(outputs)) if isinstance(outputs, dict) else ''})"
    )
