"""Ours against the best peer, one row per figure, read from a run's ``results.json``.

Every benchmark measures its baselines side by side with ours; this module picks, for each headline
figure, our value and the best value among the other tools measured in the same run (torchdata,
torch, Lightning Fabric, ``torch.distributed.checkpoint``, a hand-written loop), and states the
ratio ours / best peer. A peer that was not installed or not measured is absent from its row rather
than guessed. The README's headline table is this table, written from the committed results by
``python -m benchmarks.peers --readme`` and checked against them by the tests.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import attrs

from benchmarks.formatting import format_value

__all__ = ["Measured", "PeerFigure", "peer_figures", "peer_table", "update_readme"]

ROOT = Path(__file__).resolve().parents[1]
RESULTS_JSON = Path(__file__).resolve().parent / "results" / "results.json"
README = ROOT / "README.md"
BEGIN, END = "<!-- peers:begin -->", "<!-- peers:end -->"


@attrs.frozen
class Measured:
    """One tool's value for a figure; ``basis`` is empty when measured, else how it was obtained."""

    name: str
    value: float
    basis: str = ""


@attrs.frozen(kw_only=True)
class PeerFigure:
    """A figure measured for ours and for peers in one run.

    Attributes:
        kind: How values are formatted: ``"seconds"``, ``"bytes"``, ``"rate"`` (per second, in
            millions), ``"count_rate"`` (per second) or ``"count"``.
        higher_is_better: True for throughputs; the best peer is then the largest value.
    """

    figure: str
    kind: str
    ours: Measured
    peers: tuple[Measured, ...] = attrs.field(converter=tuple)
    higher_is_better: bool = False

    @property
    def best(self) -> Measured | None:
        """The best peer (smallest time or size, largest rate), or None when none was measured."""
        usable = [p for p in self.peers if math.isfinite(p.value) and p.value > 0]
        if not usable:
            return None
        pick = max if self.higher_is_better else min
        return pick(usable, key=lambda p: p.value)

    @property
    def ratio(self) -> float:
        """Ours / the best peer (for a time, below 1 is ours faster; for a rate, above 1)."""
        best = self.best
        return self.ours.value / best.value if best is not None else math.nan

    @property
    def ours_leads(self) -> bool:
        ratio = self.ratio
        return math.isfinite(ratio) and (ratio >= 1 if self.higher_is_better else ratio <= 1)


def _cell(m: Measured, kind: str) -> str:
    if kind in ("count_rate", "count"):
        text = f"{m.value:,.0f}" + ("/s" if kind == "count_rate" else "")
    else:
        text = format_value(m.value, kind)
    return f"~{text} ({m.basis})" if m.basis else text


def _basis(row: dict[str, Any], key: str) -> str:
    basis = str(row.get(f"{key}_basis") or "measured")
    return "" if basis == "measured" else basis.split(":")[0]


def _tables(results: dict[str, Any], name: str) -> list[dict[str, Any]]:
    bench = results.get(name) or {}
    return list(bench.get("tables") or []) if bench.get("status", "ok") == "ok" else []


def _restore(results: dict[str, Any]) -> Iterator[PeerFigure]:
    peers = {"torchdata": "torchdata StatefulDataLoader", "naive": "DataLoader, skip k batches"}
    for table in _tables(results, "restore"):
        kind = "map" if table["title"].startswith("map") else "iterable"
        rows = [r for r in table["rows"] if r.get("state_seconds") is not None]
        for workers in sorted({r["workers"] for r in rows}):
            at = [r for r in rows if r["workers"] == workers]
            row = max(at, key=lambda r: r["k"])
            yield PeerFigure(
                figure=f"restore at batch {row['k']:,}, {kind} data, {workers} workers",
                kind="seconds",
                ours=Measured("ours", row["state_seconds"], _basis(row, "state")),
                peers=[
                    Measured(label, row[f"{key}_seconds"], _basis(row, key))
                    for key, label in peers.items()
                    if row.get(f"{key}_seconds") is not None
                ],
            )


