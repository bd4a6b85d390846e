"""The work due after an optimizer step and at an epoch's end, one :class:`Action` at a time.

The loop queues :data:`~trainer.inflight.STEP_ACTIONS` after every optimizer step and
:data:`~trainer.inflight.EPOCH_ACTIONS` when an epoch's schedule is exhausted; :func:`act` runs one
of them. Each returns whether training stops (a preemption), so the loop decides, nothing raises.
"""

from __future__ import annotations

from typing import Any

from torch.nn.parallel import DistributedDataParallel

from trainer.callbacks import Callback
from trainer.config import SchedulerInterval, ValidationFrequency
from trainer.inflight import EPOCH_ACTIONS, RUN_ONCE, STEP_ACTIONS, Action, LoopState
from trainer.precision import is_plain
from trainer.preemption import PreemptionFlag
from trainer.resume import ResumePhase, SaveReason

__all__ = ["act", "close_epoch", "drain", "plan_actions"]


def _overrides(callback: Any, hook: str) -> bool:
    return getattr(type(callback), hook, None) is not getattr(Callback, hook)


def plan_actions(trainer: Any) -> None:
    """At ``fit()``'s start, decide what each batch and step of this run does.

    Left out of every step: the actions this run can never make do anything (they would only test
    their condition) and, in a single process, the preemption check, which the loop makes itself
    (a flag read; the queue is for work that must survive an interruption). Noted: which callbacks
    have a batch hook, whether micro-steps need DDP's ``no_sync``, whether the precision is the
    plain one, and the optimizers a full window steps.
    """
    config, callbacks = trainer.config, trainer.callbacks
    alone = trainer.world_size == 1
    can_act = {
        Action.VALIDATE_IF_DUE: config.validation.frequency is ValidationFrequency.EVERY_N_STEPS,
        Action.SAVE_IF_DUE: bool(config.checkpoint.save_every_n_steps),
        Action.STEP_CALLBACKS: any(_overrides(c, "on_optimizer_step") for c in callbacks),
        Action.CHECK_PREEMPTION: not alone,
    }
    loop = trainer._loop
    loop.step_actions = tuple(a for a in STEP_ACTIONS if can_act.get(a, True))
    loop.checks_flag = alone
    loop.batch_callbacks = [c for c in callbacks if _overrides(c, "on_train_batch_end")]
    loop.ddp = isinstance(trainer.model, DistributedDataParallel)
    loop.plain_precision = is_plain(trainer.precision)
    loop.log_every = config.log_every_n_steps
    loop.all_optimizers = tuple(range(len(trainer.optimizers)))


def close_epoch(loop: LoopState) -> None:
    """Queue the end-of-epoch actions (the epoch's schedule is exhausted)."""
    loop.pending.extend(EPOCH_ACTIONS)


def _cuda_or_none(trainer: Any) -> Any:
    return trainer.device if trainer.device.type == "cuda" else None


def act(trainer: Any, action: Action, preemption: PreemptionFlag, max_epochs: int) -> bool:
    """Run ``action`` for ``trainer`` (a GenericTrainer); True when training must stop."""
    state = trainer.state
    if action is Action.CHECK_PREEMPTION:  # first: the one action of most steps
        alone = trainer.world_size == 1  # nothing to agree with: the local flag decides
        if not (preemption.requested if alone else preemption.agreed(_cuda_or_none(trainer))):
            return False
        state.preempted = True
        if trainer._loop.saved_at != state.global_step:
            trainer.save(SaveReason.PREEMPTED)
        return True
    config = trainer.config
    step, validation = state.global_step, config.validation
    if action is Action.VALIDATE_IF_DUE:
        every = validation.every_n_steps
        if validation.frequency is ValidationFrequency.EVERY_N_STEPS and step % every == 0:
            trainer.validate()
    elif action is Action.SAVE_IF_DUE:
        every = config.checkpoint.save_every_n_steps
        if every and step % every == 0:
            trainer.save(SaveReason.STEP)
    elif action is Action.STEP_CALLBACKS:  # no deferred copy is pending: the step waited for it
        for callback in trainer.callbacks:  # after this step's validation, before its save
            callback.on_optimizer_step(trainer)
    elif action is Action.EPOCH_SCHEDULERS:
        if config.scheduler_interval is SchedulerInterval.EPOCH and state.optimizer_steps_in_epoch:
            for scheduler in trainer.schedulers:
                scheduler.step()
    elif action is Action.EPOCH_VALIDATION:
        if validation.frequency is ValidationFrequency.PER_EPOCH:
            trainer.validate()
    elif action is Action.EPOCH_CALLBACKS:
        trainer.checkpoints.wait_snapshot()  # the last step's save may still be copying
        for callback in trainer.callbacks:
            callback.on_epoch_end(trainer, state.epoch)
    elif action is Action.NEXT_EPOCH:
        state.epoch, state.batch_in_epoch, state.optimizer_steps_in_epoch = state.epoch + 1, 0, 0
        state.completed = state.epoch >= max_epochs
        state.phase = ResumePhase.DONE if state.completed else ResumePhase.TRAIN
        trainer._loop.epoch_iter = None
    elif action is Action.EPOCH_SAVE:
        every = config.checkpoint.save_every_n_epochs
        if every and (state.epoch % every == 0 or state.completed):
            trainer.save(SaveReason.EPOCH_END)
    return False


def drain(trainer: Any, pending: list[Action], preemption: PreemptionFlag, max_epochs: int) -> bool:
    """Run the queued actions in order; True when a preemption stops training.

    An action leaves the queue once done, so an interruption inside one runs it again at the next
    ``fit()``; user callbacks (:data:`~trainer.inflight.RUN_ONCE`) leave it before they run, so a
    KeyboardInterrupt they raise does not run them twice.
    """
    while pending:
        action = pending[0]
        if action in RUN_ONCE:
            pending.pop(0)
        stop = act(trainer, action, preemption, max_epochs)
        if action not in RUN_ONCE:
            pending.pop(0)
        if stop:
            pending.clear()
            return True
    return False
