"""ResumeState: where the training loop stands, stored as a plain dict in the checkpoint.

Checkpoints are taken only at optimizer-step boundaries, so ``micro_step`` is normally 0; it is
stored so that a checkpoint taken elsewhere is detected rather than silently misread.

Example:
    >>> state = ResumeState(epoch=2, global_step=150, batch_in_epoch=30)
    >>> ResumeState.from_dict(state.to_dict()) == state
    True
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import Any

import attrs

from trainer.validators import int_at_least, to_enum

__all__ = ["ResumePhase", "ResumeState", "SaveReason"]


class ResumePhase(enum.Enum):
    """The part of the loop a checkpoint was taken in."""

    TRAIN = "train"
    VAL = "val"
    DONE = "done"


class SaveReason(str, enum.Enum):
    """Why a checkpoint was written: ``resume_state["save_reason"]``, saved as its plain string
    value. Compares equal to that value (``SaveReason.STEP == "step"``)."""

    UNSET = ""  #: a ResumeState not (yet) written by the trainer
    STEP = "step"  #: every ``save_every_n_steps`` optimizer steps
    EPOCH_END = "epoch_end"  #: every ``save_every_n_epochs`` epochs
    PREEMPTED = "preempted"  #: a preemption signal was agreed
    MANUAL = "manual"  #: ``GenericTrainer.save()`` called directly
    LEGACY = "legacy"  #: migrated from a legacy (pre-v1) file

    def __str__(self) -> str:
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)


def _to_reason(value: Any) -> Any:
    """A known reason as its member; another str (a reason of a newer trainer) is kept as is."""
    if isinstance(value, str):
        try:
            return SaveReason(value)
        except ValueError:
            return str(value)
    return value  # refused by the validator, which names the type


def _check_reason(_instance: Any, _attribute: Any, value: Any) -> None:
    """``save_reason`` is a str (a SaveReason member is one); used at init and on assignment."""
    if not isinstance(value, str):
        raise TypeError(f"'save_reason' must be {str!r} (got {value!r} that is a {type(value)!r}).")


def _count() -> Any:
    return attrs.field(default=0, validator=int_at_least(0))


def _flag() -> Any:
    return attrs.field(default=False, validator=attrs.validators.instance_of(bool))


@attrs.define(kw_only=True, on_setattr=attrs.setters.NO_OP, repr=False)  # validated at init, load
class ResumeState:
    """The loop position saved in every checkpoint (``resume_state`` in format v1).

    Attributes:
        phase: ``"train"``, ``"val"`` or ``"done"``.
        epoch: The epoch to resume in (0-based). A checkpoint at the end of epoch E records E + 1.
        global_step: Optimizer steps taken so far.
        batch_in_epoch: Training batches consumed in ``epoch``.
        micro_step: Position in the gradient-accumulation window (0 at a step boundary).
        optimizer_steps_in_epoch: Optimizer steps taken in ``epoch``.
        preempted: The checkpoint was written because of a preemption signal.
        completed: Training had finished (``max_epochs`` reached) when it was written.
        save_reason: Why it was written, a :class:`SaveReason` (``"step"``, ``"epoch_end"``,
            ``"preempted"``, ``"manual"``, ``"legacy"``; ``""`` before any save). A string that no
            member has (written by another trainer version) is kept as it is.

    State keys (``to_dict``): the attribute names above; ``phase`` and ``save_reason`` are stored
    as their plain string values.

    The loop bumps the counters every batch, so assigning one is a plain attribute write (no
    attrs hook); construction and :meth:`from_dict` validate every field. ``phase`` and
    ``save_reason`` are properties that convert (and refuse) on assignment too.
    """

    _phase: ResumePhase = attrs.field(
        default=ResumePhase.TRAIN, converter=lambda v: to_enum(ResumePhase, v, "phase")
    )
    epoch: int = _count()
    global_step: int = _count()
    batch_in_epoch: int = _count()
    micro_step: int = _count()
    optimizer_steps_in_epoch: int = _count()
    preempted: bool = _flag()
    completed: bool = _flag()
    _save_reason: str = attrs.field(  # a SaveReason member, or a str no member has
        default="", converter=_to_reason, validator=_check_reason
    )

    @property
    def phase(self) -> ResumePhase:
        """The part of the loop (a :class:`ResumePhase`; a plain value is converted)."""
        return self._phase

    @phase.setter
    def phase(self, value: ResumePhase | str) -> None:
        self._phase = to_enum(ResumePhase, value, "phase")

    @property
    def save_reason(self) -> str:
        """Why the state was written (a :class:`SaveReason`, or a str no member has)."""
        return self._save_reason

    @save_reason.setter
    def save_reason(self, value: SaveReason | str) -> None:
        reason = _to_reason(value)
        _check_reason(self, None, reason)
        self._save_reason = reason

    def __repr__(self) -> str:
        fields = ", ".join(f"{a.alias}={getattr(self, a.name)!r}" for a in attrs.fields(type(self)))
        return f"{type(self).__name__}({fields})"

    @classmethod
    def keys(cls) -> tuple[str, ...]:
        """The keys of :meth:`to_dict`, in order."""
        return tuple(a.alias for a in attrs.fields(cls))

    def to_dict(self) -> dict[str, Any]:
        """Return the state as a plain dict (str, int, bool values only)."""
        out = {a.alias: getattr(self, a.name) for a in attrs.fields(type(self))}
        out["phase"] = self._phase.value
        reason = self._save_reason
        out["save_reason"] = reason.value if isinstance(reason, SaveReason) else str(reason)
        return out

    @classmethod
    def from_dict(cls, state: Mapping[str, Any]) -> ResumeState:
        """Build a ResumeState from :meth:`to_dict` output, strictly.

        Raises:
            ValueError: A key is missing or unknown (both lists are printed).
        """
        if isinstance(state, ResumeState):
            return attrs.evolve(state)
        if not isinstance(state, Mapping):
            raise TypeError(
                f"resume_state must be a dict made by ResumeState.to_dict() (got {type(state).__name__})"
            )
        expected = cls.keys()
        missing = [k for k in expected if k not in state]
        unknown = sorted(str(k) for k in state if k not in expected)
        if missing or unknown:
            raise ValueError(
                f"resume_state does not match ResumeState: missing keys {missing}, unknown keys "
                f"{unknown} (expected {list(expected)}, got {sorted(map(str, state))}); the "
                "checkpoint was written by another version of trainer: resume it with that "
                "version, or rebuild the dict with ResumeState(...).to_dict()"
            )
        return cls(**{k: state[k] for k in expected})
