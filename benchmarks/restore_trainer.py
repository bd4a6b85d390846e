"""Resuming a ``GenericTrainer`` with 2 workers: items loaded and time before its first step.

A map dataset of ints that counts the items its workers load (a shared counter), batch 16, 2 worker
processes, shuffled, one long epoch. For each position k a first trainer trains k optimizer steps and
writes a checkpoint there (a manual save at step k, as a preemption would, between any two snapshot
steps); each measurement then builds a fresh trainer and fresh loader, calls ``fit()`` to resume from
that file, and stops inside the first training step, reading there how many items the workers had
loaded and how long ``fit()`` had taken. Loaders: ours (``make_loader``, which takes no worker
snapshots: its state is current at every step); torchdata's ``StatefulDataLoader`` with its default
``snapshot_every_n_steps=1`` (kept at 1 whatever the trainer sets); the same loader at the interval
the trainer gives loaders whose snapshots cost (min(epoch length, 100) without step checkpoints).
Part of ``python -m benchmarks restore``.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import shutil
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Any

import attrs
import torch
from torch.utils.data import Dataset
from torchdata.stateful_dataloader import StatefulDataLoader

from benchmarks.data import item_value
from benchmarks.harness import Progress, Settings, Stat, interleave
from benchmarks.results import Column, Headline, Table
from statefuldata import make_loader
from statefuldata.loader import quiet_stateful_dataloader
from trainer import Callback

__all__ = [
    "FULL_PLAN",
    "QUICK_PLAN",
    "TrainerRestorePlan",
    "items_bound",
    "trainer_method",
    "trainer_restore",
    "trainer_restore_headline",
    "trainer_restore_table",
]

OURS, TORCHDATA, TORCHDATA_100 = (
    "ours (make_loader)",
    "torchdata StatefulDataLoader, snapshot every step (its default)",
    "torchdata StatefulDataLoader, snapshot every 100 steps (the trainer's cadence)",
)
BATCH, WORKERS, PREFETCH_FACTOR = 16, 2, 2  # torchdata's default prefetch_factor


@attrs.frozen(kw_only=True)
class TrainerRestorePlan:
    batches: int
    ks: tuple[int, ...]


FULL_PLAN = TrainerRestorePlan(batches=2_000, ks=(10, 150, 1_050))
QUICK_PLAN = TrainerRestorePlan(batches=200, ks=(150,))  # past torchdata's 100-step snapshot


def trainer_method() -> str:
    """This section's method, for the restore report."""
    return " ".join((__doc__ or "").split("\n", 2)[2].split())


def items_bound() -> int:
    """Items a restore may load before its first step: the batch it trains on plus the batches
    torchdata's workers are sent ahead (``prefetch_factor`` per worker), whatever the position."""
    return (PREFETCH_FACTOR * WORKERS + 1) * BATCH


