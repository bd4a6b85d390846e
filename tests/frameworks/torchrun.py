"""Launch a test script on several CPU processes under torchrun (gloo on 127.0.0.1); read results."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]


def launch(module: str, processes: int, *args: str) -> None:
    """Run ``python -m module *args`` on ``processes`` processes; fail with its output if it fails."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            f"--nproc_per_node={processes}",
            "--rdzv-backend=c10d",
            f"--rdzv-endpoint=127.0.0.1:{port}",
            "-m",
            module,
            *args,
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-6000:]


def ranks(folder: Path, processes: int) -> list[dict]:
    """What each rank recorded in ``folder`` (``rank<r>.pt``)."""
    return [torch.load(folder / f"rank{r}.pt", weights_only=True) for r in range(processes)]


def check_resumed(runs: Path, stop: int, total: int, processes: int) -> None:
    """Each rank's run stopped after ``stop`` of ``total`` steps (``runs/stop<stop>/first``) and
    resumed in fresh processes (``.../resumed``) saw the batches of the uninterrupted run
    (``runs/reference``) and ends with its parameters."""
    reference = ranks(runs / "reference", processes)
    first = ranks(runs / f"stop{stop}" / "first", processes)
    resumed = ranks(runs / f"stop{stop}" / "resumed", processes)
    for rank in range(processes):
        assert len(first[rank]["seen"]) == stop
        assert len(resumed[rank]["seen"]) == total - stop
        assert first[rank]["seen"] + resumed[rank]["seen"] == reference[rank]["seen"]
        for got, expected in zip(
            resumed[rank]["parameters"], reference[rank]["parameters"], strict=True
        ):
            assert torch.equal(got, expected)
