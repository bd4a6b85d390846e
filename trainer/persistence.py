"""How a :class:`~trainer.GenericTrainer` becomes a v1 checkpoint and comes back from one.

The trainer's state is written from one place (:meth:`Persistence.checkpoint_payload`) and read in
one place (:meth:`Persistence.restore_from_payload`); the data position and the RNG states of a
restored payload wait until ``fit()`` has built its data pipeline, so nothing between the load and
the first batch can disturb them.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch.distributed as dist

from statefuldata import DataLoaderManager, IncompatibleStateError, PipelineSpec
from trainer.checkpoints import CheckpointError, apply_payload, build_payload, read_checkpoint
from trainer.compat import config_differences, describe_differences
from trainer.inflight import LoopState
from trainer.resume import ResumeState
from trainer.rng import capture_rng_states

__all__ = ["KEY_RANK_STATES", "Persistence"]

logger = logging.getLogger(__name__)


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


KEY_RANK_STATES = "rank_states"
SKIPPED_STEPS_KEY = "train/skipped_steps"


def _type_name(obj: Any) -> str:
    cls = type(obj)
    return f"{cls.__module__}.{cls.__qualname__}"


class Persistence:
    """Data adoption, resume and checkpoint methods of :class:`~trainer.GenericTrainer`."""

    def _adopt_data(self, train: Any, val: Any) -> DataLoaderManager:
        if self._manager is not None and self._sources == (id(train), id(val)):
            return self._manager
        previous = self._manager
        if isinstance(train, DataLoaderManager):
            manager = train
        elif isinstance(train, PipelineSpec):
            manager = train.build()
        else:
            manager = DataLoaderManager(
                _as_list(train),
                _as_list(val) or None,
                train_config=self.config.train_loader_config,
                val_config=self.config.val_loader_config,
            )
        names = manager.names("train")
        for field, values in (
            ("loss_weights_per_loader", self.config.loss_weights_per_loader),
            ("per_loader_optimizer_id", self.config.per_loader_optimizer_id),
        ):
            if values is not None and len(values) != len(names):
                raise ValueError(
                    f"'{field}' has {len(values)} entries for {len(names)} train loaders {list(names)}; "
                    "give one per loader"
                )
        ids = self.config.per_loader_optimizer_id or ()
        if any(i >= len(self.optimizers) for i in ids):
            raise ValueError(
                f"'per_loader_optimizer_id' {list(ids)} names an optimizer >= {len(self.optimizers)} "
                "(the number of optimizers given)"
            )
        if previous is not None:
            if self._has_state and self._pending_data is None:
                self._pending_data = previous.state_dict()  # continue with new loader objects
            self._loop.epoch_iter = None
            previous.close()
        self._manager, self._sources = manager, (id(train), id(val))
        self._snapshot = manager.config_snapshot
        return manager

    def _recover_or_resume(self, resume_from: str | Path | None) -> None:
        """Go back to the last checkpoint when an interruption left memory mid-batch, else resume."""
        dirty = self._loop.dirty
        if dirty is not None:
            path = self.checkpoints.find_latest_valid()
            if path is None:
                raise RuntimeError(
                    f"the last fit() was interrupted while {dirty.value}, so the model, optimizer "
                    f"and data position in memory are mid-batch, and {self.checkpoints.root_dir} "
                    "holds no checkpoint to go back to. Build a new trainer to start over, or set "
                    "CheckpointConfig(save_every_n_steps=N) so that there is one to go back to"
                )
            self.restore_from_payload(read_checkpoint(path), source=str(path))
            logger.warning(
                "The last fit() was interrupted while %s; went back to %s (epoch %d, step %d) to "
                "continue exactly",
                dirty.value,
                path,
                self.state.epoch,
                self.state.global_step,
            )
        self._resume(resume_from)
        self.state.preempted = False

    def _resume(self, resume_from: str | Path | None) -> None:
        if resume_from is not None and str(resume_from) != "latest":
            self.restore_from_payload(read_checkpoint(resume_from), source=str(resume_from))
            logger.info("Resumed from %s", resume_from)
        elif not self._has_state and (
            resume_from == "latest"
            or (self.config.preemption.auto_resume and self.config.preemption.resume_from_latest)
        ):
            if self.checkpoints.has_checkpoints():
                path = self.checkpoints.find_latest_valid()
                if path is None:
                    raise CheckpointError(
                        f"{self.checkpoints.root_dir} holds checkpoints but none is readable; "
                        "refusing to train from scratch. Move the folder away to start fresh"
                    )
                self.restore_from_payload(read_checkpoint(path), source=str(path))
                logger.info(
                    "Resumed from %s (epoch %d, step %d)",
                    path,
                    self.state.epoch,
                    self.state.global_step,
                )
        if (
            not self._has_state
            and self.checkpoints.has_checkpoints()
            and not self.config.checkpoint.allow_overwrite
        ):
            raise FileExistsError(
                f"{self.checkpoints.root_dir} already holds checkpoints and this run starts fresh "
                "(auto-resume is off), so it would overwrite them and rotate them away. Resume them "
                "(PreemptionConfig(auto_resume=True) or fit(resume_from_checkpoint=...)), use "
                "another root_dir, or pass CheckpointConfig(allow_overwrite=True) to write there "
                "anyway"
            )
        assert self._manager is not None
        if self._pending_data is not None:
            self._manager.load_state_dict(self._pending_data)
            self._pending_data, self._loop.epoch_iter = None, None

    def _park_data(self, manager: DataLoaderManager) -> None:
        """Stop the loaders' worker processes, keeping every position (fit() is over)."""
        manager.release_workers()

    def _data_state(self) -> dict[str, Any] | None:
        if self._pending_data is not None or self._manager is None:
            state = self._pending_data
        else:
            state = self._manager.state_dict()
        if state is not None and self.world_size > 1:
            gathered: list[Any] = [None] * self.world_size
            dist.all_gather_object(gathered, state)
            state = {**gathered[0], KEY_RANK_STATES: gathered}
        return state

    def _config_snapshot(self) -> dict[str, Any]:
        data = self._snapshot
        if data is None and self._manager is not None:
            data = {
                phase: self._manager.fingerprint(phase)
                for phase in ("train", "val")
                if self._manager.has_phase(phase)
            }
        return {
            "trainer": self.config.to_dict(),
            "data": data,
            "world_size": self.world_size,
            "optimizers": [_type_name(o) for o in self.optimizers],
            "schedulers": [_type_name(s) for s in self.schedulers],
        }

    def checkpoint_payload(self) -> dict[str, Any]:
        """The v1 checkpoint dict of the trainer as it stands (used by ``save_checkpoint``)."""
        return build_payload(
            model=self.model,
            optimizers=self.optimizers,
            schedulers=self.schedulers,
            scaler_state=self.precision.state_dict(),
            rng_states=capture_rng_states(),
            dataloader_manager_state=self._data_state(),
            resume_state=self.state,
            epoch=self.state.epoch,
            global_step=self.state.global_step,
            metrics_history=self.metrics_history,
            config_snapshot=self._config_snapshot(),
        )

    def restore_from_payload(
        self, payload: dict[str, Any], *, source: str = "the checkpoint"
    ) -> ResumeState:
        """Load a v1 payload; the data position and RNGs take effect at the next ``fit()``.

        Raises:
            IncompatibleStateError: The payload was written under a trainer configuration that
                changes the result (see :mod:`trainer.compat`) and ``strict_resume`` is on.
        """
        self._check_compatible(payload, source)
        self.state = apply_payload(
            payload,
            model=self.model,
            optimizers=self.optimizers,
            schedulers=self.schedulers,
            precision_or_scaler=self.precision,
            dataloader_manager=None,
            restore_rng=False,
        )
        self.state.preempted = False
        self.metrics_history = {
            k: [list(p) for p in v] for k, v in (payload["metrics_history"] or {}).items()
        }
        data = payload["dataloader_manager_state"]
        if isinstance(data, dict) and KEY_RANK_STATES in data:
            data = data[KEY_RANK_STATES][self.rank]
        self._pending_data = data
        self._pending_rng = payload["rng_states"]
        skipped = self.metrics_history.get(SKIPPED_STEPS_KEY)
        self._loop = LoopState(skipped_steps=int(skipped[-1][1]) if skipped else 0)
        self._has_state = True
        for optimizer in self.optimizers:
            optimizer.zero_grad(set_to_none=True)
        return self.state

    def _check_compatible(self, payload: dict[str, Any], source: str) -> None:
        differences = config_differences(payload["config_snapshot"], self._config_snapshot())
        if not differences:
            return
        text = describe_differences(differences)
        if self.config.preemption.strict_resume:
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

    def save(self, reason: str = "manual") -> Path | None:
        """Write a checkpoint now (rank 0 writes; every rank's data position goes in the file)."""
        self.state.save_reason = reason
        payload = self.checkpoint_payload()
        path = None
        if self.rank == 0:
            path = self.checkpoints.write_payload(
                payload,
                epoch=self.state.epoch,
                global_step=self.state.global_step,
                metrics=self.latest_metrics(),
            )
        if self.world_size > 1:
            dist.barrier()
        self.last_checkpoint, self._loop.saved_at = path, self.state.global_step
        for callback in self.callbacks:
            callback.on_checkpoint(self, path)
        return path