class CountedInts(Dataset):
    """``item_value(i)`` for ``i < n``; every item a worker loads adds one to a shared counter."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.loaded = multiprocessing.get_context("fork").Value("q", 0)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> int:
        return self.__getitems__([index])[0]

    def __getitems__(self, indices: list[int]) -> list[int]:
        with self.loaded.get_lock():
            self.loaded.value += len(indices)
        return [item_value(i) for i in indices]


class _KeepsDefaultInterval(StatefulDataLoader):  # type: ignore[misc]
    """torchdata's loader whose ``snapshot_every_n_steps`` stays torchdata's default (1)."""

    @property
    def snapshot_every_n_steps(self) -> int:
        return 1

    @snapshot_every_n_steps.setter
    def snapshot_every_n_steps(self, value: Any) -> None:
        pass


class _FirstStep(Exception):
    """Raised inside the first resumed training step to end the measurement there."""


def _loader(name: str, dataset: CountedInts) -> Any:
    kwargs: dict[str, Any] = {"batch_size": BATCH, "num_workers": WORKERS}
    if name == OURS:
        return make_loader(dataset, shuffle=True, seed=0, **kwargs)
    cls = _KeepsDefaultInterval if name == TORCHDATA else StatefulDataLoader
    generator = torch.Generator().manual_seed(0)
    return quiet_stateful_dataloader(dataset, cls=cls, shuffle=True, generator=generator, **kwargs)


def _trainer(root: Path, step: Any, callbacks: tuple[Any, ...] = ()) -> Any:
    from trainer import CheckpointConfig, GenericTrainer, GenericTrainerConfig, PreemptionConfig

    torch.manual_seed(0)
    model = torch.nn.Linear(1, 1)
    config = GenericTrainerConfig(
        seed=0,
        checkpoint=CheckpointConfig(root_dir=root, save_every_n_epochs=None, max_checkpoints=1),
        preemption=PreemptionConfig(auto_resume=False),
        progress_bar=False,
    )
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    trainer = GenericTrainer(config, model, optimizer, callbacks=callbacks)
    trainer.set_training_step(step)
    return trainer


def _loss(trainer: Any, batch: torch.Tensor) -> dict[str, torch.Tensor]:
    x = (batch.float() / 2**24)[:, None]
    return {"loss": trainer.model(x).pow(2).mean()}


class _SaveAndStop(Callback):
    """Saves at optimizer step ``k`` (a step boundary, off any snapshot cadence) and stops."""

    def __init__(self, k: int) -> None:
        self.k = k

    def on_optimizer_step(self, trainer: Any) -> None:
        if trainer.state.global_step == self.k:
            trainer.save("manual")
            raise _FirstStep


def _checkpoint(name: str, plan: TrainerRestorePlan, k: int, root: Path) -> Path:
    """Train k steps with a fresh trainer and save there; the path of that checkpoint."""
    trainer = _trainer(root, lambda t, batch, *_: _loss(t, batch), (_SaveAndStop(k),))
    with contextlib.suppress(_FirstStep):
        trainer.fit(_loader(name, CountedInts(plan.batches * BATCH)), max_epochs=1)
    assert trainer.last_checkpoint is not None
    return trainer.last_checkpoint


def _resume(name: str, plan: TrainerRestorePlan, path: Path, loads: list[int]) -> float:
    """Seconds from ``fit()`` to the first resumed training step; appends the items loaded."""
    dataset = CountedInts(plan.batches * BATCH)
    root = Path(tempfile.mkdtemp(prefix="bench-resume-"))
    reached: list[float] = []

    def step(trainer: Any, batch: torch.Tensor, *_: Any) -> dict[str, torch.Tensor]:
        reached.append(time.perf_counter())
        loads.append(dataset.loaded.value)
        raise _FirstStep

    trainer = _trainer(root, step)
    loader = _loader(name, dataset)
    start = time.perf_counter()
    with contextlib.suppress(_FirstStep):
        trainer.fit(loader, max_epochs=1, resume_from_checkpoint=path)
    shutil.rmtree(root, ignore_errors=True)
    return reached[0] - start


def trainer_restore(
    plan: TrainerRestorePlan, settings: Settings, progress: Progress
) -> dict[int, dict[str, Any]]:
    """Per position k: each loader's resume time (interleaved) and items loaded (max over runs)."""
    names = (OURS, TORCHDATA, TORCHDATA_100)
    folder = Path(tempfile.mkdtemp(prefix="bench-restore-trainer-"))
    results: dict[int, dict[str, Any]] = {}
    try:
        for i, k in enumerate(plan.ks):
            paths = {n: _checkpoint(n, plan, k, folder / f"{j}-{k}") for j, n in enumerate(names)}
            loads: dict[str, list[int]] = {n: [] for n in names}
            stats: dict[str, Stat] = interleave(
                {n: partial(_resume, n, plan, paths[n], loads[n]) for n in names},
                repeats=settings.repeats,
                warmup=settings.warmup if i == 0 else 0,
                progress=progress,
            )
            results[k] = {"time": stats, "items": {n: max(v) for n, v in loads.items()}}
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return results


def trainer_restore_table(plan: TrainerRestorePlan, results: dict[int, dict[str, Any]]) -> Table:
    rows: list[dict[str, Any]] = []
    for k, result in results.items():
        base = result["time"][OURS].median
        for name, stat in result["time"].items():
            rows.append(
                {
                    "k": k,
                    "variant": name,
                    "items": result["items"][name],
                    "seconds": stat.median,
                    "ratio": stat.median / base,
                    "stat": stat.to_dict(),
                }
            )
    return Table(
        title=f"GenericTrainer resumed at step k of a {plan.batches:,}-batch epoch ({WORKERS} "
        f"workers, batch {BATCH}): items loaded before the first step (bound "
        f"{items_bound()}) and time from fit() to it",
        columns=[
            Column("k", "k (steps)", "int"),
            Column("variant", "loader"),
            Column("items", "items loaded (max)", "int"),
            Column("seconds", "fit() to first step (median)", "seconds"),
            Column("ratio", "/ ours", "ratio"),
        ],
        rows=rows,
    )


def trainer_restore_headline(results: dict[int, dict[str, Any]]) -> Headline:
    worst = max(result["items"][OURS] for result in results.values())
    return Headline(
        key="restore_trainer_items",
        label=f"resumed GenericTrainer ({WORKERS} workers): items loaded before the first step, "
        f"worst position / (prefetch_factor x workers + 1) x batch",
        value=worst / items_bound(),
        op="<=",
        threshold=1.0,
        detail=f"{worst} items at worst over k={list(results)}; bound {items_bound()}",
    )
