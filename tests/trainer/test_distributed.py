"""Two CPU ranks (gloo): a signal that lands inside the preemption agreement is never lost.

The preempt-one-rank, resume-exactly run under real torchrun is tests/trainer/test_ddp.py.
"""

from __future__ import annotations

import os
import signal
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from statefuldata import make_loader
from tests.data import Features
from tests.trainer.harness import SignalAt
from trainer import CheckpointConfig, GenericTrainer, GenericTrainerConfig, PerformanceConfig
from trainer.checkpoints import read_checkpoint

WORLD = 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _signal_inside_agreement(at_call: int) -> None:
    """Deliver SIGUSR1 to this rank while it is inside its ``at_call``-th preemption all-reduce."""
    real, calls = dist.all_reduce, [0]

    def all_reduce(tensor, *args, **kwargs):
        result = real(tensor, *args, **kwargs)
        if tensor.numel() == 1 and not tensor.is_floating_point():
            calls[0] += 1
            if calls[0] == at_call:  # after the ranks exchanged their flags, before it returns
                os.kill(os.getpid(), signal.SIGUSR1)
        return result

    dist.all_reduce = all_reduce


def _rank_main(
    rank: int,
    port: int,
    root: str,
    out: str,
    preempt_at: int | None,
    agreement_signal_at: int | None = None,
) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    if agreement_signal_at is not None and rank == 0:
        _signal_inside_agreement(agreement_signal_at)
    try:
        torch.manual_seed(0)
        model = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(8, 1))
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        config = GenericTrainerConfig(
            progress_bar=False, checkpoint=CheckpointConfig(root_dir=root)
        )
        callbacks = (SignalAt(preempt_at),) if preempt_at is not None and rank == 0 else ()
        trainer = GenericTrainer(config, model, optimizer, callbacks=callbacks)
        seen: list[list[int]] = []

        def step(t, batch, batch_idx, dataloader_idx, name):
            seen.append(batch["id"].tolist())
            return {"loss": torch.nn.functional.mse_loss(t.model(batch["x"]), batch["y"])}

        trainer.set_training_step(step)
        loader = make_loader(
            Features(48), batch_size=4, shuffle=True, seed=1, rank=rank, world_size=WORLD
        )
        result = trainer.fit([loader], max_epochs=2)
        torch.save(
            {
                "status": result.status,
                "step": result.global_step,
                "params": model.state_dict(),
                "seen": seen,
            },
            Path(out) / f"rank{rank}.pt",
        )
    finally:
        dist.destroy_process_group()


def _run(
    root: Path, out: Path, preempt_at: int | None = None, agreement_signal_at: int | None = None
) -> list[dict]:
    out.mkdir(parents=True, exist_ok=True)
    mp.spawn(
        _rank_main,
        args=(_free_port(), str(root), str(out), preempt_at, agreement_signal_at),
        nprocs=WORLD,
        join=True,
    )
    return [torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]


@pytest.mark.slow
def test_a_signal_inside_the_agreement_is_honoured_at_the_next_boundary_on_every_rank(
    tmp_path,
) -> None:
    """Rank 0 receives SIGUSR1 inside the all-reduce of step 4: both ranks stop after step 5."""
    first = _run(tmp_path / "run", tmp_path / "first-out", agreement_signal_at=4)
    assert [r["status"] for r in first] == ["preempted", "preempted"]
    assert first[0]["step"] == first[1]["step"] == 5
    files = sorted(p.name for p in (tmp_path / "run").glob("epoch=*.ckpt"))
    assert files == ["epoch=0000-step=000005.ckpt"]
    assert (
        read_checkpoint(tmp_path / "run" / files[0])["resume_state"]["save_reason"] == "preempted"
    )


def test_micro_steps_that_do_not_close_a_window_skip_the_all_reduce(tmp_path: Path) -> None:
    """Under DDP, accumulation of 4: one gradient all-reduce per optimizer step, not per batch."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()))
    dist.init_process_group("gloo", rank=0, world_size=1)
    try:
        torch.manual_seed(0)
        model = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(8, 1))
        reductions: list[int] = []

        def count(state, bucket):  # unannotated: DDP checks annotations against real types
            reductions.append(bucket.index())
            done = torch.futures.Future()
            done.set_result(bucket.buffer())
            return done

        model.register_comm_hook(None, count)
        config = GenericTrainerConfig(
            checkpoint=CheckpointConfig(root_dir=tmp_path, save_every_n_epochs=None),
            performance=PerformanceConfig(gradient_accumulation_steps=4),
            progress_bar=False,
        )
        trainer = GenericTrainer(config, model, torch.optim.SGD(model.parameters(), lr=0.1))
        trainer.set_training_step(lambda t, batch, *_: {"loss": t.model(batch["x"]).pow(2).mean()})
        trainer.fit([make_loader(Features(32), batch_size=4)], max_epochs=1)  # 8 batches
        assert trainer.state.global_step == 2
        assert reductions == [0, 0]  # one bucket, once per window
    finally:
        dist.destroy_process_group()
