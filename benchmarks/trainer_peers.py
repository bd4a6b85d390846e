"""Lightning's loops doing the trainer benchmark's work, as peers of ``GenericTrainer``.

Both take the model, optimizer and loader the benchmark builds (the same MLP, SGD and
``make_loader`` loader as the hand loop) and return seconds per optimizer step over the whole run:

- ``Lightning Fabric loop``: a hand loop through ``Fabric(accelerator="cpu", devices=1)``, with
  ``fabric.setup``, ``fabric.setup_dataloaders`` (our loader kept: ``use_distributed_sampler=False``)
  and ``fabric.backward``; what Fabric users write.
- ``Lightning Trainer``: ``lightning.Trainer.fit`` of a ``LightningModule`` wrapping the model, with
  checkpointing, logging, the progress bar and the model summary off, and no validation.

When Lightning is not installed, :func:`available` says why and the benchmark leaves them out.
"""

from __future__ import annotations

import logging
import tempfile
import warnings
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from benchmarks.harness import clock

__all__ = ["FABRIC", "LIGHTNING", "available", "fabric_loop", "lightning_trainer"]

FABRIC, LIGHTNING = "Lightning Fabric loop", "Lightning Trainer"
Setup = Callable[[], tuple[torch.nn.Module, torch.optim.Optimizer, Any]]


def available() -> str:
    """Empty when ``lightning`` imports, else the reason the peers are left out."""
    try:
        import lightning  # noqa: F401
    except ImportError as exc:
        return f"Lightning peers left out: lightning is not installed ({exc})"
    return ""


def _quiet() -> None:
    for name in ("lightning", "lightning.fabric", "lightning.pytorch"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module=r"lightning(\..*)?")


def fabric_loop(setup: Setup, epochs: int, steps: int) -> float:
    """Seconds per step of a Fabric loop over ``epochs`` passes of the loader ``setup`` builds."""
    from lightning.fabric import Fabric

    _quiet()
    model, optimizer, loader = setup()
    fabric = Fabric(accelerator="cpu", devices=1)
    model, optimizer = fabric.setup(model, optimizer)
    loader = fabric.setup_dataloaders(loader, use_distributed_sampler=False, move_to_device=True)

    def train() -> None:
        model.train()
        for _ in range(epochs):
            for x, y in loader:
                loss = F.mse_loss(model(x), y)
                optimizer.zero_grad(set_to_none=True)
                fabric.backward(loss)
                optimizer.step()

    return clock(train) / steps


def lightning_trainer(setup: Setup, epochs: int, steps: int) -> float:
    """Seconds per step of ``lightning.Trainer.fit`` over ``epochs`` passes."""
    import lightning as L

    _quiet()
    model, optimizer, loader = setup()

    class Module(L.LightningModule):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self.net = model

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            x, y = batch
            return F.mse_loss(self.net(x), y)

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return optimizer

    with tempfile.TemporaryDirectory(prefix="bench-lightning-") as root:
        trainer = L.Trainer(
            accelerator="cpu",
            devices=1,
            max_epochs=epochs,
            enable_checkpointing=False,
            logger=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            num_sanity_val_steps=0,
            limit_val_batches=0,
            use_distributed_sampler=False,
            default_root_dir=root,
        )
        module = Module()
        return clock(lambda: trainer.fit(module, train_dataloaders=loader)) / steps
