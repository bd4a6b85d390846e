"""GenericTrainer over a Hugging Face iterable dataset, in a fresh process; appends the ids it trains on.

Usage: ``python -m tests.frameworks.hf_trainer_run ROOT LOG NUM_WORKERS STOP_AFTER`` (``STOP_AFTER`` 0:
never; otherwise a SIGUSR1 after that many batches preempts the run, which saves and returns).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from datasets import Dataset

from statefuldata import MultiDataLoaderConfig, make_loader
from tests.trainer.harness import SignalAt
from trainer import CheckpointConfig, GenericTrainer, GenericTrainerConfig

SAMPLES, BATCH, EPOCHS = 48, 4, 3


def dataset() -> object:
    rows = {"id": list(range(SAMPLES)), "x": [float(i % 7) for i in range(SAMPLES)]}
    return Dataset.from_dict(rows).to_iterable_dataset(num_shards=4)


def run(root: Path, log: Path, num_workers: int, stop_after: int) -> str:
    torch.manual_seed(0)
    model = torch.nn.Linear(1, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    config = GenericTrainerConfig(
        progress_bar=False,
        checkpoint=CheckpointConfig(root_dir=root, save_every_n_steps=5),
        # an HF iterable has no length: an epoch is one pass of SAMPLES / BATCH steps
        train_loader_config=MultiDataLoaderConfig(
            epoch_length_policy="fixed_num_steps", steps_per_epoch=SAMPLES // BATCH
        ),
    )
    callbacks = [SignalAt(stop_after)] if stop_after else []
    trainer = GenericTrainer(config, model, optimizer, callbacks=callbacks)
    seen: list[int] = []

    def step(t, batch, batch_idx, dataloader_idx, name):
        seen.extend(batch["id"].tolist())
        x = batch["x"].float().unsqueeze(1)
        return {"loss": torch.nn.functional.mse_loss(t.model(x), x * 0.5)}

    trainer.set_training_step(step)
    loader = make_loader(dataset(), batch_size=BATCH, num_workers=num_workers)
    result = trainer.fit([loader], max_epochs=EPOCHS)
    previous = json.loads(log.read_text()) if log.exists() else []
    log.write_text(json.dumps(previous + seen))
    return str(getattr(result.status, "value", result.status))


if __name__ == "__main__":
    root, log, workers, stop = sys.argv[1:]
    print(run(Path(root), Path(log), int(workers), int(stop)))
