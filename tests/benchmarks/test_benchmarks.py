"""Smoke test of ``python -m benchmarks --quick``: it runs, and its output files have the right shape.

The numbers themselves are not checked (timings on a shared CI machine are noise); the benchmark
report says whether the targets were met.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.peers import peer_figures

ROOT = Path(__file__).resolve().parents[2]
BENCHMARKS = (
    "restore",
    "sampler",
    "scheduler",
    "trainer",
    "state_size",
    "per_sample_seed",
    "shuffle_buffer",
    "checkpoint",
)
TIMEOUT_S = 240


def _finite_numbers(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess]:
    out = tmp_path_factory.mktemp("bench")
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick", "--no-progress", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )
    return out, done


@pytest.mark.slow
@pytest.mark.timeout(TIMEOUT_S + 30)
def test_quick_run_succeeds(quick_run: tuple[Path, subprocess.CompletedProcess]) -> None:
    _, done = quick_run
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "| benchmark | headline ratio |" in done.stdout


@pytest.mark.slow
@pytest.mark.timeout(TIMEOUT_S + 30)
def test_results_json_has_every_benchmark_and_finite_ratios(
    quick_run: tuple[Path, subprocess.CompletedProcess],
) -> None:
    out, _ = quick_run
    payload = json.loads((out / "results.json").read_text())
    machine = payload["machine"]
    for key in ("cpu_count", "python", "torch", "torchdata", "numpy"):
        assert machine[key], key
    assert set(payload["benchmarks"]) == set(BENCHMARKS)
    for name, result in payload["benchmarks"].items():
        assert result["status"] == "ok" or result["status"].startswith("skipped"), name
        if result["status"] != "ok":
            continue
        assert result["headlines"], name
        assert result["tables"] and all(t["rows"] for t in result["tables"]), name
        for headline in result["headlines"]:
            assert _finite_numbers(headline["value"]), (name, headline)
            assert isinstance(headline["passed"], bool)
            assert headline["target"].split()[0] in ("<=", ">=", "==")
    assert {h["benchmark"] for h in payload["headlines"]} <= set(BENCHMARKS)


@pytest.mark.slow
@pytest.mark.timeout(TIMEOUT_S + 30)
def test_markdown_table_and_plots_exist(
    quick_run: tuple[Path, subprocess.CompletedProcess],
) -> None:
    out, _ = quick_run
    markdown = (out / "results.md").read_text()
    assert "## Headline ratios" in markdown
    assert "| benchmark | headline ratio | value | target | met | basis |" in markdown
    payload = json.loads((out / "results.json").read_text())
    figures = [f for r in payload["benchmarks"].values() for f in r["figures"]]
    assert figures
    for name in figures:
        png = out / name
        assert png.stat().st_size > 1000, name
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
        assert f"]({name})" in markdown


@pytest.mark.slow
@pytest.mark.timeout(TIMEOUT_S + 30)
def test_a_fresh_run_yields_a_peer_figure_for_every_benchmark_with_peers(
    quick_run: tuple[Path, subprocess.CompletedProcess],
) -> None:
    out, _ = quick_run
    payload = json.loads((out / "results.json").read_text())
    figures = peer_figures(payload)
    assert "## Ours against the best peer" in (out / "results.md").read_text()
    for prefix in (
        "restore at batch",
        "epoch start",
        "data state",
        "training step",
        "weighted mix",
        "one shuffled loader",
        "trainer resumed at step",
    ):
        assert any(f.figure.startswith(prefix) for f in figures), (prefix, figures)
    if payload["benchmarks"]["checkpoint"]["status"] == "ok":
        assert any(f.figure.startswith("checkpoint of") for f in figures), figures
