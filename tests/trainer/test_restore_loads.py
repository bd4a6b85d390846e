"""A resumed GenericTrainer with workers loads no batch it does not train on, and resumes exactly.

Its loaders take no worker snapshots (their state is current at every step), so a restore from a
checkpoint written at any step loads at most the batch it trains on plus the batches torchdata sends
ahead (``prefetch_factor`` per worker) before the first resumed step, whatever the position.
"""

from __future__ import annotations

import contextlib
import multiprocessing
from typing import Any

import pytest
import torch
from torch.utils.data import Dataset

from statefuldata import make_loader
from trainer import (
    Callback,
    CheckpointConfig,
    GenericTrainer,
    GenericTrainerConfig,
    PreemptionConfig,
)

N, BATCH, WORKERS, PREFETCH_FACTOR = 64, 4, 2, 2  # 16 batches per epoch; torchdata's prefetch
BOUND = (PREFETCH_FACTOR * WORKERS + 1) * BATCH


class CountedIds(Dataset):
    """Item i is i; every item a worker loads adds one to a counter shared with the main process."""

    def __init__(self) -> None:
        self.loaded = multiprocessing.get_context("fork").Value("q", 0)

    def __len__(self) -> int:
        return N

    def __getitem__(self, index: int) -> int:
        with self.loaded.get_lock():
            self.loaded.value += 1
        return index


class Stop(Exception):
    pass


class SaveAndStop(Callback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_optimizer_step(self, trainer: Any) -> None:
        if trainer.state.global_step == self.step:
            trainer.save("manual")  # between snapshot steps, as a preemption would
            raise Stop


def _run(tmp_path, name: str, *, callbacks=(), resume=None) -> tuple[list[int], list[int]]:
    """Ids trained on, and the items loaded when each training step started."""
    dataset, ids, loaded = CountedIds(), [], []

    def step(trainer, batch, *_):
        loaded.append(dataset.loaded.value)
        ids.extend(batch.tolist())
        return {"loss": trainer.model(batch.float()[:, None] / N).pow(2).mean()}

    torch.manual_seed(0)
    model = torch.nn.Linear(1, 1)
    config = GenericTrainerConfig(
        seed=0,
        checkpoint=CheckpointConfig(root_dir=tmp_path / name, save_every_n_epochs=None),
        preemption=PreemptionConfig(auto_resume=False),
        progress_bar=False,
    )
    trainer = GenericTrainer(
        config, model, torch.optim.SGD(model.parameters(), lr=0.1), callbacks=callbacks
    )
    trainer.set_training_step(step)
    loader = make_loader(dataset, batch_size=BATCH, shuffle=True, seed=5, num_workers=WORKERS)
    with contextlib.suppress(Stop):
        trainer.fit(loader, max_epochs=2, resume_from_checkpoint=resume)
    return ids, loaded


# Stopped mid-epoch (the resumed run crosses into epoch 1), and at the last step of epoch 0 (the
# checkpoint holds the end of the pass: the resume starts epoch 1's pass).
@pytest.mark.slow
@pytest.mark.parametrize("stop", [7, 16])
def test_resume_with_workers_loads_only_the_prefetch_and_trains_the_same_ids(tmp_path, stop):
    reference, _ = _run(tmp_path, "reference")
    first, _ = _run(tmp_path, "first", callbacks=(SaveAndStop(stop),))
    assert len(first) == stop * BATCH
    resumed, loaded = _run(tmp_path, "resumed", resume=tmp_path / "first" / "latest.ckpt")
    assert 0 < loaded[0] <= BOUND, loaded[0]  # before the first resumed step
    assert first + resumed == reference
