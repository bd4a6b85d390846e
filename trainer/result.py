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
    """How ``fit()`` ended: its ``status`` (a :class:`FitStatus`, which is a str: it compares, prints
    and JSON-encodes as its value), where training stands, the last file and the latest metrics.

    Example:
        >>> result = FitResult("preempted", epoch=1, global_step=40)
        >>> result.status is FitStatus.PREEMPTED and result.status == "preempted"
        True
    """

    status: FitStatus = attrs.field(converter=lambda value: to_enum(FitStatus, value, "status"))
    epoch: int
    global_step: int
    checkpoint_path: Path | None = None
    metrics: dict[str, float] = attrs.field(factory=dict)
