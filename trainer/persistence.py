"""How a trainer's state becomes a v1 checkpoint payload and comes back from one (plain functions).

:func:`capture_payload` writes the payload from explicit parts; :func:`restore_payload` loads the
model, optimizer, scheduler and scaler states at once and hands back what must wait for ``fit()``:
the data position (this rank's; under another world size the global one every rank derives its own
from) and the RNG states, so that nothing between the load and the first
batch can disturb them. :func:`resume_source` decides which file a ``fit()`` resumes from.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
import torch
import torch.distributed as dist

from statefuldata import IncompatibleStateError, Phase
from trainer.checkpoints import (
    KEY_CONFIG_SNAPSHOT,
    KEY_DATALOADER_MANAGER,
    KEY_METRICS_HISTORY,
    KEY_RNG,
    CheckpointError,
    apply_payload,
    build_payload,
    read_checkpoint,
)
from trainer.checkpoints.manager import CheckpointManager
from trainer.compat import config_differences, describe_differences
from trainer.config import GenericTrainerConfig
from trainer.data import TrainerData
from trainer.precision import Precision
from trainer.resume import ResumeState
from trainer.rng import capture_rng_states

__all__ = [
    "KEY_RANK_STATES",
    "SKIPPED_STEPS_KEY",
    "RestoredPayload",
    "TrainerIO",
    "capture_payload",
    "check_compatible",
    "config_snapshot",
    "gather_data_state",
    "rank_data_state",
    "restore_payload",
    "resume_source",
    "saved_world_size",
]

logger = logging.getLogger(__name__)

#: Key of every rank's data state inside ``dataloader_manager_state`` under torch.distributed.
KEY_RANK_STATES = "rank_states"
#: Key of the scheduler fingerprint holding each loader's world size (files written before elastic
#: resume lack it).
KEY_WORLD_SIZES = "world_sizes"
#: ``metrics_history`` key counting the optimizer steps skipped for a non-finite loss.
SKIPPED_STEPS_KEY = "train/skipped_steps"


def _type_name(obj: Any) -> str:
    cls = type(obj)
    return f"{cls.__module__}.{cls.__qualname__}"


def config_snapshot(
    config: GenericTrainerConfig,
    data: Mapping[str, Any] | None,
    *,
    world_size: int,
    optimizers: Sequence[Any],
    schedulers: Sequence[Any],
) -> dict[str, Any]:
    """The payload's ``config_snapshot``: trainer config, data recipe, world size, optimizer types."""
    return {
        "trainer": config.to_dict(),
        "data": None if data is None else dict(data),
        "world_size": world_size,
        "optimizers": [_type_name(o) for o in optimizers],
        "schedulers": [_type_name(s) for s in schedulers],
    }


def gather_data_state(state: dict[str, Any] | None, world_size: int) -> dict[str, Any] | None:
    """Under torch.distributed: rank 0's state plus every rank's under :data:`KEY_RANK_STATES`."""
    if state is None or world_size <= 1:
        return state
    gathered: list[Any] = [None] * world_size
    dist.all_gather_object(gathered, state)
    return {**gathered[0], KEY_RANK_STATES: gathered}


def capture_payload(
    *,
    model: torch.nn.Module,
    optimizers: Sequence[torch.optim.Optimizer],
    schedulers: Sequence[Any],
    precision: Precision,
    state: ResumeState,
    data_state: dict[str, Any] | None,
    metrics_history: Mapping[str, Any],
    snapshot: Mapping[str, Any],
) -> dict[str, Any]:
    """The v1 payload of a trainer's parts as they stand (RNGs captured now)."""
    return build_payload(
        model=model,
        optimizers=optimizers,
        schedulers=schedulers,
        scaler_state=precision.state_dict(),
        rng_states=capture_rng_states(),
        dataloader_manager_state=data_state,
        resume_state=state,
        epoch=state.epoch,
        global_step=state.global_step,
        metrics_history=metrics_history,
        config_snapshot=snapshot,
    )


@attrs.frozen
class RestoredPayload:
    """What :func:`restore_payload` could not apply at once: it waits for the next ``fit()``."""

    state: ResumeState
    metrics_history: dict[str, list[list[float]]]
    data_state: dict[str, Any] | None
    rng_states: dict[str, Any] | None


def check_compatible(
    payload: Mapping[str, Any], current: Mapping[str, Any], *, strict: bool, source: str
) -> None:
    """Refuse (``strict``) or warn about a payload written under a result-changing config.

    Raises:
        IncompatibleStateError: Naming every changed field with its saved and current value.
    """
    differences = config_differences(payload[KEY_CONFIG_SNAPSHOT], current)
    if not differences:
        return
    text = describe_differences(differences)
    if strict:
        raise IncompatibleStateError(
            f"cannot resume {source}: it was written under another trainer configuration, and "
            f"resuming would not reproduce that run ({text}). Resume with the saved values, or "
            "pass PreemptionConfig(strict_resume=False) to resume anyway (the run is then no "
            "longer exact)"
        )
    logger.warning(
        "Resuming %s under a changed trainer configuration (%s): strict_resume is off, the run "
        "is no longer exact",
        source,
        text,
    )


