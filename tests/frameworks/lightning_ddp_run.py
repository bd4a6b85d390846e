"""Lightning DDP on several CPU processes (launched by torchrun): fit, checkpoint, resume.

Usage: ``python -m torch.distributed.run --nproc_per_node=2 -m tests.frameworks.lightning_ddp_run
ROOT PHASE``. ``PHASE`` ``first``: for each kind of data, an uninterrupted fit and, for each stop, a
fit that writes a checkpoint after that many steps and stops. ``resumed``: in fresh processes, each
stopped fit resumes with ``ckpt_path``. Every fit writes what this rank trained on (its batches, the
final parameters) to ``ROOT/<kind>/<run>/rank<r>.pt``.
"""

from __future__ import annotations

import logging
import sys
import warnings
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.utils.data import IterableDataset, get_worker_info

from statefuldata import make_loader
from statefuldata.integrations.lightning import ExactResume
from tests.data import Ids

SAMPLES, BATCH, EPOCHS, WORKERS = 48, 4, 2, 2
PROCESSES = 2
STEPS = SAMPLES // BATCH // PROCESSES  # per process and epoch: make_loader shards by the group
# 2: mid-epoch 0 (its resume crosses the epoch boundary); 6: the last batch of epoch 0; 9: mid-epoch 1
STOPS = (2, 6, 9)
# map: a shuffled map-style dataset, sharded by make_loader (its position is global). stream: an
# iterable sharded by rank whose per-rank positions differ (ExactResume keeps each rank's).
KINDS = ("map", "stream")


class Model(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.layer = torch.nn.Linear(1, 1)
        self.seen: list[list[int]] = []

    def training_step(self, batch, batch_idx):
        self.seen.append(batch.tolist())
        x = batch.float().unsqueeze(1)
        return torch.nn.functional.mse_loss(self.layer(x), x)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=1e-3)


class FilteredStream(IterableDataset):
    """This rank's records with some filtered out: rank 0 streams ids 0..23, rank 1 ids 100..131
    less every 4th (24 kept each), so the two ranks' positions (raw records read, per worker) differ.
    """

    def __init__(self, rank: int) -> None:
        self.raw = range(24) if rank == 0 else range(100, 132)
        self.drops = rank == 1
        self._start = self._position = 0

    def __iter__(self):
        self._position, self._start = self._start, 0
        return self._generate()

    def _generate(self):
        info = get_worker_info()
        shard = self.raw if info is None else self.raw[info.id :: info.num_workers]
        while self._position < len(shard):
            record = shard[self._position]
            self._position += 1
            if not (self.drops and record % 4 == 3):
                yield record

    def state_dict(self) -> dict[str, int]:
        return {"position": self._position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self._start = state["position"]


class Data(L.LightningDataModule):
    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind

    def train_dataloader(self):
        # Built once the process group is up: make_loader shards map-style data by it.
        if self.kind == "stream":
            stream = FilteredStream(torch.distributed.get_rank())
            return make_loader(stream, batch_size=BATCH, num_workers=WORKERS)
        return make_loader(
            Ids(SAMPLES), batch_size=BATCH, shuffle=True, seed=3, num_workers=WORKERS
        )


def fit(kind: str, folder: Path, *, stop: int = 0, ckpt_path: str | None = None) -> dict:
    model = Model()
    callbacks: list[L.Callback] = [ExactResume()]
    if stop:
        callbacks.append(
            ModelCheckpoint(dirpath=folder / "ckpt", every_n_train_steps=stop, save_top_k=-1)
        )
    trainer = L.Trainer(
        accelerator="cpu",
        devices=PROCESSES,
        strategy="ddp",
        max_epochs=EPOCHS,
        max_steps=stop or -1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=bool(stop),
        num_sanity_val_steps=0,
        default_root_dir=folder,
        callbacks=callbacks,
    )
    trainer.fit(model, datamodule=Data(kind), ckpt_path=ckpt_path)
    parameters = [p.detach().clone() for p in model.parameters()]
    return {"seen": model.seen, "parameters": parameters}


def record(folder: Path, result: dict) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(result, folder / f"rank{torch.distributed.get_rank()}.pt")


def main(root: Path, phase: str) -> None:
    warnings.simplefilter("ignore")
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)
    for kind in KINDS:
        if phase == "first":
            record(root / kind / "reference", fit(kind, root / kind / "reference"))
        for stop in STOPS:
            run = root / kind / f"stop{stop}"
            if phase == "first":
                record(run / "first", fit(kind, run, stop=stop))
            else:
                (path,) = (run / "ckpt").glob("*.ckpt")
                record(run / "resumed", fit(kind, run, ckpt_path=str(path)))


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2])
