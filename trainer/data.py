"""The trainer's data: one :class:`~statefuldata.DataLoaderManager` built from what ``fit()`` is given."""

from __future__ import annotations

from typing import Any

import attrs

from statefuldata import DataLoaderManager, Phase, PipelineSpec
from trainer.config import GenericTrainerConfig
from trainer.validators import as_list

__all__ = ["SNAPSHOT_CAP", "TrainerData", "as_list", "build_manager", "check_loader_options"]


def build_manager(train: Any, val: Any, config: GenericTrainerConfig) -> DataLoaderManager:
    """A manager as given, built from a :class:`~statefuldata.PipelineSpec`, or over loaders."""
    if isinstance(train, DataLoaderManager):
        return train
    if isinstance(train, PipelineSpec):
        return train.build()
    return DataLoaderManager(
        as_list(train),
        as_list(val) or None,
        train_config=config.train_loader_config,
        val_config=config.val_loader_config,
    )


def check_loader_options(
    names: tuple[str, ...], config: GenericTrainerConfig, num_optimizers: int
) -> None:
    """The per-loader options of ``config`` fit the train loaders and the optimizers given."""
    for field, values in (
        ("loss_weights_per_loader", config.loss_weights_per_loader),
        ("per_loader_optimizer_id", config.per_loader_optimizer_id),
    ):
        if values is not None and len(values) != len(names):
            raise ValueError(
                f"'{field}' has {len(values)} entries for {len(names)} train loaders {list(names)}; "
                "give one per loader"
            )
    ids = config.per_loader_optimizer_id or ()
    if any(i >= num_optimizers for i in ids):
        raise ValueError(
            f"'per_loader_optimizer_id' {list(ids)} names an optimizer >= {num_optimizers} "
            "(the number of optimizers given)"
        )


SNAPSHOT_CAP = 100  # batches between worker snapshots when no step checkpoints are configured


@attrs.define(eq=False)
class TrainerData:
    """The trainer's data pipeline and the data position waiting to be applied to it.

    ``pending`` is a restored (or carried-over) position for the next ``fit()``: it is loaded into
    the manager once the pipeline is built, so nothing between a load and the first batch moves it.
    """

    config: GenericTrainerConfig
    manager: DataLoaderManager | None = None
    sources: tuple[int, int] | None = None
    snapshot: dict[str, Any] | None = None
    pending: dict[str, Any] | None = None

    def adopt(
        self, train: Any, val: Any, *, num_optimizers: int, keep_position: bool
    ) -> tuple[DataLoaderManager, bool]:
        """The manager for these loaders (the same one for the same objects) and whether it is new.

        A replaced manager is closed; with ``keep_position`` its position carries over.
        """
        if self.manager is not None and self.sources == (id(train), id(val)):
            return self.manager, False
        manager = build_manager(train, val, self.config)
        check_loader_options(manager.names("train"), self.config, num_optimizers)
        if manager.epoch_length("train") == 0:
            raise ValueError(
                f"the train epoch has 0 steps (train_loader_config "
                f"{manager.fingerprint('train')['config']}), so fit() would 'complete' without "
                "training; set steps_per_epoch >= 1 or use loaders with at least one batch"
            )
        previous = self.manager
        if previous is not None:
            if keep_position and self.pending is None:
                self.pending = previous.state_dict()
            previous.close()
        self.manager, self.sources = manager, (id(train), id(val))
        self.snapshot = manager.config_snapshot
        return manager, True

    def apply_pending(self) -> bool:
        """Load the pending position into the manager; whether there was one."""
        if self.pending is None or self.manager is None:
            return False
        restart = self.config.preemption.restart_incompatible_sources
        self.manager.load_state_dict(self.pending, restart_incompatible_sources=restart)
        self.pending = None
        return True

    def state(self) -> dict[str, Any] | None:
        """This process's data position: the pending one, else the manager's."""
        if self.pending is not None or self.manager is None:
            return self.pending
        return self.manager.state_dict()

    def recipe(self) -> dict[str, Any] | None:
        """The data part of ``config_snapshot``: the pipeline spec, else the fingerprints."""
        manager = self.manager
        if self.snapshot is not None or manager is None:
            return self.snapshot
        return {p.value: manager.fingerprint(p) for p in Phase if manager.has_phase(p)}

    def set_snapshot_cadence(self) -> None:
        """Worker snapshots at the checkpoint cadence instead of every batch, where they cost.

        A loader whose state is current at every step without them (``snapshots_free``: a
        map-style dataset without state under our samplers) takes none, so steady state
        pays no snapshot work and a restore loads no batch it does not train on. For the others,
        state stays exact at any step either way: torchdata replays the batches since the last
        snapshot on restore. Without step checkpoints a preemption can still save at any step, so
        the interval is capped to keep that replay short.
        """
        assert self.manager is not None
        every = self.config.checkpoint.save_every_n_steps
        accumulate = self.config.performance.gradient_accumulation_steps
        cap = min(self.manager.epoch_length(), SNAPSHOT_CAP)
        interval = every * accumulate if every else cap
        for loader in self.manager.loaders("train"):
            if getattr(loader, "snapshots_free", False):
                loader.snapshot_every_n_steps = None
            elif hasattr(loader, "snapshot_every_n_steps"):
                loader.snapshot_every_n_steps = max(1, interval)
