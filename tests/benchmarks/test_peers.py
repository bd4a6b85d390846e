"""The peer table: best peer per figure, read from real results, and the README block kept in sync."""

from __future__ import annotations

import json
import math

import pytest

from benchmarks.peers import (
    BEGIN,
    END,
    README,
    RESULTS_JSON,
    Measured,
    PeerFigure,
    peer_figures,
    peer_table,
    readme_block,
)


def _committed() -> dict:
    return json.loads(RESULTS_JSON.read_text(encoding="utf-8"))


def test_best_peer_is_the_fastest_time_and_the_highest_rate() -> None:
    time = PeerFigure(
        figure="t",
        kind="seconds",
        ours=Measured("ours", 2.0),
        peers=[Measured("a", 4.0), Measured("b", 3.0), Measured("c", math.nan)],
    )
    assert time.best == Measured("b", 3.0)
    assert time.ratio == pytest.approx(2.0 / 3.0)
    assert time.ours_leads
    rate = PeerFigure(
        figure="r",
        kind="rate",
        higher_is_better=True,
        ours=Measured("ours", 2.0),
        peers=[Measured("a", 4.0), Measured("b", 3.0)],
    )
    assert rate.best == Measured("a", 4.0)
    assert rate.ratio == pytest.approx(0.5)
    assert not rate.ours_leads


def test_a_figure_without_any_measured_peer_is_left_out() -> None:
    lonely = PeerFigure(figure="x", kind="seconds", ours=Measured("ours", 1.0), peers=[])
    assert lonely.best is None
    assert math.isnan(lonely.ratio)
    payload = {"benchmarks": {"state_size": {"status": "failed: boom", "tables": []}}}
    assert peer_figures(payload) == []


def test_every_benchmark_with_peers_has_figures_in_the_committed_results() -> None:
    figures = peer_figures(_committed())
    names = [f.figure for f in figures]
    for expected in (
        "restore at batch",
        "epoch start at n=",
        "shuffled indices per second",
        "data state at n=",
        "training step",
        "weighted mix of 3 loaders",
        "checkpoint of 400 MB: save",
        "training stall of an asynchronous save",
        "restore into the model",
        "one shuffled loader",
        "trainer resumed at step",
    ):
        assert any(n.startswith(expected) or expected in n for n in names), (expected, names)
    for figure in figures:
        assert figure.ours.name == "ours"
        assert all(not p.name.startswith("ours") for p in figure.peers), figure
        assert math.isfinite(figure.ratio) and figure.ratio > 0, figure


def test_extrapolated_values_are_marked_in_the_table() -> None:
    payload = _committed()
    extrapolated = [p for f in peer_figures(payload) for p in (f.ours, *f.peers) if p.basis]
    lines = peer_table(payload)
    if extrapolated:
        assert any("~" in line for line in lines)
    assert lines[0].startswith("| figure | ours | best peer | ours / best peer |")


def test_readme_headline_table_is_the_one_of_the_committed_results() -> None:
    text = README.read_text(encoding="utf-8")
    block = text[text.index(BEGIN) : text.index(END) + len(END)]
    assert block == readme_block(_committed()), (
        "README.md's headline table is stale: run `python -m benchmarks.peers --readme`"
    )
