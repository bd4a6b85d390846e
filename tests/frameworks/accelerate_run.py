"""accelerate on several CPU processes (launched by torchrun): train, save_state, load_state.

Usage: ``python -m torch.distributed.run --nproc_per_node=2 -m tests.frameworks.accelerate_run
ROOT PHASE``. ``PHASE`` ``first``: for each mode, an uninterrupted run and, for each stop, a run that
calls ``save_state`` after that many steps and returns. ``resumed``: in fresh processes, each
interrupted run continues from its folder with ``load_state``. Every run writes what this rank
trained on (its batches, the final parameters) to ``ROOT/<run>/rank<r>.pt``.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration

from statefuldata import make_loader
from statefuldata.integrations.accelerate import ResumableLoader
from tests.data import Ids

# 50 samples in batches of 4 over 2 processes: 13 batches, the last one short, so accelerate
# (even_batches=True, its default) fills each epoch's tail with the pass's first samples.
SAMPLES, BATCH, EPOCHS, WORKERS = 50, 4, 2, 2
PROCESSES = 2
STEPS = 7  # per process and epoch: accelerate deals the batches out, the 14th filled from the head
# mode: (use_stateful_dataloader, ResumableLoader, split_batches) -> the steps after which a run
# saves and stops: 2, mid-epoch 0 (its resume crosses the epoch boundary); 7, the last batch of
# epoch 0; 9, mid-epoch 1. Without the adapter, a state saved at the last batch of an epoch resumes
# one epoch too far under several processes (ResumableLoader's docstring says why), so that mode is
# run mid-epoch only. With split_batches each process takes half of every batch (13 steps an epoch).
MODES = {
    "default+adapter": (False, True, False),
    "split+adapter": (False, True, True),
    "stateful+adapter": (True, True, False),
    "stateful": (True, False, False),
}
STOPS = {
    "default+adapter": (2, 7, 9),
    "split+adapter": (3, 13, 16),
    "stateful+adapter": (2, 7, 9),
    "stateful": (2, 9),
}


def steps_per_epoch(mode: str) -> int:
    return 13 if MODES[mode][2] else STEPS


def train(mode: str, folder: Path, *, stop: int = 0, resume: int | None = None) -> dict:
    stateful, adapter, split = MODES[mode]
    accelerator = Accelerator(
        cpu=True,
        dataloader_config=DataLoaderConfiguration(
            use_stateful_dataloader=stateful, split_batches=split
        ),
    )
    assert accelerator.num_processes == PROCESSES, accelerator.num_processes
    torch.manual_seed(0)
    model = torch.nn.Linear(1, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    # accelerate shards the batches over the processes itself, so ours must not (README).
    data = make_loader(
        Ids(SAMPLES), batch_size=BATCH, shuffle=True, seed=3, num_workers=WORKERS, rank=0,
        world_size=1,
    )  # fmt: skip
    model, optimizer, loader = accelerator.prepare(model, optimizer, data)
    if adapter:
        loader = ResumableLoader(loader)
        accelerator.register_for_checkpointing(loader)
    start = 0
    if resume is not None:
        accelerator.load_state(str(folder / "state"))
        start = loader.next_epoch if adapter else resume
    seen = run_epochs(accelerator, model, optimizer, loader, start, stop, str(folder / "state"))
    accelerator.wait_for_everyone()
    parameters = [p.detach().clone() for p in accelerator.unwrap_model(model).parameters()]
    return {"seen": seen, "parameters": parameters}


def run_epochs(accelerator, model, optimizer, loader, start: int, stop: int, save_to: str):
    """Train epochs ``start``..EPOCHS-1 and return the batches seen; with ``stop``, save_state to
    ``save_to`` after that many steps and return. Without the adapter the loop sets the epoch."""
    adapter = isinstance(loader, ResumableLoader)
    seen: list[list[int]] = []
    step = 0
    for epoch in range(start, EPOCHS):
        if not adapter:
            loader.set_epoch(epoch)
        for batch in loader:
            seen.append(batch.tolist())
            x = batch.float().unsqueeze(1)
            accelerator.backward(torch.nn.functional.mse_loss(model(x), x))
            optimizer.step()
            optimizer.zero_grad()
            step += 1
            if step == stop:
                accelerator.save_state(save_to)
                return seen
    return seen


def record(folder: Path, result: dict) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rank = int(torch.distributed.get_rank())
    torch.save(result, folder / f"rank{rank}.pt")


def main(root: Path, phase: str) -> None:
    warnings.simplefilter("ignore")
    for mode in MODES:
        if phase == "first":
            record(root / mode / "reference", train(mode, root / mode / "reference"))
        for stop in STOPS[mode]:
            run = root / mode / f"stop{stop}"
            if phase == "first":
                record(run / "first", train(mode, run, stop=stop))
            else:
                record(run / "resumed", train(mode, run, resume=stop // steps_per_epoch(mode)))


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2])
