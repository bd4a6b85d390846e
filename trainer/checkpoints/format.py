"""Checkpoint format v1: the payload's layout, building it from a trainer's parts and applying it.

One checkpoint is one dict with exactly the keys of :data:`V1_KEYS` (see ``FORMAT.md`` beside this
module). It holds only plain types and tensors, so it loads with ``torch.load(weights_only=True)``.
:class:`CheckpointPayload` is the record of one payload: :meth:`CheckpointPayload.from_dict` is
strict (a missing or unknown key, another format version), :meth:`CheckpointPayload.to_dict` is
what goes to disk.

Example:
    >>> sorted(CheckpointPayload.keys())[:3]
    ['amp_scaler_state', 'choice_rng_state', 'config_snapshot']
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any

import attrs
import torch

from trainer.checkpoints.errors import CheckpointError
from trainer.precision import Precision, _load_scaler_state
from trainer.resume import ResumeState
from trainer.rng import restore_rng_states
from trainer.validators import as_list

__all__ = [
    "FORMAT_VERSION",
    "MANAGER_CHOICE_RNG_KEY",
    "V1_KEYS",
    "CheckpointPayload",
    "apply_payload",
    "build_payload",
    "scaler_state_of",
]

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1

KEY_FORMAT_VERSION = "format_version"
KEY_MULTI_DATALOADER_ONLY = "is_multi_dataloader_only"
KEY_SAVE_TIMESTAMP = "save_timestamp"
KEY_EPOCH = "epoch"
KEY_GLOBAL_STEP = "global_step"
KEY_MODEL = "model_state_dict"
KEY_OPTIMIZERS = "optimizer_state_dicts"
KEY_SCHEDULERS = "scheduler_state_dicts"
KEY_SCALER = "amp_scaler_state"
KEY_RNG = "rng_states"
KEY_DATALOADER_MANAGER = "dataloader_manager_state"
KEY_CHOICE_RNG = "choice_rng_state"
KEY_RESUME = "resume_state"
KEY_METRICS_HISTORY = "metrics_history"
KEY_CONFIG_SNAPSHOT = "config_snapshot"

V1_KEYS = (
    KEY_FORMAT_VERSION,
    KEY_MULTI_DATALOADER_ONLY,
    KEY_SAVE_TIMESTAMP,
    KEY_EPOCH,
    KEY_GLOBAL_STEP,
    KEY_MODEL,
    KEY_OPTIMIZERS,
    KEY_SCHEDULERS,
    KEY_SCALER,
    KEY_RNG,
    KEY_DATALOADER_MANAGER,
    KEY_CHOICE_RNG,
    KEY_RESUME,
    KEY_METRICS_HISTORY,
    KEY_CONFIG_SNAPSHOT,
)

#: Key of the manager's choice RNG inside ``dataloader_manager_state``; the top-level
#: ``choice_rng_state`` is copied from it (one source, no second capture).
MANAGER_CHOICE_RNG_KEY = "choice_rng"


def scaler_state_of(scaler: Any) -> dict[str, Any] | None:
    """The state to save for ``scaler``: a GradScaler's (None when disabled), a dict as given."""
    if scaler is None or isinstance(scaler, Mapping):
        return None if scaler is None else dict(scaler)
    if isinstance(scaler, torch.amp.GradScaler) and not scaler.is_enabled():
        return None
    return scaler.state_dict()


