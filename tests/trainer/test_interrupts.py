"""Ctrl-C at any point of a batch, then ``fit()`` again, gives the uninterrupted run.

Each case sends a real SIGINT to this process from inside one part of a batch (a dataset's
``__getitem__`` in the main process or in a worker, the forward, a backward hook, clipping, an
optimizer step, a scheduler step, a checkpoint), as pressing stop would. A second SIGINT, or a
KeyboardInterrupt raised by code inside a batch, leaves memory mid-batch: the next ``fit()`` goes back
to the last checkpoint, which is exact too.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import pytest
import torch

from statefuldata import MultiDataLoaderConfig, make_loader
from tests.data import Features, FeatureStream
from tests.trainer.harness import assert_same, snapshot
from trainer import CheckpointConfig, GenericTrainer, GenericTrainerConfig, PerformanceConfig

EPOCHS = 2


def _sigint() -> None:
    os.kill(os.getpid(), signal.SIGINT)


class Once:
    """Fires at its ``at``-th call only (in this process)."""

    def __init__(self, at: int | None) -> None:
        self.at, self.calls = at, 0

    def __call__(self) -> bool:
        self.calls += 1
        return self.calls == self.at


class SignalingFeatures(Features):
    """Sends SIGINT to the main process while loading item ``at_id``, once (a marker file)."""

    def __init__(self, n: int, marker: Path | None, at_id: int) -> None:
        super().__init__(n)
        self.marker, self.at_id, self.main_pid = marker, at_id, os.getpid()

    def __getitem__(self, index: int) -> dict[str, Any]:
        if self.marker is not None and index == self.at_id and not self.marker.exists():
            self.marker.touch()
            os.kill(self.main_pid, signal.SIGINT)
        return super().__getitem__(index)


class SignalingStepLR(torch.optim.lr_scheduler.StepLR):
    def __init__(self, *args: Any, fire: Once, **kwargs: Any) -> None:
        self._fire = fire
        super().__init__(*args, **kwargs)

    def step(self, *args: Any, **kwargs: Any) -> None:
        if getattr(self, "_fire", None) is not None and self._fire():
            _sigint()
        super().step(*args, **kwargs)

    def state_dict(self) -> dict[str, Any]:
        return {k: v for k, v in super().state_dict().items() if k != "_fire"}


class Model(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = torch.nn.Sequential(
            torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Dropout(0.3)
        )
        self.head = torch.nn.Linear(16, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def build(root: Path, log: list, *, point: str | None = None, at: int = 0, workers: int = 0):
    """Two loaders (one with 2 workers when asked), two optimizers, accumulation 2, clipping."""
    torch.manual_seed(123)
    model = Model()
    fire = Once(at if point is not None else None)
    marker = root / "fired" if point == "fetch" else None
    root.mkdir(parents=True, exist_ok=True)
    opt_body = torch.optim.SGD(model.body.parameters(), lr=0.05, momentum=0.9)
    opt_head = torch.optim.AdamW(model.head.parameters(), lr=0.01)
    schedulers = [
        SignalingStepLR(
            opt_body, step_size=3, gamma=0.5, fire=fire if point == "scheduler" else Once(None)
        ),
        torch.optim.lr_scheduler.ExponentialLR(opt_head, gamma=0.95),
    ]
    config = GenericTrainerConfig(
        seed=4,
        train_loader_config=MultiDataLoaderConfig(
            sampling_strategy="weighted", dataloader_weights=[0.6, 0.4]
        ),
        checkpoint=CheckpointConfig(root_dir=root, save_every_n_steps=3, max_checkpoints=None),
        performance=PerformanceConfig(gradient_accumulation_steps=2, clip_grad_norm=0.5),
        progress_bar=False,
        log_every_n_steps=1,
    )
    trainer = GenericTrainer(config, model, [opt_body, opt_head], schedulers)

    def step(t, batch, batch_idx, loader_idx, name):
        log.append(batch["id"].tolist())
        if point == "forward" and fire():
            _sigint()
        out = t.model(batch["x"])
        if point == "forward-raise" and fire():
            raise KeyboardInterrupt  # raised by code inside the batch: memory is mid-batch
        if point == "forward-twice" and fire():
            _sigint()
            _sigint()  # the second one interrupts at once
        return {"loss": torch.nn.functional.mse_loss(out, batch["y"])}

    trainer.set_training_step(step)
    if point == "backward":
        model.head.weight.register_hook(lambda grad: _sigint() if fire() else None)
    if point == "step":
        opt_head.register_step_pre_hook(lambda *_: _sigint() if fire() else None)
    loaders = [
        make_loader(
            SignalingFeatures(28, marker, at),
            batch_size=4,
            shuffle=True,
            seed=2,
            num_workers=workers,
        ),
        make_loader(FeatureStream(20, offset=500), batch_size=4),
    ]
    return trainer, loaders, fire


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    log: list = []
    trainer, loaders, _ = build(tmp_path_factory.mktemp("ref"), log)
    assert trainer.fit(loaders, max_epochs=EPOCHS).status == "completed"
    return snapshot(trainer), log


@pytest.mark.parametrize(
    ("point", "at", "workers"),
    [
        ("fetch", 5, 0),  # inside __getitem__, in the main process
        ("fetch", 5, 2),  # inside __getitem__ in a worker, while the main process does anything
        ("forward", 4, 0),
        ("backward", 7, 0),  # inside autograd, between two parameters' gradients
        ("clip", 2, 0),
        ("step", 3, 0),  # between the first optimizer's step and the second's
        ("scheduler", 6, 0),
        ("checkpoint", 2, 0),  # while the checkpoint payload is being built
        ("forward", 12, 0),  # in the last batch of epoch 0
    ],
)
def test_ctrl_c_at_each_point_of_a_batch_then_fit_again_equals_uninterrupted(
    tmp_path, reference, monkeypatch, point, at, workers
) -> None:
    expected, expected_log = reference
    log: list = []
    trainer, loaders, fire = build(tmp_path / "run", log, point=point, at=at, workers=workers)
    if point == "clip":
        clip = torch.nn.utils.clip_grad_norm_
        monkeypatch.setattr(
            torch.nn.utils,
            "clip_grad_norm_",
            lambda *a, **k: (fire() and _sigint(), clip(*a, **k))[1],
        )
    if point == "checkpoint":
        payload = GenericTrainer.checkpoint_payload
        monkeypatch.setattr(
            GenericTrainer,
            "checkpoint_payload",
            lambda self: (fire() and _sigint(), payload(self))[1],
        )
    with pytest.raises(KeyboardInterrupt):
        trainer.fit(loaders, max_epochs=EPOCHS)
    interrupted_at = len(log)
    assert 0 < interrupted_at < len(expected_log)
    assert trainer.fit(loaders, max_epochs=EPOCHS).status == "completed"
    assert log == expected_log  # every batch exactly once, in order
    assert_same(snapshot(trainer), expected)


@pytest.mark.parametrize("point", ["forward-raise", "forward-twice"])
def test_interrupt_inside_a_batch_goes_back_to_the_last_checkpoint(
    tmp_path, reference, caplog, point
) -> None:
    expected, expected_log = reference
    log: list = []
    trainer, loaders, _ = build(tmp_path / "run", log, point=point, at=9)
    with pytest.raises(KeyboardInterrupt):
        trainer.fit(loaders, max_epochs=EPOCHS)
    assert len(log) == 9
    with caplog.at_level("WARNING", logger="trainer"):
        assert trainer.fit(loaders, max_epochs=EPOCHS).status == "completed"
    assert "Went back to" in caplog.text and "step 3)" in caplog.text
    # batches 7 and 8 (after the step-3 checkpoint, 2 batches per step) and 9 ran twice
    assert log[:6] + log[9:] == expected_log
    assert_same(snapshot(trainer), expected)


def test_interrupt_inside_a_batch_without_a_checkpoint_refuses_to_guess(tmp_path) -> None:
    log: list = []
    trainer, loaders, _ = build(tmp_path / "run", log, point="forward-raise", at=2)
    with pytest.raises(KeyboardInterrupt):
        trainer.fit(loaders, max_epochs=EPOCHS)
    with pytest.raises(
        RuntimeError, match=r"interrupted while forward/backward of a batch.*no checkpoint"
    ):
        trainer.fit(loaders, max_epochs=EPOCHS)
