"""Elastic-resume runs: ``torchrun ... -m tests.trainer.elastic_run OUT :: ROOT [options] :: ...``.

Trains a small model on a WEIGHTED mix of three loaders built by ``make_loader`` *without* ``rank``
or ``world_size`` (they shard by the process group torchrun set up), with a per-rank batch size of
``--global-batch / world size``, and records the ``(global step, loader index, sample ids)`` of
every batch it trained on. ``--signal-at K`` preempts the run after its K-th batch (SIGUSR1 to rank
0), so the checkpoint holds K steps. ``--iterable`` makes the third loader a rank-sharded stateful
iterable. :func:`main` runs one job in-process (a single process, no process group); under
torchrun, :func:`launch` runs several jobs in one process group and writes their records.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.utils.data import IterableDataset

from statefuldata import MultiDataLoaderConfig, make_loader
from tests.data import Features
from trainer import (
    Callback,
    CheckpointConfig,
    GenericTrainer,
    GenericTrainerConfig,
    PreemptionConfig,
)

EPOCHS = 2


class RankStream(IterableDataset):
    """A stateful iterable of :class:`Features` items, sharded by torch.distributed rank."""

    def __init__(self, n: int, offset: int) -> None:
        self.items = Features(n, offset)
        self._start = self._position = 0

    def _shard(self) -> range:
        rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
        return range(rank, len(self.items), world)

    def __len__(self) -> int:
        return len(self._shard())

    def __iter__(self):
        self._position, self._start = self._start, 0
        ids = self._shard()
        while self._position < len(ids):
            self._position += 1
            yield self.items[ids[self._position - 1]]

    def state_dict(self) -> dict[str, int]:
        return {"position": self._position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self._start = state["position"]


class SignalAt(Callback):
    """SIGUSR1 to this process after its ``at``-th training batch."""

    def __init__(self, at: int | None) -> None:
        self.at, self.batches = at, 0

    def on_train_batch_end(self, trainer, outputs, batch_idx, dataloader_idx, name) -> None:
        self.batches += 1
        if self.batches == self.at:
            os.kill(os.getpid(), signal.SIGUSR1)


def run(args: argparse.Namespace) -> dict[str, Any]:
    rank = dist.get_rank() if dist.is_initialized() else 0
    world = dist.get_world_size() if dist.is_initialized() else 1
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.02)
    config = GenericTrainerConfig(
        seed=3,
        train_loader_config=MultiDataLoaderConfig(
            sampling_strategy="weighted",
            dataloader_weights=[0.5, 0.3, 0.2],
            dataloader_names=["a", "b", "c"],
        ),
        checkpoint=CheckpointConfig(root_dir=args.root, save_every_n_epochs=None),
        preemption=PreemptionConfig(restart_incompatible_sources=args.restart),
        progress_bar=False,
    )
    signal_at = args.signal_at if rank == 0 else None
    trainer = GenericTrainer(config, model, optimizer, callbacks=(SignalAt(signal_at),))
    seen: list[tuple[int, int, list[int]]] = []

    def step(t: GenericTrainer, batch: Any, batch_idx: int, loader_idx: int, name: str):
        seen.append((t.state.global_step, loader_idx, batch["id"].tolist()))
        return {"loss": torch.nn.functional.mse_loss(t.model(batch["x"]), batch["y"])}

    trainer.set_training_step(step)
    b = args.global_batch // world
    third = RankStream(16, 2000) if args.iterable else Features(16, 2000)
    loaders = [
        make_loader(Features(48), batch_size=b, shuffle=True, seed=1, num_workers=args.workers),
        make_loader(Features(32, 1000), batch_size=b, shuffle=True, seed=2),
        make_loader(third, batch_size=b),
    ]
    result = trainer.fit(loaders, max_epochs=EPOCHS)
    return {"status": result.status, "step": result.global_step, "seen": seen, "world": world}


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("root")
    parser.add_argument("--signal-at", type=int, default=None)
    parser.add_argument("--global-batch", type=int, default=8)
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--iterable", action="store_true")
    parser.add_argument("--restart", action="store_true", help="restart_incompatible_sources")
    return parser.parse_args(argv)


def main(argv: list[str]) -> dict[str, Any]:
    """Run one job in this process (no process group); returns its record."""
    return run(parse(argv))


def probe() -> dict[str, Any]:
    """How ``make_loader`` shards under the process group: by default, with explicit values, and
    the error for an explicit ``rank >= world_size``."""
    default = make_loader(Features(8), batch_size=2, shuffle=True).sampler
    explicit = make_loader(Features(8), batch_size=2, shuffle=True, rank=0, world_size=1).sampler
    try:
        make_loader(Features(8), batch_size=2, rank=3, world_size=2)
        error = ""
    except ValueError as exc:
        error = str(exc)
    return {
        "default": [default.rank, default.world_size],
        "explicit": [explicit.rank, explicit.world_size],
        "error": error,
    }


def launch(argv: list[str]) -> None:
    """Under torchrun: ``OUT :: JOB :: JOB ...``, each JOB the arguments of :func:`main`. The jobs
    run one after the other in one process group (one launch, several runs); job ``j`` of rank
    ``R`` writes its record to ``OUT/job{j}-rank{R}.pt`` (and :func:`probe`'s to
    ``OUT/probe-rank{R}.pt``)."""
    out, *jobs = " ".join(argv).split(" :: ")
    dist.init_process_group("gloo")
    try:
        Path(out).mkdir(parents=True, exist_ok=True)
        torch.save(probe(), Path(out) / f"probe-rank{dist.get_rank()}.pt")
        for j, job in enumerate(jobs):
            record = run(parse(job.split()))
            Path(out).mkdir(parents=True, exist_ok=True)
            torch.save(record, Path(out) / f"job{j}-rank{dist.get_rank()}.pt")
            dist.barrier()
    finally:
        dist.barrier()  # every rank is done with every collective before the group goes
        dist.destroy_process_group()


if __name__ == "__main__":
    launch(sys.argv[1:])
    sys.exit(0)
