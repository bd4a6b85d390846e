"""The training loop's in-flight state: what a checkpoint does not hold, because it is taken between.

Checkpoints are taken at optimizer-step boundaries; between them the loop holds the accumulation
window, the work still due after a step or at an epoch's end (a queue of :class:`Action`), and which
unit of work (:class:`Busy`) is running, so that an interruption inside one is known for what it is.
"""

from __future__ import annotations

import enum
import logging
from pathlib import Path
from typing import Any

import attrs
import torch

from trainer.resume import ResumeState

__all__ = [
    "EPOCH_ACTIONS",
    "RUN_ONCE",
    "STEP_ACTIONS",
    "Action",
    "Busy",
    "LoopState",
    "Run",
    "log_interrupt",
]

logger = logging.getLogger("trainer.loop")


class Action(enum.Enum):
    """Work due after an optimizer step or at the end of an epoch, in queue order."""

    VALIDATE_IF_DUE = "validate_if_due"
    SAVE_IF_DUE = "save_if_due"
    STEP_CALLBACKS = "step_callbacks"
    CHECK_PREEMPTION = "check_preemption"
    EPOCH_SCHEDULERS = "epoch_schedulers"
    EPOCH_VALIDATION = "epoch_validation"
    EPOCH_CALLBACKS = "epoch_callbacks"
    NEXT_EPOCH = "next_epoch"
    EPOCH_SAVE = "epoch_save"


# the step's callbacks before its save, as the epoch's: a file holds what they changed
STEP_ACTIONS = (
    Action.VALIDATE_IF_DUE,
    Action.STEP_CALLBACKS,
    Action.SAVE_IF_DUE,
    Action.CHECK_PREEMPTION,
)
EPOCH_ACTIONS = (
    Action.EPOCH_SCHEDULERS,
    Action.EPOCH_VALIDATION,
    Action.EPOCH_CALLBACKS,
    Action.NEXT_EPOCH,
    Action.EPOCH_SAVE,
    Action.CHECK_PREEMPTION,
)
# user code: leaves the queue before it runs, so a KeyboardInterrupt it raises does not re-run it
# (a tuple: ``in`` matches members by identity, without Enum's Python-level __hash__)
RUN_ONCE = (Action.STEP_CALLBACKS, Action.EPOCH_CALLBACKS)


class Busy(enum.Enum):
    """A unit of work that leaves the in-memory state mid-way when interrupted inside."""

    FETCH = "fetching a batch"
    BATCH = "forward/backward of a batch"
    STEP = "the optimizer step"


@attrs.define(eq=False)
class LoopState:
    """The loop's in-flight state: what a checkpoint does not hold because it is taken between."""

    epoch_iter: Any = None
    window: set[int] = attrs.field(factory=set)
    window_losses: list[tuple[torch.Tensor, str, int]] = attrs.field(factory=list)
    window_extras: list[dict[str, Any]] = attrs.field(factory=list)
    pending: list[Action] = attrs.field(factory=list)
    busy: Busy | None = None
    dirty: Busy | None = None
    saved_at: int | None = None
    skipped_steps: int = 0
    unsynced: bool = False
    schedule_checked: bool = False
    scales: list[float] = attrs.field(factory=list)
    owners: list[tuple[int, ...]] = attrs.field(factory=list)
    # What this fit() does per batch and per step, decided once (see trainer.steps.plan_actions).
    #: The step actions that can do anything, queued after every optimizer step.
    step_actions: tuple[Action, ...] = STEP_ACTIONS
    #: Whether the loop checks the local preemption flag itself after each step (one process:
    #: nothing to agree on), :data:`Action.CHECK_PREEMPTION` being left out of ``step_actions``.
    checks_flag: bool = False
    #: The callbacks whose ``on_train_batch_end`` is not the no-op of the base class.
    batch_callbacks: list[Any] = attrs.field(factory=list)
    #: DDP: a micro-step that does not close its window runs under ``no_sync()``.
    ddp: bool = False
    #: The precision's forward is a plain call and its backward a plain ``loss.backward()``: the
    #: loop makes them itself (two calls fewer per batch).
    plain_precision: bool = False
    #: ``log_every_n_steps``, read once.
    log_every: int = 1
    #: Every optimizer, in order: a window that touched all of them steps these (no sort).
    all_optimizers: tuple[int, ...] = ()

    def note_exit(self, exc: BaseException, state: ResumeState, root: Path) -> None:
        """``fit()`` is leaving with ``exc``: inside a unit of work the state is now mid-way."""
        if self.busy is not None:
            self.dirty, self.busy = self.busy, None
        if isinstance(exc, KeyboardInterrupt):
            log_interrupt(state, self.dirty, root)

    def plan(self, config: Any, num_loaders: int, num_optimizers: int) -> None:
        """Per train loader: its loss scale (weight / accumulation) and the optimizers it steps."""
        weights = config.loss_weights_per_loader or (1.0,) * num_loaders
        accumulate = config.performance.gradient_accumulation_steps
        self.scales = [float(w) / accumulate for w in weights]
        ids = config.per_loader_optimizer_id
        everyone = tuple(range(num_optimizers))
        self.owners = [everyone if ids is None else (ids[i],) for i in range(num_loaders)]


def log_interrupt(state: ResumeState, dirty: Busy | None, root: Path) -> None:
    """The WARNING a KeyboardInterrupt out of ``fit()`` gets: where it stopped, what comes next."""
    if dirty is None:
        logger.warning(
            "Interrupted at epoch %d, batch %d (step %d). The trainer keeps its place: call "
            "fit() again to continue from the next batch.",
            state.epoch,
            state.batch_in_epoch,
            state.global_step,
        )
    else:
        logger.warning(
            "Interrupted while %s (epoch %d, batch %d, step %d): the state in memory is "
            "mid-batch, so fit() again goes back to the last checkpoint in %s.",
            dirty.value,
            state.epoch,
            state.batch_in_epoch,
            state.global_step,
            root,
        )


@attrs.frozen
class Run:
    """What one ``fit()`` call trains with: its data, its signal flags and its last epoch."""

    manager: Any
    preemption: Any
    interrupt: Any
    max_epochs: int