def build_payload(
    *,
    model: torch.nn.Module,
    optimizers: Sequence[torch.optim.Optimizer] | torch.optim.Optimizer | None,
    schedulers: Sequence[Any] | Any | None,
    scaler_state: Mapping[str, Any] | None,
    rng_states: Mapping[str, Any] | None,
    dataloader_manager_state: Mapping[str, Any] | None,
    resume_state: ResumeState | Mapping[str, Any],
    epoch: int,
    global_step: int,
    metrics_history: Mapping[str, Any] | None = None,
    config_snapshot: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Return the v1 payload: a dict with exactly the keys of :data:`V1_KEYS`.

    ``choice_rng_state`` is taken from ``dataloader_manager_state["choice_rng"]`` (None without a
    data manager state).
    """
    if isinstance(resume_state, ResumeState):
        resume = resume_state.to_dict()
    else:
        resume = ResumeState.from_dict(resume_state).to_dict()
    manager_state = None if dataloader_manager_state is None else dict(dataloader_manager_state)
    choice = None if manager_state is None else manager_state.get(MANAGER_CHOICE_RNG_KEY)
    return {
        KEY_FORMAT_VERSION: FORMAT_VERSION,
        KEY_MULTI_DATALOADER_ONLY: True,
        KEY_SAVE_TIMESTAMP: time.time(),
        KEY_EPOCH: int(epoch),
        KEY_GLOBAL_STEP: int(global_step),
        KEY_MODEL: model.state_dict(),
        KEY_OPTIMIZERS: [o.state_dict() for o in as_list(optimizers)],
        KEY_SCHEDULERS: [s.state_dict() for s in as_list(schedulers)],
        KEY_SCALER: None if scaler_state is None else dict(scaler_state),
        KEY_RNG: None if rng_states is None else dict(rng_states),
        KEY_DATALOADER_MANAGER: manager_state,
        KEY_CHOICE_RNG: choice,
        KEY_RESUME: resume,
        KEY_METRICS_HISTORY: None if metrics_history is None else dict(metrics_history),
        KEY_CONFIG_SNAPSHOT: None if config_snapshot is None else dict(config_snapshot),
    }


def _check_count(kind: str, saved: Sequence[Any], given: Sequence[Any]) -> None:
    if len(saved) != len(given):
        raise ValueError(
            f"The checkpoint holds {len(saved)} {kind} state(s) but {len(given)} {kind}(s) were "
            f"given; pass the same {kind}s, in the same order, as the run that saved it"
        )


def _storages(obj: Any) -> set[int]:
    if isinstance(obj, torch.Tensor):
        return {obj.untyped_storage().data_ptr()} if obj.numel() else set()
    if isinstance(obj, Mapping):
        obj = list(obj.values())
    if isinstance(obj, (list, tuple)):
        return set().union(*map(_storages, obj)) if obj else set()
    return set()


def _own_state(optimizer: torch.optim.Optimizer, loaded: Mapping[str, Any]) -> None:
    """Copy the optimizer's state tensors that are the loaded payload's own tensors.

    ``Optimizer.load_state_dict`` keeps the payload's tensors when dtype and device already match;
    for a memory-mapped file these are views of its pages, which would keep the file mapped (and
    its disk space held after rotation) for the whole run and be copied page by page on the first
    step. One copy now, like a non-mapped load makes.
    """
    shared = _storages(loaded.get("state", {}))
    if not shared:
        return
    for state in optimizer.state.values():
        for key, value in state.items():
            if isinstance(value, torch.Tensor) and value.untyped_storage().data_ptr() in shared:
                state[key] = value.clone()


def apply_payload(
    payload: Mapping[str, Any],
    *,
    model: torch.nn.Module,
    optimizers: Sequence[torch.optim.Optimizer] | torch.optim.Optimizer | None,
    schedulers: Sequence[Any] | Any | None,
    precision_or_scaler: Precision | torch.amp.GradScaler | None = None,
    dataloader_manager: Any = None,
    restore_rng: bool = True,
    strict: bool = True,
) -> ResumeState:
    """Restore model, optimizers, schedulers, scaler, data position and RNGs from a v1 payload.

    Counts are checked before anything is changed. RNGs are restored last.

    Args:
        payload: A dict from :func:`read_checkpoint` or :func:`build_payload`.
        model: Loaded with ``strict=True``.
        optimizers: As many as the payload holds, same order.
        schedulers: As many as the payload holds, same order.
        precision_or_scaler: A :class:`Precision`, a ``GradScaler`` or None.
        dataloader_manager: Anything with ``load_state_dict``; gets ``dataloader_manager_state``.
        restore_rng: Restore Python, numpy and torch RNGs from ``rng_states``.
        strict: Raise when the payload holds a scaler state and there is no scaler to take it.

    Returns:
        The payload's :class:`ResumeState`.

    Raises:
        ValueError: Counts differ, the scaler state has nowhere to go, or ``resume_state`` or
            ``rng_states`` is malformed.
    """
    optimizers, schedulers = as_list(optimizers), as_list(schedulers)
    _check_count("optimizer", payload[KEY_OPTIMIZERS], optimizers)
    _check_count("scheduler", payload[KEY_SCHEDULERS], schedulers)
    resume = ResumeState.from_dict(payload[KEY_RESUME])
    model.load_state_dict(payload[KEY_MODEL])
    for optimizer, state in zip(optimizers, payload[KEY_OPTIMIZERS], strict=True):
        optimizer.load_state_dict(state)
        _own_state(optimizer, state)
    for scheduler, state in zip(schedulers, payload[KEY_SCHEDULERS], strict=True):
        scheduler.load_state_dict(state)
    if isinstance(precision_or_scaler, Precision):
        precision_or_scaler.load_state_dict(payload[KEY_SCALER], strict=strict)
    else:
        _load_scaler_state(
            precision_or_scaler, payload[KEY_SCALER], strict=strict, owner="the given scaler"
        )
    if dataloader_manager is not None:
        manager_state = payload[KEY_DATALOADER_MANAGER]
        if manager_state is None:
            raise ValueError(
                "The checkpoint holds no dataloader_manager_state (got None), so the data "
                "position cannot be restored; pass dataloader_manager=None to start its epoch from "
                "the beginning"
            )
        dataloader_manager.load_state_dict(manager_state)
    if restore_rng and payload[KEY_RNG] is not None:
        restore_rng_states(payload[KEY_RNG])
    return resume


@attrs.frozen
class CheckpointPayload:
    """One v1 payload: every field of :data:`V1_KEYS`, all of them written and restored."""

    format_version: int
    is_multi_dataloader_only: bool
    save_timestamp: float
    epoch: int
    global_step: int
    model_state_dict: dict[str, Any]
    optimizer_state_dicts: list[Any]
    scheduler_state_dicts: list[Any]
    amp_scaler_state: dict[str, Any] | None
    rng_states: dict[str, Any] | None
    dataloader_manager_state: dict[str, Any] | None
    choice_rng_state: Any
    resume_state: dict[str, Any]
    metrics_history: dict[str, Any] | None
    config_snapshot: dict[str, Any] | None

    @classmethod
    def keys(cls) -> tuple[str, ...]:
        return tuple(f.name for f in attrs.fields(cls))

    @classmethod
    def from_dict(
        cls, payload: Mapping[str, Any], *, source: str = "the payload"
    ) -> CheckpointPayload:
        """The record of ``payload``, strictly: the format version and every key must match.

        Raises:
            ValueError: ``format_version`` is newer than this library reads.
            CheckpointError: Another version, or a missing or unknown key (both lists printed).
        """
        version = payload.get(KEY_FORMAT_VERSION)
        if type(version) is int and version > FORMAT_VERSION:
            raise ValueError(
                f"Checkpoint {source} has format_version {version}, but this library supports up "
                f"to format_version {FORMAT_VERSION}; upgrade trainer to a version that reads "
                f"format {version}"
            )
        if type(version) is not int or version != FORMAT_VERSION:
            raise CheckpointError(
                f"Checkpoint {source} has format_version {version!r}; expected {FORMAT_VERSION}"
            )
        missing = [k for k in V1_KEYS if k not in payload]
        unknown = sorted(str(k) for k in payload if k not in V1_KEYS)
        if missing or unknown:
            raise CheckpointError(
                f"Checkpoint {source} is not a valid format v1 payload: missing keys {missing}, "
                f"unknown keys {unknown}; it was not written by trainer.checkpoints, resume from "
                "another one"
            )
        return cls(**{k: payload[k] for k in V1_KEYS})

    def to_dict(self) -> dict[str, Any]:
        """The payload as saved: a plain dict with exactly the keys of :data:`V1_KEYS`."""
        return {k: getattr(self, k) for k in V1_KEYS}
