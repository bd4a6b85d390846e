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

SAMPLES, BATCH, EPOCHS, WORKERS = 48, 4, 2, 2
PROCESSES = 2
STEPS = SAMPLES // BATCH // PROCESSES  # per process and epoch: accelerate deals the batches out
# mode: (use_stateful_dataloader, ResumableLoader) -> the steps after which a run saves and stops:
# 2, mid-epoch 0 (its resume crosses the epoch boundary); 6, the last batch of epoch 0; 9, mid-epoch 1.
# Without the adapter, a state saved at the last batch of an epoch resumes one epoch too far under
# several processes (ResumableLoader's docstring says why), so that mode is run mid-epoch only.
MODES = {
    "default+adapter": (False, True),
    "stateful+adapter": (True, True),
    "stateful": (True, False),
}
STOPS = {"default+adapter": (2, 6, 9), "stateful+adapter": (2, 6, 9), "stateful": (2, 9)}


def train(mode: str, folder: Path, *, stop: int = 0, resume: int | None = None) -> dict:
    stateful, adapter = MODES[mode]
    accelerator = Accelerator(
        cpu=True, dataloader_config=DataLoaderConfiguration(use_stateful_dataloader=stateful)
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
                accelerator.save_state(str(folder / "state"))
                break
        else:
            continue
        break
    accelerator.wait_for_everyone()
    parameters = [p.detach().clone() for p in accelerator.unwrap_model(model).parameters()]
    return {"seen": seen, "parameters": parameters}


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
                record(run / "resumed", train(mode, run, resume=stop // STEPS))


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2])
