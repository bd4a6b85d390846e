"""Builds the same small training run again and again, as a fresh process would."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import torch

from statefuldata import MultiDataLoaderConfig, make_loader
from tests.data import Features, FeatureStream, PlainFeatureStream
from trainer import (
    Callback,
    CheckpointConfig,
    GenericTrainer,
    GenericTrainerConfig,
    PerformanceConfig,
)


class Model(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = torch.nn.Sequential(
            torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Dropout(0.2)
        )
        self.head = torch.nn.Linear(16, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


class SignalAt(Callback):
    """Sends a real signal to this process after batch number ``at`` (counted over the run)."""

    def __init__(self, at: int, signum: int = signal.SIGUSR1) -> None:
        self.at, self.signum, self.seen = at, signum, 0

    def on_train_batch_end(
        self, trainer, outputs, batch_idx, dataloader_idx, dataloader_name
    ) -> None:
        self.seen += 1
        if self.seen == self.at:
            os.kill(os.getpid(), self.signum)


class InterruptAt(Callback):
    """Raises KeyboardInterrupt after batch number ``at``, like the stop button."""

    def __init__(self, at: int) -> None:
        self.at, self.seen = at, 0

    def on_train_batch_end(
        self, trainer, outputs, batch_idx, dataloader_idx, dataloader_name
    ) -> None:
        self.seen += 1
        if self.seen == self.at:
            raise KeyboardInterrupt


def loaders(num_workers: int = 0) -> list[Any]:
    return [
        make_loader(Features(40), batch_size=4, shuffle=True, seed=11, num_workers=num_workers),
        make_loader(FeatureStream(36, offset=1000), batch_size=4, num_workers=num_workers),
        make_loader(PlainFeatureStream(28, offset=2000), batch_size=4, num_workers=num_workers),
    ]


def build(
    root: Path,
    *,
    ambient_seed: int = 0,
    amp: bool = False,
    callbacks: tuple[Callback, ...] = (),
    log: list | None = None,
    **config_overrides: Any,
) -> GenericTrainer:
    torch.manual_seed(ambient_seed)  # a fresh process has its own ambient RNG state
    model = Model()
    opt_body = torch.optim.SGD(model.body.parameters(), lr=0.05, momentum=0.9)
    opt_head = torch.optim.AdamW(model.head.parameters(), lr=0.01)
    schedulers = [
        torch.optim.lr_scheduler.StepLR(opt_body, step_size=7, gamma=0.5),
        torch.optim.lr_scheduler.ExponentialLR(opt_head, gamma=0.97),
    ]
    config = GenericTrainerConfig(
        seed=5,
        train_loader_config=MultiDataLoaderConfig(
            sampling_strategy="weighted",
            dataloader_weights=[0.37, 0.41, 0.22],
            dataloader_names=["map", "stream", "fallback"],
            epoch_length_policy="fixed_num_steps",
            steps_per_epoch=100,
            choice_rng_seed=3,
        ),
        checkpoint=CheckpointConfig(root_dir=root, save_every_n_epochs=1, max_checkpoints=3),
        performance=PerformanceConfig(
            use_amp=amp, amp_dtype="bfloat16", gradient_accumulation_steps=2, clip_grad_norm=1.0
        ),
        progress_bar=False,
        log_every_n_steps=1,
        **config_overrides,
    )
    trainer = GenericTrainer(config, model, [opt_body, opt_head], schedulers, callbacks=callbacks)

    def step(t, batch, batch_idx, dataloader_idx, dataloader_name):
        if log is not None:
            log.append((t.state.global_step, dataloader_name, batch["id"].tolist()))
        prediction = t.model(batch["x"])
        return {"loss": torch.nn.functional.mse_loss(prediction.float(), batch["y"])}

    trainer.set_training_step(step)
    return trainer


def snapshot(trainer: GenericTrainer) -> dict[str, Any]:
    return {
        "params": {k: v.detach().clone() for k, v in trainer.model.state_dict().items()},
        "optimizers": [o.state_dict() for o in trainer.optimizers],
        "lrs": [s.get_last_lr() for s in trainer.schedulers],
        "step": trainer.state.global_step,
    }


def assert_same(a: Any, b: Any, where: str = "") -> None:
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            assert_same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, (where, a, b)
