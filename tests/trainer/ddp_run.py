"""One rank of a torchrun job: ``torchrun ... -m tests.trainer.ddp_run ROOT OUT [options]``.

Trains a small model on a WEIGHTED mix of three map-style loaders under the process group torchrun
set up (gloo), records per rank the sample ids it trained on, a digest of the parameters after every
optimizer step and the paths its checkpoints went to, and writes them to ``OUT/rank{R}.pt``.
Without torchrun (no ``RANK`` in the environment) it runs as a single process.
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

from statefuldata import MultiDataLoaderConfig, make_loader
from tests.data import Features
from trainer import (
    Callback,
    CheckpointConfig,
    GenericTrainer,
    GenericTrainerConfig,
    PerformanceConfig,
)


class Recorder(Callback):
    """Parameter digests after every step; checkpoint paths; SIGUSR1 to itself at a batch."""

    def __init__(self, signal_at: int | None) -> None:
        self.signal_at, self.batches = signal_at, 0
        self.digests: list[float] = []
        self.paths: list[str | None] = []

    def on_train_batch_end(self, trainer, outputs, batch_idx, dataloader_idx, name) -> None:
        self.batches += 1
        if self.batches == self.signal_at:
            os.kill(os.getpid(), signal.SIGUSR1)

    def on_optimizer_step(self, trainer) -> None:
        self.digests.append(
            float(sum(p.detach().double().sum() for p in trainer.model.parameters()))
        )

    def on_checkpoint(self, trainer, path) -> None:
        self.paths.append(None if path is None else str(path))


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("root")
    parser.add_argument("out")
    parser.add_argument("--signal-rank", type=int, default=None)
    parser.add_argument("--signal-at", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--accumulate", type=int, default=1)
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args(argv)
    distributed = "RANK" in os.environ
    if distributed:
        dist.init_process_group("gloo")
    rank, world = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)
    try:
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
        optimizer = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=4, gamma=0.7)
        config = GenericTrainerConfig(
            seed=3,
            train_loader_config=MultiDataLoaderConfig(
                sampling_strategy="weighted", dataloader_weights=[0.5, 0.3, 0.2]
            ),
            checkpoint=CheckpointConfig(root_dir=args.root, save_every_n_epochs=None),
            performance=PerformanceConfig(gradient_accumulation_steps=args.accumulate),
            progress_bar=False,
        )
        signal_at = args.signal_at if args.signal_rank == rank else None
        recorder = Recorder(signal_at)
        trainer = GenericTrainer(config, model, optimizer, scheduler, callbacks=(recorder,))
        seen: list[list[int]] = []

        def step(t: GenericTrainer, batch: Any, batch_idx: int, loader_idx: int, name: str):
            seen.append(batch["id"].tolist())
            return {"loss": torch.nn.functional.mse_loss(t.model(batch["x"]), batch["y"])}

        trainer.set_training_step(step)
        b = args.batch_size
        loaders = [
            make_loader(
                Features(48), batch_size=b, shuffle=True, seed=1, rank=rank, world_size=world
            ),
            make_loader(
                Features(32, offset=1000),
                batch_size=b,
                shuffle=True,
                seed=2,
                rank=rank,
                world_size=world,
            ),
            make_loader(Features(24, offset=2000), batch_size=b, rank=rank, world_size=world),
        ]
        result = trainer.fit(loaders, max_epochs=args.epochs)
        Path(args.out).mkdir(parents=True, exist_ok=True)
        torch.save(
            {
                "status": result.status,
                "step": result.global_step,
                "seen": seen,
                "digests": recorder.digests,
                "paths": recorder.paths,
                "params": {k: v.detach().clone() for k, v in model.state_dict().items()},
                "world": world,
            },
            Path(args.out) / f"rank{rank}.pt",
        )
    finally:
        if distributed:
            dist.barrier()  # both ranks are done with every collective before the group goes
            dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
