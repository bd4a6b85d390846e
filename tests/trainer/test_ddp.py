"""GenericTrainer under real torchrun launches (gloo on 127.0.0.1): DDP, preemption, one file, nodes."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from trainer.checkpoints import read_checkpoint

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(*launch: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", *launch, "-m", "tests.trainer.ddp_run"]


def _one_node(root: Path, out: Path, *extra: str) -> list[dict]:
    port = _port()
    cmd = _torchrun(
        "--nproc_per_node=2", "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{port}"
    )
    done = subprocess.run(
        [*cmd, str(root), str(out), *extra], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-6000:]
    return [torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(2)]


def _two_nodes(root: Path, out: Path, *extra: str) -> list[dict]:
    """Two torchrun launches, one per 'node', meeting at a c10d rendezvous on 127.0.0.1."""
    port = _port()
    launches = [
        subprocess.Popen(
            [
                *_torchrun(
                    "--nnodes=2",
                    f"--node_rank={node}",
                    "--nproc_per_node=1",
                    "--rdzv-backend=c10d",
                    f"--rdzv-endpoint=127.0.0.1:{port}",
                    "--rdzv-id=statefuldata-test",
                ),
                str(root),
                str(out),
                *extra,
            ],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for node in (0, 1)
    ]
    for launch in launches:
        stdout, stderr = launch.communicate(timeout=300)
        assert launch.returncode == 0, stdout[-3000:] + stderr[-6000:]
    return [torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(2)]


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> list[dict]:
    base = tmp_path_factory.mktemp("ddp-ref")
    return _one_node(base / "run", base / "out")


def _check_preempted_and_resumed(first: list[dict], resumed: list[dict], reference, run: Path):
    assert [r["status"] for r in first] == ["preempted", "preempted"]
    assert first[0]["step"] == first[1]["step"] == 7  # rank 1's signal after batch 7, seen by both
    files = sorted(p.name for p in run.glob("epoch=*.ckpt"))
    assert files == ["epoch=0000-step=000007.ckpt"]  # one checkpoint, written by rank 0
    assert first[1]["paths"] == [None] and first[0]["paths"] == [str(run / files[0])]
    rank_states = read_checkpoint(run / files[0])["dataloader_manager_state"]["rank_states"]
    assert len(rank_states) == 2  # every rank's position in the one file
    assert [r["status"] for r in resumed] == ["completed", "completed"]
    for rank in range(2):
        assert first[rank]["seen"] + resumed[rank]["seen"] == reference[rank]["seen"]
        for key, value in reference[rank]["params"].items():
            assert torch.equal(resumed[rank]["params"][key], value), (rank, key)


def test_two_ranks_step_together_on_disjoint_samples_and_resume_exactly(tmp_path, reference):
    a, b = reference
    assert a["status"] == b["status"] == "completed" and a["world"] == 2
    assert len(a["digests"]) == len(b["digests"]) > 10
    assert a["digests"] == b["digests"]  # identical parameters on both ranks after every step
    for key, value in a["params"].items():
        assert torch.equal(value, b["params"][key]), key
    per_epoch = len(a["seen"]) // 2
    for epoch in range(2):
        ids_a = {
            i for batch in a["seen"][epoch * per_epoch : (epoch + 1) * per_epoch] for i in batch
        }
        ids_b = {
            i for batch in b["seen"][epoch * per_epoch : (epoch + 1) * per_epoch] for i in batch
        }
        assert ids_a and ids_b and ids_a.isdisjoint(ids_b)  # the ranks split every epoch
    first = _one_node(tmp_path / "run", tmp_path / "first", "--signal-rank=1", "--signal-at=7")
    resumed = _one_node(tmp_path / "run", tmp_path / "resumed")
    _check_preempted_and_resumed(first, resumed, reference, tmp_path / "run")


def test_two_node_launch_runs_the_same_job(tmp_path, reference):
    first = _two_nodes(tmp_path / "run", tmp_path / "first", "--signal-rank=1", "--signal-at=7")
    resumed = _two_nodes(tmp_path / "run", tmp_path / "resumed")
    _check_preempted_and_resumed(first, resumed, reference, tmp_path / "run")


def test_accumulation_under_ddp_equals_one_process_on_the_same_global_batches(tmp_path):
    """4 micro-steps of 4 samples on each of 2 ranks = 4 micro-steps of 8 samples in one process.

    Tolerance: only the floating-point order of the gradient reduction differs (a mean of two
    per-rank means against one mean of 8), so parameters agree to rtol=1e-5, atol=1e-6.
    """
    ddp = _one_node(tmp_path / "ddp", tmp_path / "ddp-out", "--accumulate=4", "--epochs=1")
    single = subprocess.run(
        [
            sys.executable,
            "-m",
            "tests.trainer.ddp_run",
            str(tmp_path / "one"),
            str(tmp_path / "one-out"),
            "--accumulate=4",
            "--epochs=1",
            "--batch-size=8",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert single.returncode == 0, single.stderr[-4000:]
    one = torch.load(tmp_path / "one-out" / "rank0.pt", weights_only=True)
    assert one["world"] == 1 and one["step"] == ddp[0]["step"] == ddp[1]["step"]
    merged = [sorted(a + b) for a, b in zip(ddp[0]["seen"], ddp[1]["seen"])]
    assert merged == [sorted(batch) for batch in one["seen"]]  # the same global batches
    for key, value in one["params"].items():
        torch.testing.assert_close(ddp[0]["params"][key], value, rtol=1e-5, atol=1e-6)
        assert not torch.equal(value, torch.zeros_like(value))
