"""A training run that signals its whole process group, as Slurm or Kubernetes would.

``python -m tests.trainer.group_signal_run ROOT OUT SIGNAL AT PERSISTENT CONTEXT`` trains (2 workers
per loader, started with the multiprocessing ``CONTEXT``) and, after batch ``AT``, sends ``SIGNAL``
to its own process group, workers included; it writes the fit result and the ids it trained on to
``OUT``. :func:`build` is also the reference.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from typing import Any

import torch

from statefuldata import MultiDataLoaderConfig, make_loader
from tests.data import Features, FeatureStream
from trainer import Callback, CheckpointConfig, GenericTrainer, GenericTrainerConfig

EPOCHS = 2


class SignalGroupAt(Callback):
    def __init__(self, at: int, signum: int) -> None:
        self.at, self.signum, self.seen = at, signum, 0

    def on_train_batch_end(self, trainer, outputs, batch_idx, dataloader_idx, name) -> None:
        self.seen += 1
        if self.seen == self.at:
            os.killpg(os.getpgid(0), self.signum)


def build(
    root: Path, log: list, *, persistent: bool, context: str = "fork", callbacks=()
) -> tuple[GenericTrainer, Any]:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Dropout(0.2), torch.nn.Linear(8, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.5)
    config = GenericTrainerConfig(
        seed=1,
        train_loader_config=MultiDataLoaderConfig(sampling_strategy="round_robin"),
        checkpoint=CheckpointConfig(root_dir=root, save_every_n_epochs=None),
        progress_bar=False,
    )
    trainer = GenericTrainer(config, model, optimizer, callbacks=callbacks)

    def step(t, batch, batch_idx, loader_idx, name):
        log.append(batch["id"].tolist())
        return {"loss": torch.nn.functional.mse_loss(t.model(batch["x"]), batch["y"])}

    trainer.set_training_step(step)
    kwargs = {
        "num_workers": 2,
        "persistent_workers": persistent,
        "multiprocessing_context": context,
    }
    loaders = [
        make_loader(Features(40), batch_size=4, shuffle=True, seed=3, **kwargs),
        make_loader(FeatureStream(32, offset=100), batch_size=4, **kwargs),
    ]
    return trainer, loaders


def main(argv: list[str]) -> int:
    root, out, name, at, persistent, context = argv
    log: list = []
    signum = getattr(signal, name)
    trainer, loaders = build(
        Path(root),
        log,
        persistent=persistent == "1",
        context=context,
        callbacks=(SignalGroupAt(int(at), signum),),
    )
    result = trainer.fit(loaders, max_epochs=EPOCHS)
    torch.save({"status": result.status, "step": result.global_step, "log": log}, out)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
