"""Hugging Face ``datasets`` iterables through make_loader and GenericTrainer: exact across passes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

datasets = pytest.importorskip(
    "datasets", reason="Hugging Face datasets is an optional test dependency (extra 'frameworks')"
)

from statefuldata import make_loader, verify_resume  # noqa: E402
from statefuldata.hints import HF_SHUFFLE_BUFFER  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
SAMPLES, BATCH = 24, 4
WORKERS = [
    pytest.param(0, False, id="0-workers"),
    pytest.param(2, False, id="2-workers", marks=pytest.mark.slow),
    pytest.param(2, True, id="2-persistent-workers", marks=pytest.mark.slow),
]


def stream(shuffle: bool = False):
    ds = datasets.Dataset.from_dict({"id": list(range(SAMPLES))}).to_iterable_dataset(num_shards=4)
    return ds.shuffle(seed=1, buffer_size=8) if shuffle else ds


def factory(num_workers: int, persistent: bool = False, shuffle: bool = False):
    return lambda: make_loader(
        stream(shuffle),
        batch_size=BATCH,
        num_workers=num_workers,
        persistent_workers=persistent,
    )


def ids(batches) -> list[int]:
    return [i for batch in batches for i in batch["id"].tolist()]


@pytest.mark.parametrize(("num_workers", "persistent"), WORKERS)
def test_verify_resume_passes_at_every_point_with_resume_of_resume(num_workers, persistent) -> None:
    # 3 passes: after a resume in epoch 0 or 1, every later pass must start from the beginning
    report = verify_resume(factory(num_workers, persistent), epochs=3)
    assert report.ok, report.first_mismatch
    assert report.points == tuple(range(report.total_batches + 1)) and report.total_batches == 18


@pytest.mark.parametrize(("num_workers", "persistent"), WORKERS)
def test_later_passes_after_a_resume_are_whole_passes(num_workers, persistent) -> None:
    build = factory(num_workers, persistent)
    loader = build()
    iterator = iter(loader)
    head = ids(next(iterator) for _ in range(2))  # epoch 0, mid-pass
    resumed = build()
    resumed.load_state_dict(loader.state_dict())
    del iterator
    passes = [ids(resumed) for _ in range(3)]
    assert sorted(head + passes[0]) == list(range(SAMPLES))
    assert all(sorted(p) == list(range(SAMPLES)) for p in passes[1:])
    assert resumed.epoch == 2


def test_epochs_reshuffle_through_the_forwarded_set_epoch() -> None:
    loader = factory(0, shuffle=True)()
    got = [ids(loader) for _ in range(3)]
    own = []
    reference = stream(shuffle=True)
    for epoch in range(3):
        reference.set_epoch(epoch)
        own.append([row["id"] for row in reference])
    assert got == own and len({tuple(p) for p in got}) == 3
    fresh = factory(0, shuffle=True)()
    assert [ids(fresh) for _ in range(3)] == got  # deterministic


def test_verify_resume_flags_the_shuffle_buffer_and_says_what_to_use() -> None:
    report = verify_resume(factory(0, shuffle=True), epochs=2)
    assert not report.ok
    assert report.hint == HF_SHUFFLE_BUFFER
    assert "shuffle buffer that its state_dict does not store" in report.hint
    assert "make_loader(..., shuffle=True)" in report.hint


def _run(tmp_path: Path, name: str, workers: int, stop_after: int) -> str:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "tests.frameworks.hf_trainer_run",
            str(tmp_path / name),
            str(tmp_path / f"{name}.json"),
            str(workers),
            str(stop_after),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout.strip().splitlines()[-1]


@pytest.mark.slow
# One point through the trainer in a fresh process; verify_resume above checks every point.
@pytest.mark.parametrize(("workers", "stop_after"), [(2, 17)])
def test_generic_trainer_three_epochs_resumed_in_a_fresh_process(tmp_path, workers, stop_after):
    assert _run(tmp_path, "reference", workers, 0) == "completed"
    assert _run(tmp_path, "run", workers, stop_after) == "preempted"
    assert _run(tmp_path, "run", workers, 0) == "completed"
    reference = json.loads((tmp_path / "reference.json").read_text())
    resumed = json.loads((tmp_path / "run.json").read_text())
    assert len(reference) == 3 * 48
    assert all(sorted(reference[e * 48 : (e + 1) * 48]) == list(range(48)) for e in range(3))
    assert resumed == reference
