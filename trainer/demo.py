"""``python -m trainer demo``: preempt a training run mid-epoch in a subprocess, resume it, compare.

1. An uninterrupted reference run trains a small model on a WEIGHTED mix of a map-style dataset and
   an iterable stream (two worker processes each).
2. The same run starts in a subprocess; at a batch in the middle of epoch 1 it waits, this process
   sends it a real SIGTERM, and it saves at the next optimizer step and exits "preempted".
3. A fresh trainer (different ambient seed) auto-resumes from the checkpoint file and finishes.
4. The final parameters are compared with the reference, tensor by tensor.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset, IterableDataset, get_worker_info

from statefuldata import MultiDataLoaderConfig, make_loader
from trainer.callbacks import Callback
from trainer.config import CheckpointConfig, GenericTrainerConfig, PerformanceConfig
from trainer.inspect import format_summary, summarize_checkpoint
from trainer.loop import GenericTrainer

__all__ = ["add_demo_parser", "run_demo"]

EPOCHS = 3
STEPS_PER_EPOCH = 60


def _sample(sample_id: int) -> dict[str, Any]:
    g = torch.Generator().manual_seed(sample_id)
    x = torch.randn(16, generator=g)
    return {"id": sample_id, "x": x, "y": (x[:8].sum() - x[8:].sum()).reshape(1) / 4}


class DemoMap(Dataset):
    """Map-style: 2,000 synthetic regression samples, a pure function of their id."""

    def __len__(self) -> int:
        return 2000

    def __getitem__(self, index: int) -> dict[str, Any]:
        return _sample(index)


class DemoStream(IterableDataset):
    """Iterable: a stream of 1,200 samples sharded over workers, checkpointable by position."""

    def __init__(self) -> None:
        self._start = self._position = 0

    def __len__(self) -> int:
        return 1200

    def __iter__(self):
        self._position, self._start = self._start, 0
        return self._items()

    def _items(self):
        info = get_worker_info()
        ids = range(info.id if info else 0, 1200, info.num_workers if info else 1)
        while self._position < len(ids):
            self._position += 1
            yield _sample(100_000 + ids[self._position - 1])

    def state_dict(self) -> dict[str, int]:
        return {"position": self._position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self._start = state["position"]


class _WaitForSignalAt(Callback):
    """In the child: at batch ``at`` tell the parent (flag file), then wait until it has signalled.

    The parent sends SIGTERM, then deletes the flag file; the handler has run by the time the child
    sees the file gone (the signal interrupts its sleep).
    """

    def __init__(self, at: int, flag_file: Path) -> None:
        self.at, self.flag_file, self.seen = at, flag_file, 0

    def on_train_batch_end(
        self, trainer, outputs, batch_idx, dataloader_idx, dataloader_name
    ) -> None:
        self.seen += 1
        if self.seen == self.at:
            self.flag_file.write_text(str(os.getpid()))
            deadline = time.monotonic() + 60
            while self.flag_file.exists() and time.monotonic() < deadline:
                time.sleep(0.01)


def build_trainer(
    root: Path, *, ambient_seed: int = 0, callbacks: tuple[Callback, ...] = ()
) -> tuple[GenericTrainer, list[Any]]:
    torch.manual_seed(ambient_seed)
    model = torch.nn.Sequential(
        torch.nn.Linear(16, 64), torch.nn.GELU(), torch.nn.Dropout(0.1), torch.nn.Linear(64, 1)
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
        optimizer, T_max=EPOCHS * STEPS_PER_EPOCH // 2
    )
    config = GenericTrainerConfig(
        seed=7,
        train_loader_config=MultiDataLoaderConfig(
            sampling_strategy="weighted",
            dataloader_weights=[0.6, 0.4],
            dataloader_names=["map", "stream"],
            epoch_length_policy="fixed_num_steps",
            steps_per_epoch=STEPS_PER_EPOCH,
        ),
        checkpoint=CheckpointConfig(root_dir=root, save_every_n_steps=20, max_checkpoints=3),
        performance=PerformanceConfig(gradient_accumulation_steps=2, clip_grad_norm=1.0),
        progress_bar=False,
        log_every_n_steps=10,
    )
    trainer = GenericTrainer(config, model, optimizer, scheduler, callbacks=callbacks)
    trainer.set_training_step(
        lambda t, batch, i, di, name: {
            "loss": torch.nn.functional.mse_loss(t.model(batch["x"]), batch["y"])
        }
    )
    loaders = [
        make_loader(DemoMap(), batch_size=32, shuffle=True, seed=7, num_workers=2),
        make_loader(DemoStream(), batch_size=32, num_workers=2),
    ]
    return trainer, loaders


def _child(root: Path, at: int, flag_file: Path) -> int:
    trainer, loaders = build_trainer(root, callbacks=(_WaitForSignalAt(at, flag_file),))
    result = trainer.fit(loaders, max_epochs=EPOCHS)
    print(
        f"child: {result.status} at step {result.global_step}, checkpoint {result.checkpoint_path}"
    )
    return 0 if result.status == "preempted" else 3


def run_demo(args: argparse.Namespace) -> int:
    if args.child:
        return _child(Path(args.root), args.at, Path(args.flag))
    if args.out is not None:
        work = Path(args.out)
        work.mkdir(parents=True, exist_ok=True)
    else:
        work = Path(tempfile.mkdtemp(prefix="statefuldata-demo-"))
    try:
        return _demo(work)
    finally:
        if args.keep or args.out is not None:
            print(
                f"demo: the runs are in {work} (reference/, preempted/: checkpoints, metrics.csv)"
            )
        else:
            shutil.rmtree(work, ignore_errors=True)
            print(f"demo: removed its folder {work} (pass --keep or --out DIR to keep the runs)")


def _demo(work: Path) -> int:
    at = STEPS_PER_EPOCH + STEPS_PER_EPOCH // 2 + 1  # mid epoch 1, inside an accumulation window
    print(
        f"demo: {EPOCHS} epochs x {STEPS_PER_EPOCH} batches, WEIGHTED 0.6/0.4 over a map dataset and a stream"
    )

    started = time.perf_counter()
    reference, loaders = build_trainer(work / "reference")
    reference.fit(loaders, max_epochs=EPOCHS)
    reference_s = time.perf_counter() - started
    print(
        f"1. uninterrupted reference run: {reference.state.global_step} optimizer steps in {reference_s:.1f}s"
    )

    root, flag = work / "preempted", work / "at_batch"
    child = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "trainer",
            "demo",
            "--child",
            "--root",
            str(root),
            "--at",
            str(at),
            "--flag",
            str(flag),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    while not flag.exists() and child.poll() is None:
        time.sleep(0.02)
    if child.poll() is None:
        child.send_signal(signal.SIGTERM)
        flag.unlink()
    output, _ = child.communicate(timeout=120)
    print(
        f"2. subprocess preempted by SIGTERM at batch {at} (epoch 1): {output.strip().splitlines()[-1] if output.strip() else ''}"
    )
    if child.returncode != 0:
        print(output)
        print("demo: the subprocess did not stop as preempted")
        return 1

    checkpoint = root / "latest.ckpt"
    size = checkpoint.resolve().stat().st_size
    print(f"   the preemption checkpoint {checkpoint.resolve().name} ({size:,} bytes):")
    print("   " + format_summary(summarize_checkpoint(checkpoint)).replace("\n", "\n   "))
    started = time.perf_counter()
    resumed, loaders = build_trainer(root, ambient_seed=12345)
    result = resumed.fit(loaders, max_epochs=EPOCHS)
    resume_s = time.perf_counter() - started
    print(
        f"3. fresh trainer resumed from {checkpoint.name} and finished: {result.status}, {resume_s:.1f}s"
    )

    expected, got = reference.model.state_dict(), resumed.model.state_dict()
    equal = expected.keys() == got.keys() and all(
        torch.equal(expected[k], got[k]) for k in expected
    )
    print(f"timings: reference {reference_s:.1f}s, resume to the end {resume_s:.1f}s")
    print(
        f"final parameters equal to the uninterrupted run: {'equal' if equal else 'NOT equal'} ({equal})"
    )
    return 0 if equal else 1


def add_demo_parser(subparsers: Any) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("demo", help="preempt a run in a subprocess, resume it, compare")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder of the runs")
    parser.add_argument(
        "--out", help="write the runs to this folder (kept) instead of a temporary one"
    )
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--root", help=argparse.SUPPRESS)
    parser.add_argument("--at", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--flag", help=argparse.SUPPRESS)
    parser.set_defaults(func=run_demo)
    return parser
