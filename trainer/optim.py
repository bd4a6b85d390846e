"""The optimizer step of an accumulation window: unscale, clip, step, update, zero, schedule."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

import attrs
import torch

from trainer.config import GenericTrainerConfig, NonFiniteLoss
from trainer.distributed import average_gradients
from trainer.precision import Precision, is_plain

logger = logging.getLogger(__name__)

__all__ = [
    "WindowStepper",
    "check_losses",
    "check_optimizers",
    "check_trainer_args",
    "loss_of",
    "require_grad",
    "step_optimizers",
    "step_schedulers",
    "zero_grads",
]


def step_optimizers(
    optimizers: Sequence[torch.optim.Optimizer],
    ids: Sequence[int],
    precision: Precision,
    clip_grad_norm: float | None,
) -> list[int]:
    """Step the optimizers ``ids`` (unscaled, clipped together); return those that stepped.

    A GradScaler may skip a step (inf/nan gradients): that optimizer is left out of the result,
    so its scheduler does not step either. See :meth:`Precision.step_optimizers
    <trainer.precision.Precision.step_optimizers>`.
    """
    return list(precision.step_optimizers(optimizers, ids, clip_grad_norm))


def zero_grads(
    optimizers: Sequence[torch.optim.Optimizer], others: Sequence[torch.nn.Parameter]
) -> None:
    """Drop every gradient (``set_to_none``), including parameters no optimizer owns."""
    for optimizer in optimizers:
        optimizer.zero_grad(set_to_none=True)
    for param in others:
        param.grad = None


def step_schedulers(schedulers: Sequence[Any], stepped: Sequence[int]) -> None:
    """Step scheduler ``i`` for every optimizer ``i`` that stepped (scheduler i belongs to it)."""
    for i in stepped:
        if i < len(schedulers):
            schedulers[i].step()


def check_optimizers(optimizers: Sequence[Any], schedulers: Sequence[Any]) -> None:
    """At least one torch optimizer, at most one scheduler each, scheduler i for optimizer i."""
    if not optimizers:
        raise ValueError("GenericTrainer needs at least one optimizer (got none)")
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
    if len(schedulers) > len(optimizers):
        raise ValueError(
            f"scheduler i belongs to optimizer i: got {len(schedulers)} schedulers for "
            f"{len(optimizers)} optimizers; pass at most one scheduler per optimizer"
        )


def loss_of(outputs: Any) -> torch.Tensor:
    """The ``"loss"`` tensor of a training step's outputs (clear errors otherwise)."""
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


def check_losses(
    losses: Sequence[tuple[torch.Tensor, str, int]], mode: NonFiniteLoss, epoch: int, step: int
) -> bool:
    """Whether a window's ``(loss, loader name, batch index)`` losses are all finite.

    One ``.item()`` (a single loss) or one reduction over the window's stacked losses per
    optimizer step. A non-finite loss raises ``FloatingPointError`` (``mode`` RAISE) or is logged
    and reported as False (SKIP).

    The answer is needed before the step (a refused or skipped step leaves parameters and
    optimizer state untouched, which no on-device masking gives for every optimizer), so it is
    read once per optimizer step: on a GPU one synchronisation per step, as GradScaler's own
    inf/nan check costs.
    """
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
        f"loss {value.item()} at epoch {epoch}, batch {batch_idx} of loader {name!r} "
        f"(optimizer step {step})"
    )
    if mode is NonFiniteLoss.RAISE:
        raise FloatingPointError(
            f"non-finite {where}; the optimizer step was not taken. Lower the learning rate, "
            "enable clipping (PerformanceConfig(clip_grad_norm=...)), check the inputs, or set "
            "GenericTrainerConfig(nonfinite_loss='skip') to skip such steps"
        )
    logger.warning("Skipped the optimizer step: non-finite %s", where)
    return False


def require_grad(loss: torch.Tensor, name: str, batch_idx: int) -> None:
    """A loss to backpropagate must require grad (a clear error instead of autograd's)."""
    if not loss.requires_grad:
        raise ValueError(
            f"the training step's 'loss' does not require grad (loader {name!r}, batch "
            f"{batch_idx}): it was computed under torch.no_grad(), detached, or from parameters "
            "with requires_grad=False; return a loss computed from the model's output"
        )


def check_trainer_args(
    config: Any, model: Any, optimizers: Sequence[Any], schedulers: Sequence[Any]
) -> None:
    """The arguments of ``GenericTrainer(config, model, optimizers, schedulers)`` (clear errors)."""
    if not isinstance(config, GenericTrainerConfig):
        raise TypeError(f"'config' must be a GenericTrainerConfig (got {type(config).__name__})")
    if not isinstance(model, torch.nn.Module):
        raise TypeError(
            f"'model' must be a torch.nn.Module (got {type(model).__name__}); the arguments are "
            "GenericTrainer(config, model, optimizers, schedulers=None)"
        )
    check_optimizers(optimizers, schedulers)


@attrs.define(eq=False)
class WindowStepper:
    """Closes an accumulation window: the parts an optimizer step touches, and the step itself."""

    model: torch.nn.Module
    optimizers: list[torch.optim.Optimizer]
    schedulers: list[Any]
    precision: Precision
    unowned_params: list[torch.nn.Parameter]
    clip_grad_norm: float | None
    schedulers_per_step: bool
    process_group: Any = None
    _step_schedulers: list[Any] = attrs.field(init=False, factory=list)
    _plain: bool = attrs.field(init=False, default=False)

    def __attrs_post_init__(self) -> None:
        # which schedulers an optimizer step may step: none unless they step per optimizer step
        self._step_schedulers = self.schedulers if self.schedulers_per_step else []
        # nothing to unscale or clip: each optimizer's step() is called here, not by the precision
        self._plain = is_plain(self.precision) and self.clip_grad_norm is None

    def step(self, ids: Sequence[int], finite: bool, unsynced: bool) -> None:
        """Step the optimizers ``ids`` (none when the window's loss was not ``finite``), drop every
        gradient, step their schedulers; all-reduce by hand first when the window closed on a
        micro-step that ran under DDP's ``no_sync`` (``unsynced``)."""
        if unsynced:
            average_gradients(self.model, self.process_group)
        optimizers = self.optimizers
        if not finite:
            stepped: Sequence[int] = ()
        elif self._plain:
            for i in ids:
                optimizers[i].step()
            stepped = ids
        else:
            stepped = self.precision.step_optimizers(optimizers, ids, self.clip_grad_norm)
        for optimizer in optimizers:  # zero_grads, inlined: it runs every step
            optimizer.zero_grad(set_to_none=True)
        for param in self.unowned_params:
            param.grad = None
        if self._step_schedulers:
            step_schedulers(self._step_schedulers, stepped)
