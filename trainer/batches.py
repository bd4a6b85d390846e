"""One epoch's batches: fetch, forward and backward, the optimizer step closing each window.

This is the loop's hot path, written for its cost (its overhead over a hand-written loop is what
the trainer benchmark measures): what a run cannot need is decided once per ``fit()`` in
:func:`~trainer.steps.plan_actions`, and the calls a batch can skip are guarded by a flag read.
The functions take the :class:`~trainer.loop.GenericTrainer` they run for.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from trainer.devices import move_to_device
from trainer.distributed import check_same_schedule
from trainer.inflight import Action, Busy, Run
from trainer.metrics import scalar_outputs, window_means
from trainer.optim import check_losses, loss_of, require_grad
from trainer.persistence import SKIPPED_STEPS_KEY
from trainer.progress import EpochProgress
from trainer.steps import act, drain

__all__ = ["optimizer_step", "run_batches", "train_batch"]

_FETCH, _BATCH, _STEP = Busy.FETCH, Busy.BATCH, Busy.STEP
_TENSOR = torch.Tensor


def run_batches(trainer: Any, run: Run) -> bool:
    """The rest of the current epoch's batches; True when stopped by a preemption."""
    loop, state, epoch = trainer._loop, trainer.state, trainer.state.epoch
    if loop.epoch_iter is None or loop.epoch_iter.epoch != epoch:
        loop.epoch_iter = run.manager.create_epoch_iterator("train", epoch)
    iterator = loop.epoch_iter
    if trainer.world_size > 1 and not loop.schedule_checked:
        fingerprint = run.manager.fingerprint("train")
        check_same_schedule(
            iterator.schedule, fingerprint, epoch=epoch, group=trainer.process_group
        )
        loop.schedule_checked = True
    accumulate = trainer.config.performance.gradient_accumulation_steps
    show = trainer.config.progress_bar and trainer.rank == 0
    length = len(iterator)
    preemption, interrupt = run.preemption, run.interrupt
    with EpochProgress(length, iterator, epoch, enabled=show) as bar:
        while True:
            loop.busy = _FETCH
            item = next(iterator, None)
            loop.busy = None
            if item is None:
                if trainer.rank == 0:
                    bar.summarize(state, trainer.latest_metrics())
                return False
            if not loop.ddp or state.micro_step + 1 >= accumulate or iterator.position >= length:
                outputs = train_batch(trainer, item, True)
            else:  # a micro-step that does not close its window: no all-reduce
                with trainer.model.no_sync():  # a DDP model
                    outputs = train_batch(trainer, item, False)
            if loop.batch_callbacks:
                _batch_end(trainer, outputs, item)
            if show:
                bar.batch()
            if state.micro_step >= accumulate:
                losses = optimizer_step(trainer)
                if show:
                    bar.step(losses, trainer.optimizers[0], state.global_step)
                if loop.pending and drain(trainer, loop.pending, preemption, run.max_epochs):
                    return True
                if loop.checks_flag and preemption.requested:
                    return act(trainer, Action.CHECK_PREEMPTION, preemption, run.max_epochs)
            if interrupt.requested:
                interrupt.raise_if_requested()


def train_batch(trainer: Any, item: tuple[int, str, Any], synced: bool) -> dict[str, Any]:
    """Forward and backward of one ``(loader index, loader name, batch)`` item; its gradients
    accumulate into the window (``synced``: all-reduced by this backward, under DDP)."""
    loader_idx, name, batch = item
    loop, state = trainer._loop, trainer.state
    loop.busy = _BATCH
    batch_idx = state.batch_in_epoch
    if trainer._moves:
        batch = move_to_device(batch, trainer.device)
    step_fn = trainer._training_step
    plain = loop.plain_precision
    if plain:
        outputs = step_fn(trainer, batch, batch_idx, loader_idx, name)
    else:
        outputs = trainer.precision.forward(step_fn, trainer, batch, batch_idx, loader_idx, name)
    loss = outputs.get("loss") if type(outputs) is dict else None
    if type(loss) is not _TENSOR:
        loss = loss_of(outputs)  # a subclass, or a clear error
    scale = loop.scales[loader_idx]
    if scale != 0.0:
        if not loss.requires_grad:
            require_grad(loss, name, batch_idx)
        if plain and scale == 1.0:
            loss.backward()
        else:
            trainer.precision.backward(loss if scale == 1.0 else loss * scale)
        loop.window.update(loop.owners[loader_idx])
        loop.unsynced = not synced
    loop.window_losses.append((loss.detach(), name, batch_idx))
    if len(outputs) > 1:
        extras = scalar_outputs(outputs)
        if extras is not None:
            loop.window_extras.append(extras)
    state.batch_in_epoch = batch_idx + 1
    state.micro_step += 1
    loop.busy = None
    return outputs


def _batch_end(trainer: Any, outputs: dict[str, Any], item: tuple[int, str, Any]) -> None:
    """The callbacks' ``on_train_batch_end`` (a callback may change the parameters: a
    deferred copy first)."""
    trainer.checkpoints.wait_snapshot()
    batch_idx, (loader_idx, name, _) = trainer.state.batch_in_epoch - 1, item
    for callback in trainer._loop.batch_callbacks:  # those with a hook (see steps.plan_actions)
        callback.on_train_batch_end(trainer, outputs, batch_idx, loader_idx, name)


def optimizer_step(trainer: Any) -> list[tuple[torch.Tensor, str, int]]:
    """Close the accumulation window: step the optimizers, queue the step's actions; return
    the window's ``(loss, loader name, batch index)`` losses."""
    loop, state = trainer._loop, trainer.state
    loop.busy = _STEP
    losses = loop.window_losses
    # one loss (no accumulation), finite: the common case, without a call
    finite = (len(losses) == 1 and math.isfinite(losses[0][0].item())) or check_losses(
        losses, trainer.config.nonfinite_loss, state.epoch, state.global_step + 1
    )
    trainer.checkpoints.wait_snapshot()  # the save in flight has copied what the step changes
    window = loop.window
    ids = loop.all_optimizers if len(window) == len(loop.all_optimizers) else sorted(window)
    trainer._stepper.step(ids, finite, loop.unsynced)
    loop.unsynced = False
    window.clear()
    state.global_step += 1
    state.optimizer_steps_in_epoch += 1
    state.micro_step = 0
    if not finite:
        loop.skipped_steps += 1
    if not finite or state.global_step % loop.log_every == 0:
        _log_window(trainer, losses, finite)
    loop.window_losses = []
    if loop.window_extras:
        loop.window_extras = []
    loop.busy = None
    if loop.step_actions:
        loop.pending[:0] = loop.step_actions
    return losses


def _log_window(trainer: Any, losses: list[tuple[torch.Tensor, str, int]], finite: bool) -> None:
    """Log the window's metrics (a log step) and the skipped-step count (a skipped step)."""
    loop = trainer._loop
    metrics = {SKIPPED_STEPS_KEY: float(loop.skipped_steps)} if not finite else {}
    if trainer.state.global_step % loop.log_every == 0 and losses:
        metrics.update(window_means(losses, loop.window_extras))
    if metrics:
        trainer._log(metrics)
