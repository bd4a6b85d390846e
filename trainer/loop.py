"""``GenericTrainer``: a thin loop that resumes mid-epoch bit-exactly from one checkpoint file.

Per batch: fetch, forward under the precision context, backward; at the accumulation boundary the
optimizer step, then the step's actions (validate, checkpoint, callbacks, preemption: a queue, so an
interruption inside resumes with what is still due). Checkpoints are taken at step boundaries.
The batches of an epoch and the optimizer step are :mod:`trainer.batches` (the hot path).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from statefuldata import DataLoaderManager, seed_everything
from trainer.batches import optimizer_step, run_batches
from trainer.callbacks import Callback
from trainer.checkpoints.manager import CheckpointManager
from trainer.config import GenericTrainerConfig, SchedulerInterval
from trainer.data import TrainerData, as_list
from trainer.devices import move_to_device, rank_and_world_size, resolve_device
from trainer.distributed import unwrap, wrap_model
from trainer.inflight import LoopState, Run
from trainer.loggers import default_loggers
from trainer.metrics import describe
from trainer.optim import WindowStepper, check_trainer_args
from trainer.persistence import SKIPPED_STEPS_KEY, TrainerIO, resume_source
from trainer.precision import make_precision
from trainer.preemption import InterruptFlag, PreemptionFlag
from trainer.progress import ensure_console_logging
from trainer.result import FitResult, FitStatus
from trainer.resume import ResumeState, SaveReason
from trainer.rng import restore_rng_states
from trainer.steps import close_epoch, drain, plan_actions
from trainer.validation import run_validation

__all__ = ["FitResult", "GenericTrainer"]

logger = logging.getLogger(__name__)

StepFn = Callable[..., dict[str, Any]]
FITTED = FitStatus.ALREADY_COMPLETE


class GenericTrainer:
    """Train ``model`` with ``optimizers`` over a mix of loaders; save and resume exactly.

    Example:
        >>> trainer = GenericTrainer(GenericTrainerConfig(), model, torch.optim.SGD(model.parameters(), 0.1))  # doctest: +SKIP
        >>> trainer.set_training_step(lambda t, batch, i, di, name: {"loss": model(batch).mean()})  # doctest: +SKIP
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
        process_group: Any = None,
    ) -> None:
        self.config = config
        self.optimizers: list[torch.optim.Optimizer] = as_list(optimizers)
        self.schedulers: list[Any] = as_list(schedulers)
        check_trainer_args(config, model, self.optimizers, self.schedulers)
        self.rank, self.world_size = rank_and_world_size(process_group)
        self.process_group = process_group
        self.device = resolve_device(config.device, distributed=self.world_size > 1)
        self._moves = self.device.type != "cpu"  # batches go to the device in the loop
        self.model = wrap_model(
            model.to(self.device), self.device, self.world_size, config, process_group
        )
        owned = {id(p) for o in self.optimizers for g in o.param_groups for p in g["params"]}
        self.precision = make_precision(config.performance, self.device)
        self._stepper = WindowStepper(
            self.model,
            self.optimizers,
            self.schedulers,
            self.precision,
            [p for p in self.model.parameters() if id(p) not in owned],
            config.performance.clip_grad_norm,
            config.scheduler_interval is SchedulerInterval.STEP,
            process_group,
        )
        self.checkpoints = CheckpointManager(config.checkpoint)
        self.callbacks = [*callbacks, *default_loggers(config.loggers)]
        self.state = ResumeState()
        self.metrics_history: dict[str, list[list[float]]] = {}
        self.last_checkpoint: Path | None = None
        self._training_step: StepFn | None = None
        self._validation_step: StepFn | None = None
        self._data = TrainerData(config)
        self._io = TrainerIO(
            config,
            unwrap(self.model),
            self.optimizers,
            self.schedulers,
            self.precision,
            self.checkpoints,
            self._data,
            self.rank,
            self.world_size,
        )
        self._loop = LoopState()
        self._pending_rng: dict[str, Any] | None = None
        self._has_state = False

    def set_training_step(self, fn: StepFn) -> None:
        """``fn(trainer, batch, batch_idx, dataloader_idx, dataloader_name) -> {"loss": tensor, ...}``."""
        self._training_step = fn

    def set_validation_step(self, fn: StepFn) -> None:
        """Same signature; every value returned is averaged into validation metrics."""
        self._validation_step = fn

    @property
    def dataloader_manager(self) -> DataLoaderManager | None:
        """The manager of the last ``fit()``'s loaders (None before the first)."""
        return self._data.manager

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
        manager, new = self._data.adopt(
            train_loaders,
            val_loaders,
            num_optimizers=len(self.optimizers),
            keep_position=self._has_state,
        )
        if new:
            self._loop.epoch_iter = None
        if self.rank == 0:
            self.checkpoints.acquire()  # one writer per folder, for the whole fit()
        try:
            return self._fit(manager, resume_from_checkpoint, max_epochs)  # release() waits
        except BaseException as exc:
            self.checkpoints.wait(during=exc)  # never leave a save in flight behind (any rank)
            self._loop.note_exit(exc, self.state, self.checkpoints.root_dir)
            raise
        finally:
            manager.release_workers()  # positions are kept; a later fit() restarts the workers
            if self.rank == 0:
                self.checkpoints.release()

    def _fit(
        self, manager: DataLoaderManager, resume_from: str | Path | None, max_epochs: int
    ) -> FitResult:
        self._recover_or_resume(resume_from)
        if self.state.epoch >= max_epochs and not self._loop.pending:
            state = self.state
            done = f"{state.epoch} of {max_epochs} epochs done (step {state.global_step})"
            logger.info(
                "Training is already complete: %s; nothing to train. Raise max_epochs", done
            )
            return FitResult(FITTED, state.epoch, state.global_step, self.last_checkpoint)
        self._data.set_snapshot_cadence()
        self._loop.plan(self.config, len(manager.names("train")), len(self.optimizers))
        plan_actions(self)
        manager.ignore_signals_in_workers(("SIGINT", *self.config.preemption.signals))
        if self._pending_rng is not None:
            restore_rng_states(self._pending_rng)
            self._pending_rng = None
        elif not self._has_state:
            seed_everything(self.config.seed)
        self._has_state = True
        if self.rank == 0:
            ensure_console_logging()
            self.checkpoints.record_run_start(self.state, world_size=self.world_size)
        self.model.train()
        for callback in self.callbacks:
            callback.on_fit_start(self)
        signals = self.config.preemption.signals
        defer = self.config.preemption.defer_keyboard_interrupt and "SIGINT" not in signals
        with PreemptionFlag(signals) as preemption, InterruptFlag(defer) as interrupt:
            preempted = self._train(Run(manager, preemption, interrupt, max_epochs))
        self.checkpoints.wait_snapshot()  # on_fit_end may change the parameters
        result = FitResult(
            FitStatus.PREEMPTED if preempted else FitStatus.COMPLETED,
            self.state.epoch,
            self.state.global_step,
            self.last_checkpoint,
            {} if preempted else self.latest_metrics(),
        )
        for callback in self.callbacks:
            callback.on_fit_end(self, result)
        return result

    def _train(self, run: Run) -> bool:
        """Train epochs until ``max_epochs``; True when stopped by a preemption."""
        accumulate = self.config.performance.gradient_accumulation_steps
        while True:
            if drain(self, self._loop.pending, run.preemption, run.max_epochs):
                return True
            run.interrupt.raise_if_requested()
            if self.state.epoch >= run.max_epochs:
                return False
            if self.state.micro_step >= accumulate:
                # interrupted between the window's last backward and its optimizer step
                optimizer_step(self)
                continue
            if run_batches(self, run):
                return True
            if self.state.micro_step > 0:  # a partial window closes with the epoch
                optimizer_step(self)
            close_epoch(self._loop)

    def _recover_or_resume(self, resume_from: str | Path | None) -> None:
        """Go back to the last checkpoint when an interruption left memory mid-batch, else resume."""
        dirty, has_state = self._loop.dirty, self._has_state
        interrupted = None if dirty is None else dirty.value
        found = resume_source(self.checkpoints, self.config, resume_from, has_state, interrupted)
        if found is not None:
            self.restore_from_payload(found[1], source=str(found[0]))
        if self._data.apply_pending():
            self._loop.epoch_iter = None
        self.state.preempted = False

    def checkpoint_payload(self) -> dict[str, Any]:
        """The v1 checkpoint dict of the trainer as it stands (used by ``save_checkpoint``)."""
        return self._io.payload(self.state, self.metrics_history)

    def restore_from_payload(
        self, payload: dict[str, Any], *, source: str = "the checkpoint"
    ) -> ResumeState:
        """Load a v1 payload; the data position and RNGs take effect at the next ``fit()``.

        Raises:
            IncompatibleStateError: The payload was written under a trainer configuration that
                changes the result (see :mod:`trainer.compat`) and ``strict_resume`` is on.
        """
        restored = self._io.restore(payload, source)
        self.state, self.metrics_history = restored.state, restored.metrics_history
        self._pending_rng = restored.rng_states
        skipped = self.metrics_history.get(SKIPPED_STEPS_KEY)
        self._loop = LoopState(skipped_steps=int(skipped[-1][1]) if skipped else 0)
        self._has_state = True
        return self.state

    def save(self, reason: SaveReason | str = SaveReason.MANUAL) -> Path | None:
        """Write a checkpoint now (rank 0 writes; every rank's data position goes in the file)."""
        self.state.save_reason = reason
        defer = reason in (SaveReason.STEP, SaveReason.EPOCH_END)  # the loop's own saves
        path = self._io.write(self.checkpoint_payload(), self.state, self.latest_metrics(), defer)
        self.last_checkpoint, self._loop.saved_at = path, self.state.global_step
        for callback in self.callbacks:
            callback.on_checkpoint(self, path)
        return path

    def validate(self) -> dict[str, float]:
        """Run every validation loader once; returns per-loader and global metrics."""
        manager = self._data.manager
        if self._validation_step is None or manager is None or not manager.has_phase("val"):
            return {}
        metrics = run_validation(
            manager,
            self._validation_step,
            owner=self,
            model=self.model,
            precision=self.precision,
            to_device=self._to_device,
            aggregation=self.config.validation.aggregation,
            global_step=self.state.global_step,
        )
        self._log(metrics)
        if self.rank == 0:
            logger.info("validation at step %d%s", self.state.global_step, describe(metrics, "val"))
        self.checkpoints.wait_snapshot()  # a callback may change the parameters
        for callback in self.callbacks:
            callback.on_validation_end(self, metrics)
        return metrics

    def _log(self, metrics: dict[str, float]) -> None:
        """Record a group of metrics at the current step and hand it to every logger."""
        step = self.state.global_step
        for key, value in metrics.items():
            self.metrics_history.setdefault(key, []).append([step, float(value)])
        for callback in self.callbacks:
            callback.on_log(self, metrics, step)

    def latest_metrics(self) -> dict[str, float]:
        return {key: points[-1][1] for key, points in self.metrics_history.items() if points}

    def _to_device(self, batch: Any) -> Any:
        return move_to_device(batch, self.device) if self._moves else batch
