"""Elastic resume under real torchrun launches (gloo on 127.0.0.1) and in-process single runs.

A run preempted after K steps at one world size is resumed at another (or with another
``num_workers``); the global steps it trains after the resume hold exactly the samples (same loader,
same multiset of ids) of the uninterrupted run's steps K onwards. The uninterrupted reference runs
at world size 1: the global order is the same at every world size with the same global batch.
"""

from __future__ import annotations

import logging
import socket
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest
import torch

from statefuldata import IncompatibleStateError
from tests.trainer import elastic_run

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow
STEPS = elastic_run.EPOCHS * (48 + 32 + 16) // 8  # global batch 8: 12 steps per epoch


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(out: Path, *jobs: list[str]) -> list[list[dict]]:
    """One 2-rank launch running ``jobs`` one after the other; per job, each rank's record."""
    port = _port()
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        "--rdzv-backend=c10d",
        f"--rdzv-endpoint=127.0.0.1:{port}",
        "-m",
        "tests.trainer.elastic_run",
        str(out),
    ]
    for job in jobs:
        cmd += ["::", *job]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-6000:]
    return [
        [torch.load(out / f"job{j}-rank{r}.pt", weights_only=True) for r in range(2)]
        for j in range(len(jobs))
    ]


def _global_steps(records: list[dict]) -> dict[int, tuple[int, list[int]]]:
    """Global step -> (loader index, sorted ids of every rank's batch at that step)."""
    loaders: dict[int, set[int]] = defaultdict(set)
    ids: dict[int, list[int]] = defaultdict(list)
    for record in records:
        for step, loader, batch in record["seen"]:
            loaders[step].add(loader)
            ids[step] += batch
    assert all(len(v) == 1 for v in loaders.values())  # every rank drew the same loader
    return {step: (loaders[step].pop(), sorted(ids[step])) for step in sorted(ids)}


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict[int, tuple[int, list[int]]]:
    record = elastic_run.main([str(tmp_path_factory.mktemp("elastic-ref"))])
    assert record["status"] == "completed" and record["step"] == STEPS
    steps = _global_steps([record])
    assert sorted(steps) == list(range(STEPS))
    return steps


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    """The 2-rank parts of every test in one torchrun launch (a launch costs seconds of start-up):
    job 0 preempts a run at step 5, job 1 resumes at 2 ranks a run preempted in-process at 1 rank
    at step 14, job 2 preempts a run with an iterable source at step 7."""
    base = tmp_path_factory.mktemp("elastic")
    one_rank = [elastic_run.main([str(base / "up"), "--signal-at", "14"])]
    jobs = _torchrun(
        base / "out",
        [str(base / "down"), "--signal-at", "5"],
        [str(base / "up")],
        [str(base / "iterable"), "--iterable", "--signal-at", "7"],
    )
    return {"base": base, "down": jobs[0], "up_first": one_rank, "up": jobs[1], "iterable": jobs[2]}


def _check(first, resumed, reference, k: int) -> None:
    assert [r["status"] for r in first] == ["preempted"] * len(first)
    assert all(r["step"] == k for r in first)
    assert _global_steps(first) == {s: reference[s] for s in range(k)}
    assert all(r["status"] == "completed" and r["step"] == STEPS for r in resumed)
    assert _global_steps(resumed) == {s: reference[s] for s in range(k, STEPS)}


def test_loaders_shard_by_the_process_group_without_rank_arguments(runs) -> None:
    ranks = runs["down"]
    assert [r["world"] for r in ranks] == [2, 2]
    for (step0, loader0, ids0), (step1, loader1, ids1) in zip(ranks[0]["seen"], ranks[1]["seen"]):
        assert step0 == step1 and loader0 == loader1
        assert len(ids0) == len(ids1) == 4 and not set(ids0) & set(ids1)  # disjoint halves


def test_explicit_rank_and_world_size_win_over_the_process_group(runs) -> None:
    out = runs["base"] / "out"
    probes = [torch.load(out / f"probe-rank{r}.pt", weights_only=True) for r in range(2)]
    assert [p["default"] for p in probes] == [[0, 2], [1, 2]]
    assert [p["explicit"] for p in probes] == [[0, 1], [0, 1]]
    assert all(
        "'rank' must be < world_size (got rank=3, world_size=2)" in p["error"] for p in probes
    )


def test_two_ranks_resume_at_one(runs, reference) -> None:
    resumed = [elastic_run.main([str(runs["base"] / "down")])]
    _check(runs["down"], resumed, reference, 5)


def test_one_rank_resumes_at_two_across_an_epoch_boundary(runs, reference) -> None:
    _check(runs["up_first"], runs["up"], reference, 14)  # epoch 1 starts at step 12


def test_num_workers_0_to_2_resumes_mid_prefetch(tmp_path, reference) -> None:
    first = [elastic_run.main([str(tmp_path / "run"), "--signal-at", "7"])]
    resumed = [elastic_run.main([str(tmp_path / "run"), "--workers", "2"])]
    _check(first, resumed, reference, 7)


def test_an_iterable_under_a_world_size_change_is_refused_or_restarted(
    runs, caplog, reference
) -> None:
    first, root = runs["iterable"], str(runs["base"] / "iterable")
    assert [r["status"] for r in first] == ["preempted", "preempted"]
    with pytest.raises(
        IncompatibleStateError,
        match=r"cannot resume the train loaders \['c'\] under another layout \('c': saved world "
        r"size 2, num_workers 0, current world size 1, num_workers 0\).*"
        r"PreemptionConfig\(restart_incompatible_sources=True\)",
    ):
        elastic_run.main([root, "--iterable"])
    with caplog.at_level(logging.WARNING, logger="statefuldata"):
        resumed = elastic_run.main([root, "--iterable", "--restart"])
    assert "Restarting the current pass of the train loaders ['c']" in caplog.text
    assert resumed["status"] == "completed" and resumed["step"] == STEPS
    before, after = _global_steps(first), _global_steps([resumed])
    drawn_before = [ids for _, (loader, ids) in sorted(before.items()) if loader == 2]
    drawn_after = [ids for _, (loader, ids) in sorted(after.items()) if loader == 2]
    # Loader c had handed out its first global batch (step 5); at world size 1 its pass starts
    # over, so that batch comes again, followed by the rest of the pass.
    assert drawn_before == [list(range(2000, 2008))]
    assert drawn_after[:2] == [list(range(2000, 2008)), list(range(2008, 2016))]
    # Everything else resumed exactly: the schedule, and what the map-style loaders a and b drew
    # (the reference's loader c reads the same ids from a map-style dataset).
    assert sorted(after) == list(range(7, STEPS))
    assert [after[s][0] for s in after] == [reference[s][0] for s in after]
    assert all(after[s] == reference[s] for s in after if after[s][0] != 2)
