"""How ``fit()`` ended: :class:`FitStatus` and :class:`FitResult`."""

from __future__ import annotations

import enum
from pathlib import Path

import attrs

from trainer.validators import to_enum

__all__ = ["FitResult", "FitStatus"]


class FitStatus(str, enum.Enum):
    """Why ``fit()`` returned; compares equal to its string value (``FitStatus.COMPLETED == "completed"``)."""

    COMPLETED = "completed"
    PREEMPTED = "preempted"
    ALREADY_COMPLETE = "already_complete"

    def __str__(self) -> str:
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)


@attrs.frozen
class FitResult:
    """How ``fit()`` ended: its ``status`` (a :class:`FitStatus` value, kept a plain str so that it
    pickles and saves anywhere, ``torch.load(weights_only=True)`` included), where training stands,
    the last file and the latest metrics.

    Example:
        >>> result = FitResult(FitStatus.PREEMPTED, epoch=1, global_step=40)
        >>> result.status == FitStatus.PREEMPTED == "preempted", type(result.status).__name__
        (True, 'str')
    """

    status: str = attrs.field(converter=lambda value: to_enum(FitStatus, value, "status").value)
    epoch: int
    global_step: int
    checkpoint_path: Path | None = None
    metrics: dict[str, float] = attrs.field(factory=dict)