def restore_payload(
    payload: Mapping[str, Any],
    *,
    model: torch.nn.Module,
    optimizers: Sequence[torch.optim.Optimizer],
    schedulers: Sequence[Any],
    precision: Precision,
    rank: int,
    world_size: int = 1,
) -> RestoredPayload:
    """Load model, optimizers, schedulers and scaler now; return the rest for ``fit()``."""
    state = apply_payload(
        payload,
        model=model,
        optimizers=optimizers,
        schedulers=schedulers,
        precision_or_scaler=precision,
        dataloader_manager=None,
        restore_rng=False,
    )
    state.preempted = False
    data = rank_data_state(payload, rank=rank, world_size=world_size)
    history = {k: [list(p) for p in v] for k, v in (payload[KEY_METRICS_HISTORY] or {}).items()}
    for optimizer in optimizers:
        optimizer.zero_grad(set_to_none=True)
    return RestoredPayload(state, history, data, payload[KEY_RNG])


def saved_world_size(payload: Mapping[str, Any]) -> int:
    """The world size a payload was written under (1 for files that do not say)."""
    snapshot = payload.get(KEY_CONFIG_SNAPSHOT)
    saved = snapshot.get("world_size") if isinstance(snapshot, Mapping) else None
    data = payload.get(KEY_DATALOADER_MANAGER)
    if isinstance(data, Mapping) and isinstance(data.get(KEY_RANK_STATES), list):
        return len(data[KEY_RANK_STATES])
    return saved if isinstance(saved, int) and saved >= 1 else 1


def _fingerprints_know_world_sizes(data: Mapping[str, Any]) -> bool:
    states = [data.get(phase.state_key) for phase in Phase]
    return all(
        KEY_WORLD_SIZES in state["fingerprint"]
        for state in states
        if isinstance(state, Mapping) and isinstance(state.get("fingerprint"), Mapping)
    )


def rank_data_state(
    payload: Mapping[str, Any], *, rank: int, world_size: int
) -> dict[str, Any] | None:
    """This rank's data position in a payload: its own record under the saved world size; under
    another one (elastic resume) rank 0's, whose positions are global (every saved rank holds the
    same global position; each new rank derives its own from it when the manager loads it).

    Raises:
        IncompatibleStateError: The world size changed and the file predates elastic resume.
    """
    data = payload[KEY_DATALOADER_MANAGER]
    if not isinstance(data, dict):
        return data
    saved = saved_world_size(payload)
    states = data.get(KEY_RANK_STATES)
    if saved == world_size:
        return states[rank] if isinstance(states, list) else data
    own = states[0] if isinstance(states, list) else data
    if not _fingerprints_know_world_sizes(own):
        raise IncompatibleStateError(
            f"this checkpoint was written at world size {saved} by a version without elastic "
            f"resume (its data state holds per-rank positions), and this run has world size "
            f"{world_size}; resume it with {saved} processes"
        )
    logger.info(
        "Elastic resume: the checkpoint was written at world size %d, this run has %d; every "
        "rank derives its data position from the saved global one",
        saved,
        world_size,
    )
    return {key: value for key, value in own.items() if key != KEY_RANK_STATES}


def _chosen(how: str, path: Path, payload: dict[str, Any]) -> tuple[Path, dict[str, Any]]:
    log = logger.warning if how == "Went back to" else logger.info
    log("%s %s (epoch %d, step %d)", how, path, payload["epoch"], payload["global_step"])
    return path, payload