def _restore_trainer(results: dict[str, Any]) -> Iterator[PeerFigure]:
    for table in _tables(results, "restore"):
        if not table["title"].startswith("GenericTrainer resumed"):
            continue
        k = max(r["k"] for r in table["rows"])
        rows = _variants(table, lambda r, k=k: r["k"] == k)
        ours = next((v for name, v in rows.items() if name.startswith("ours")), None)
        if ours is None:
            continue
        peers = {name: v for name, v in rows.items() if not name.startswith("ours")}
        for key, kind, what in (("items", "count", "items loaded"), ("seconds", "seconds", "time")):
            yield PeerFigure(
                figure=f"trainer resumed at step {k:,} (2 workers): {what} before the first step",
                kind=kind,
                ours=Measured("ours", ours[key]),
                peers=[Measured(name, v[key]) for name, v in peers.items()],
            )


def _variants(table: dict[str, Any], where: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    return {r["variant"]: r for r in table["rows"] if where(r)}


def _sampler(results: dict[str, Any]) -> Iterator[PeerFigure]:
    tables = _tables(results, "sampler")
    if len(tables) < 2:
        return
    start, rate = tables[0], tables[1]
    n = max(r["n"] for r in start["rows"])
    at = _variants(start, lambda r: r["n"] == n)
    ours = at.get("ShuffledSampler")
    peers = {k: v for k, v in at.items() if k != "ShuffledSampler"}
    if ours is not None:
        for key, kind, what in (
            ("seconds", "seconds", "time"),
            ("rss_peak_bytes", "bytes", "memory"),
        ):
            yield PeerFigure(
                figure=f"epoch start at n={n:,}: {what} to the first batch",
                kind=kind,
                ours=Measured("ours", ours[key]),
                peers=[Measured(k, v[key]) for k, v in peers.items() if v.get(key) is not None],
            )
    n = max(r["n"] for r in rate["rows"])
    at = _variants(rate, lambda r: r["n"] == n)
    if "ShuffledSampler" in at:
        # Peers are samplers; diagnostic rows (parts of ours, a bare permutation) are not.
        samplers = {k: v for k, v in at.items() if k.endswith("RandomSampler")}
        yield PeerFigure(
            figure=f"shuffled indices per second over an epoch of n={n:,}",
            kind="rate",
            higher_is_better=True,
            ours=Measured("ours", at["ShuffledSampler"]["rate"]),
            peers=[Measured(k, v["rate"]) for k, v in samplers.items()],
        )


def _state_size(results: dict[str, Any]) -> Iterator[PeerFigure]:
    for table in _tables(results, "state_size")[:1]:
        row = max(table["rows"], key=lambda r: r["n"])
        yield PeerFigure(
            figure=f"data state at n={row['n']:,}: bytes",
            kind="bytes",
            ours=Measured("ours", row["ours_bytes"]),
            peers=[Measured("torchdata StatefulDataLoader", row["torchdata_bytes"])],
        )


def _loops(results: dict[str, Any]) -> Iterator[PeerFigure]:
    for table in _tables(results, "trainer")[:1]:
        rows = {r["variant"]: r for r in table["rows"]}
        ours = rows.get("GenericTrainer, no periodic checkpoint")
        if ours is not None:
            yield PeerFigure(
                figure="training step (2-layer MLP, batch 64, CPU)",
                kind="seconds",
                ours=Measured("ours", ours["seconds"]),
                peers=[
                    Measured(k, v["seconds"])
                    for k, v in rows.items()
                    if not k.startswith("GenericTrainer")
                ],
            )
    for table in _tables(results, "scheduler")[:1]:
        yield from _throughput(table, "DataLoaderManager", "weighted mix of 3 loaders")


def _loader(results: dict[str, Any]) -> Iterator[PeerFigure]:
    for table in _tables(results, "scheduler"):
        if table["title"].startswith("One loader"):
            yield from _throughput(table, "make_loader", "one shuffled loader")


def _throughput(table: dict[str, Any], ours: str, what: str) -> Iterator[PeerFigure]:
    """Batches per second of the ``ours`` variant against the others, per worker count."""
    for workers in sorted({r["workers"] for r in table["rows"]}):
        rows = _variants(table, lambda r, w=workers: r["workers"] == w)
        if ours in rows:
            yield PeerFigure(
                figure=f"{what}, {workers} workers: batches per second",
                kind="count_rate",
                higher_is_better=True,
                ours=Measured("ours", _per_second(rows[ours])),
                peers=[Measured(k, _per_second(v)) for k, v in rows.items() if k != ours],
            )


def _per_second(row: dict[str, Any]) -> float:
    value = row["batches_per_s"]
    return float(value.replace(",", "")) if isinstance(value, str) else float(value)


_CHECKPOINT = (
    ("save", "ours: sync save", "save"),
    ("async save", "ours: async save, stall", "training stall of an asynchronous save"),
    (
        "async save in a training step",
        "ours: async save, deferred copy (the trainer's), stall",
        "training stall of an asynchronous save inside a training step",
    ),
    ("restore", "ours: restore_from_checkpoint (verified)", "restore into the model"),
)
_NOT_PEERS = re.compile(r"^(ours|raw write|one CRC|torch\.save, atomic)")


def _checkpoint(results: dict[str, Any]) -> Iterator[PeerFigure]:
    for table in _tables(results, "checkpoint")[:1]:
        sizes = sorted({r["size"] for r in table["rows"]})
        cases = [(s, size) for s in _CHECKPOINT for size in sizes if size == sizes[-1]]
        cases.insert(0, (_CHECKPOINT[0], sizes[0]))  # a small model's save: fixed costs show
        for (section, ours_label, what), size in cases:
            rows = _variants(
                table, lambda r, s=section, z=size: r["section"] == s and r["size"] == z
            )
            if ours_label not in rows:
                continue
            peers = {k: v for k, v in rows.items() if not _NOT_PEERS.match(k)}
            if section.startswith("async save"):  # only another async save's stall compares
                peers = {k: v for k, v in peers.items() if k.endswith("stall")}
            yield PeerFigure(
                figure=f"checkpoint of {format_value(size, 'bytes')}: {what}",
                kind="seconds",
                ours=Measured("ours", rows[ours_label]["median_s"]),
                peers=[Measured(k, v["median_s"]) for k, v in peers.items()],
            )


_SOURCES = (_restore, _restore_trainer, _sampler, _state_size, _loops, _loader, _checkpoint)


def peer_figures(payload: dict[str, Any]) -> list[PeerFigure]:
    """Every figure with at least one peer measured, from a ``results.json`` payload."""
    results = payload.get("benchmarks", {})
    return [f for source in _SOURCES for f in source(results) if f.best is not None]


def _ratio(figure: PeerFigure) -> str:
    ratio = figure.ratio
    text = format_value(ratio, "ratio")
    return f"**{text}**" if figure.ours_leads else text


def peer_table(payload: dict[str, Any]) -> list[str]:
    """The Markdown table: figure, ours, best peer, ours / best peer, other peers."""
    lines = [
        "| figure | ours | best peer | ours / best peer | other peers |",
        "|---|---|---|---|---|",
    ]
    for f in peer_figures(payload):
        best = f.best
        assert best is not None
        others = "; ".join(f"{p.name}: {_cell(p, f.kind)}" for p in f.peers if p is not best)
        lines.append(
            f"| {f.figure} | {_cell(f.ours, f.kind)} | {best.name}: {_cell(best, f.kind)} "
            f"| {_ratio(f)} | {others or '–'} |"
        )
    lines += [
        "",
        "Ours / best peer: lower is better for times and sizes, higher for rates; bold where ours"
        " leads. `~` marks a value extrapolated or interpolated, not measured (see the tables of benchmarks/results/results.md).",
    ]
    return lines


def readme_block(payload: dict[str, Any]) -> str:
    """The README's headline block (between the markers) for ``payload``."""
    return "\n".join([BEGIN, *peer_table(payload), END])


def update_readme(payload: dict[str, Any], readme: Path = README) -> bool:
    """Rewrite the README block from ``payload``; True when the file changed."""
    text = readme.read_text(encoding="utf-8")
    start, end = text.index(BEGIN), text.index(END) + len(END)
    new = text[:start] + readme_block(payload) + text[end:]
    if new != text:
        readme.write_text(new, encoding="utf-8")
    return new != text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.peers", description=__doc__)
    parser.add_argument("--results", type=Path, default=RESULTS_JSON)
    parser.add_argument("--readme", action="store_true", help="rewrite README.md's headline table")
    args = parser.parse_args(argv)
    payload = json.loads(args.results.read_text(encoding="utf-8"))
    if args.readme:
        changed = update_readme(payload)
        print(f"README.md {'updated' if changed else 'already current'}")
    else:
        print("\n".join(peer_table(payload)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
