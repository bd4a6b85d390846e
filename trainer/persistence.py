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

from statefuldata import DataLoaderManager, PipelineSpec
from trainer.checkpoints import CheckpointError, apply_payload, build_payload, read_checkpoint
from trainer.resume import ResumeState
from trainer.rng import capture_rng_states

__all__ = ["KEY_RANK_STATES", "Persistence"]

logger = logging.getLogger(__name__)


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


KEY_RANK_STATES = "rank_states"


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
        if previous is not None and self._has_state and self._pending_data is None:
            self._pending_data = previous.state_dict()  # continue in memory with new loader objects
            self._epoch_iter = None
        self._manager, self._sources = manager, (id(train), id(val))
        self._snapshot = manager.config_snapshot
        return manager

    def _resume(self, resume_from: str | Path | None) -> None:
        if resume_from is not None and str(resume_from) != "latest":
            self.restore_from_payload(read_checkpoint(resume_from))
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
                self.restore_from_payload(read_checkpoint(path))
                logger.info(
                    "Resumed from %s (epoch %d, step %d)",
                    path,
                    self.state.epoch,
                    self.state.global_step,
                )
        assert self._manager is not None
        if self._pending_data is not None:
            data = self._pending_data
            if KEY_RANK_STATES in data:
                data = data[KEY_RANK_STATES][self.rank]
            self._manager.load_state_dict(data)
            self._pending_data, self._epoch_iter = None, None

    def _data_state(self) -> dict[str, Any] | None:
        if self._manager is None:
            return self._pending_data
        state = self._manager.state_dict()
        if self.world_size > 1:
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
        return {"trainer": self.config.to_dict(), "data": data, "world_size": self.world_size}

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

    def restore_from_payload(self, payload: dict[str, Any]) -> ResumeState:
        """Load a v1 payload; the data position and RNGs take effect at the next ``fit()``."""
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
        self._pending_data = payload["dataloader_manager_state"]
        self._pending_rng = payload["rng_states"]
        self._epoch_iter, self._inflight = None, None
        self._window, self._window_losses = set(), []
        self._has_state = True
        for optimizer in self.optimizers:
            optimizer.zero_grad(set_to_none=True)
        return self.state

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
        self.last_checkpoint, self._saved_at = path, self.state.global_step
        for callback in self.callbacks:
            callback.on_checkpoint(self, path)
        return path