def resume_source(
    checkpoints: CheckpointManager,
    config: GenericTrainerConfig,
    resume_from: str | Path | None,
    has_state: bool,
    interrupted: str | None = None,
) -> tuple[Path, dict[str, Any]] | None:
    """The file a ``fit()`` resumes from and its payload (read and verified once), or None to go
    on from memory or to start fresh.

    An explicit path wins. After an interruption that left memory mid-batch (while
    ``interrupted``) it is the newest valid file, which must exist. ``"latest"`` or auto-resume take
    the newest valid file unless the trainer already holds state. A fresh start into a folder that
    holds checkpoints is refused unless ``allow_overwrite``.

    Raises:
        CheckpointError: The folder holds checkpoints but none is valid.
        FileExistsError: A fresh run would overwrite another run's files.
        RuntimeError: Memory is mid-batch and there is no checkpoint to go back to.
    """
    if resume_from is not None and str(resume_from) != "latest":
        return _chosen("Resumed from", Path(resume_from), read_checkpoint(resume_from))
    if interrupted is not None:
        found = checkpoints.load_latest_valid()
        if found is None:
            raise RuntimeError(
                f"the last fit() was interrupted while {interrupted}, so the model, optimizer and "
                f"data position in memory are mid-batch, and {checkpoints.root_dir} holds no "
                "checkpoint to go back to. Build a new trainer to start over, or set "
                "CheckpointConfig(save_every_n_steps=N) so that there is one to go back to"
            )
        logger.warning("The last fit() was interrupted while %s", interrupted)
        return _chosen("Went back to", *found)
    preemption = config.preemption
    wanted = resume_from == "latest" or (preemption.auto_resume and preemption.resume_from_latest)
    if has_state or not checkpoints.has_checkpoints():
        return None
    if wanted:
        found = checkpoints.load_latest_valid()
        if found is None:
            raise CheckpointError(
                f"{checkpoints.root_dir} holds checkpoints but none is readable; refusing to "
                "train from scratch. Move the folder away to start fresh"
            )
        return _chosen("Resumed from", *found)
    if not config.checkpoint.allow_overwrite:
        raise FileExistsError(
            f"{checkpoints.root_dir} already holds checkpoints and this run starts fresh "
            "(auto-resume is off), so it would overwrite them and rotate them away. Resume them "
            "(PreemptionConfig(auto_resume=True) or fit(resume_from_checkpoint=...)), use another "
            "root_dir, or pass CheckpointConfig(allow_overwrite=True) to write there anyway"
        )
    return None


@attrs.define(eq=False)
class TrainerIO:
    """Writes a trainer's parts as a v1 payload and reads them back (one save, one restore path).

    Only rank 0 writes files; under torch.distributed every rank's data position is gathered into
    the payload and each rank restores its own.
    """

    config: GenericTrainerConfig
    model: torch.nn.Module
    optimizers: list[torch.optim.Optimizer]
    schedulers: list[Any]
    precision: Precision
    checkpoints: CheckpointManager
    data: TrainerData
    rank: int = 0
    world_size: int = 1

    def snapshot(self) -> dict[str, Any]:
        """The ``config_snapshot`` of the current configuration."""
        return config_snapshot(
            self.config,
            self.data.recipe(),
            world_size=self.world_size,
            optimizers=self.optimizers,
            schedulers=self.schedulers,
        )

    def payload(self, state: ResumeState, metrics_history: Mapping[str, Any]) -> dict[str, Any]:
        """The v1 payload as the parts stand (a collective call under torch.distributed)."""
        return capture_payload(
            model=self.model,
            optimizers=self.optimizers,
            schedulers=self.schedulers,
            precision=self.precision,
            state=state,
            data_state=gather_data_state(self.data.state(), self.world_size),
            metrics_history=metrics_history,
            snapshot=self.snapshot(),
        )

    def deferrable(self) -> list[torch.Tensor]:
        """The tensors only an optimizer step changes: parameters and optimizer state."""
        tensors: list[torch.Tensor] = list(self.model.parameters())
        for optimizer in self.optimizers:
            for state in optimizer.state.values():
                tensors.extend(v for v in state.values() if isinstance(v, torch.Tensor))
        return tensors

    def write(
        self,
        payload: Mapping[str, Any],
        state: ResumeState,
        metrics: Mapping[str, float],
        defer: bool = False,
    ) -> Path | None:
        """Rank 0 writes ``payload`` through the checkpoint manager; every rank waits for it.

        ``defer``: an asynchronous save may copy :meth:`deferrable` after it returns (the caller
        calls ``checkpoints.wait_snapshot()`` before the next optimizer step).
        """
        path, checkpoint = None, self.config.checkpoint
        if self.rank == 0 and checkpoint.async_save:
            path = self.checkpoints.write_payload_async(
                payload,
                epoch=state.epoch,
                global_step=state.global_step,
                metrics=metrics,
                defer=self.deferrable() if defer and checkpoint.defer_snapshot else (),
            )
        elif self.rank == 0:
            path = self.checkpoints.write_payload(
                payload, epoch=state.epoch, global_step=state.global_step, metrics=metrics
            )
        if self.world_size > 1:
            dist.barrier()
        return path

    def restore(self, payload: Mapping[str, Any], source: str) -> RestoredPayload:
        """Check the payload against the configuration, load it, return what waits for fit()."""
        strict = self.config.preemption.strict_resume
        check_compatible(payload, self.snapshot(), strict=strict, source=source)
        restored = restore_payload(
            payload,
            model=self.model,
            optimizers=self.optimizers,
            schedulers=self.schedulers,
            precision=self.precision,
            rank=self.rank,
            world_size=self.world_size,
        )
        self.data.pending = restored.data_state
        return restored
