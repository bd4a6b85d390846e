"""Write a run's results: ``results.json``, a Markdown report ``results.md`` and PNG figures."""

from __future__ import annotations

import itertools
import json
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs

from benchmarks.formatting import format_value, power_label
from benchmarks.peers import peer_table
from benchmarks.results import BenchmarkResult, Column, Figure, Panel, Series

__all__ = ["format_value", "power_label", "write_report"]


def _plain(value: Any) -> Any:
    """JSON-safe copy: non-finite floats become None (strict JSON has no inf or nan)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _markdown_table(columns: Sequence[Column], rows: Sequence[dict[str, Any]]) -> list[str]:
    lines = ["| " + " | ".join(c.header for c in columns) + " |"]
    lines.append("|" + "|".join("---" for _ in columns) + "|")
    for row in rows:
        cells = [format_value(row.get(c.key), c.kind).replace("|", "/") for c in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def headline_table(results: Sequence[BenchmarkResult]) -> list[str]:
    """The Markdown table of every headline ratio, its target and whether it was met."""
    columns = [
        Column("benchmark", "benchmark"),
        Column("label", "headline ratio"),
        Column("value", "value", "ratio"),
        Column("target", "target"),
        Column("met", "met"),
        Column("basis", "basis"),
    ]
    rows = []
    for result in results:
        if not result.headlines:
            rows.append({"benchmark": result.name, "label": result.status, "met": "–"})
        for h in result.headlines:
            met = "yes" if h.passed else "**no**"
            rows.append({**h.to_dict(), "benchmark": result.name, "met": met})
    return _markdown_table(columns, rows)


def _section(index: int, result: BenchmarkResult) -> list[str]:
    lines = [f"## {index}. {result.title} (`{result.name}`)", ""]
    if result.status != "ok":
        return [*lines, f"**{result.status}**", ""]
    load, run = result.load_average, result.run
    mode = "quick" if run.get("quick") else "full"
    when = f" Run started {run.get('started_at')} ({mode})." if run.get("started_at") else ""
    lines += [result.method, "", f"Ran {result.seconds:.0f} s; load average {load}.{when}", ""]
    for table in result.tables:
        lines += [f"**{table.title}**", "", *_markdown_table(table.columns, table.rows), ""]
    lines += [f"- {note}" for note in result.notes]
    lines += [""] + [f"![{fig.title}]({fig.filename})" for fig in result.figures] + [""]
    return lines


def write_markdown(path: Path, results: Sequence[BenchmarkResult], machine: dict[str, Any]) -> None:
    mode = "quick (`--quick`, reduced sizes)" if machine.get("quick") else "full"
    lines = [
        "# statefuldata benchmarks",
        "",
        f"Mode: {mode}. Machine: {machine['cpu_model']}, {machine['cpu_count']} CPUs "
        f"({machine['usable_cpus']} usable, torch threads {machine['torch_threads']}); "
        f"Python {machine['python']}, torch {machine['torch']}, torchdata {machine['torchdata']}, "
        f"numpy {machine['numpy']}; load average at start {machine['load_average_at_start']}; "
        f"started {machine['started_at']}.",
        "",
        "Every number is a median over interleaved repeats and is shown next to a baseline; "
        "values marked `~` (extrapolated or interpolated) were not measured (see each section).",
        "",
        *(
            [
                "**Quick mode**: sizes are reduced to keep the run short. The targets are set for "
                "the full sizes, so a miss here says nothing; run `python -m benchmarks` for them.",
                "",
            ]
            if machine.get("quick")
            else []
        ),
        "## Headline ratios",
        "",
        *headline_table(results),
        "",
        "## Ours against the best peer",
        "",
        *peer_table({"benchmarks": {r.name: r.to_dict() for r in results}}),
        "",
    ]
    for index, result in enumerate(results, start=1):
        lines += _section(index, result)
    path.write_text("\n".join(lines).rstrip() + "\n", encoding="utf-8")


def _draw_line(ax: Any, series: Series) -> None:
    """Solid between measured points, dashed towards estimated ones; hollow estimated markers."""
    estimated = series.estimated or (False,) * len(series.x)
    points = list(zip(series.x, series.y, estimated))
    color = ax.plot([], [], marker="o", label=series.label)[0].get_color()
    for (x1, y1, e1), (x2, y2, e2) in itertools.pairwise(points):
        style = "--" if e1 or e2 else "-"
        ax.plot([x1, x2], [y1, y2], linestyle=style, color=color, alpha=0.7 if style == "--" else 1)
    for x, y, guessed in points:
        ax.plot([x], [y], marker="o", color=color, mfc="none" if guessed else color)


def _draw_panel(ax: Any, panel: Panel) -> None:
    if panel.categories:
        width = 0.8 / max(1, len(panel.series))
        for i, series in enumerate(panel.series):
            xs = [j + (i - (len(panel.series) - 1) / 2) * width for j in range(len(series.y))]
            ax.bar(xs, series.y, width=width, label=series.label)
        top = max((max(s.y) for s in panel.series if s.y), default=1.0)
        ax.set_ylim(0, top * (1.2 + 0.12 * len(panel.series)))  # room for the legend
        ax.set_xticks(range(len(panel.categories)), panel.categories, rotation=20, ha="right")
    else:
        for series in panel.series:
            _draw_line(ax, series)
    ax.set(title=panel.title, xlabel=panel.xlabel, ylabel=panel.ylabel)
    if panel.logx:
        ax.set_xscale("log")
    if panel.logy:
        ax.set_yscale("log")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize="small")


def _pyplot() -> Any:
    """matplotlib's pyplot on the Agg backend, imported when a figure is drawn (optional extra)."""
    try:
        import matplotlib
    except ImportError as exc:
        raise ImportError(
            "the benchmark figures need matplotlib: pip install 'statefuldata[bench]'"
        ) from exc
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def write_figure(out_dir: Path, figure: Figure) -> Path:
    plt = _pyplot()
    ncols = min(2, len(figure.panels))
    nrows = math.ceil(len(figure.panels) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(6.4 * ncols, 4.4 * nrows), squeeze=False)
    for ax, panel in zip(axes.flat, figure.panels):
        _draw_panel(ax, panel)
    for ax in list(axes.flat)[len(figure.panels) :]:
        ax.set_visible(False)
    estimated = any(any(s.estimated) for p in figure.panels for s in p.series)
    note = "\n(hollow markers, dashed lines: estimated, not measured)" if estimated else ""
    fig.suptitle(figure.title + note)
    fig.tight_layout()
    path = out_dir / figure.filename
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _figure_titles(markdown: Path) -> dict[str, str]:
    """``{filename: title}`` of the figures an earlier ``results.md`` shows."""
    try:
        text = markdown.read_text(encoding="utf-8")
    except OSError:
        return {}
    return {name: title for title, name in re.findall(r"!\[([^\]]*)\]\(([^)]+)\)", text)}


def _earlier(out_dir: Path, fresh: Sequence[BenchmarkResult]) -> list[BenchmarkResult]:
    """The results already in ``out_dir/results.json``, each replaced by a fresh one of its name.

    Benchmarks run one at a time (``python -m benchmarks checkpoint``) update their own section
    and leave the others' as they were measured.
    """
    path, names = out_dir / "results.json", {r.name: r for r in fresh}
    try:
        earlier = json.loads(path.read_text(encoding="utf-8"))
        old = earlier["benchmarks"]
        run = {k: earlier.get("machine", {}).get(k) for k in ("started_at", "quick", "argv")}
    except (OSError, ValueError, KeyError, TypeError):
        return list(fresh)
    merged: list[BenchmarkResult] = []
    for name, data in old.items():
        if name in names:
            merged.append(names.pop(name))
            continue
        try:
            result = BenchmarkResult.from_dict(data)
        except (KeyError, TypeError, ValueError):
            continue  # written by another version: dropped rather than shown wrong
        result.run = result.run or run
        if "figure_titles" not in data:  # written before titles were stored: take them from the md
            titles = _figure_titles(out_dir / "results.md")
            result.figures = [
                attrs.evolve(f, title=titles.get(f.filename, f.title)) for f in result.figures
            ]
        merged.append(result)
    return merged + list(names.values())


def write_report(
    out_dir: Path,
    results: Sequence[BenchmarkResult],
    machine: dict[str, Any],
    settings: Any,
    *,
    draw: Sequence[BenchmarkResult] | None = None,
) -> dict[str, Any]:
    """Write results.json, results.md and the figures of ``draw`` (default: every result) into
    ``out_dir``; return the JSON payload. Results of other benchmarks already in ``results.json``
    are kept (merged by name), so running one benchmark updates only its own section. A run that
    writes its report after each benchmark draws each one's figures once (``draw=[newest]``)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    this_run = {k: machine.get(k) for k in ("started_at", "quick", "argv")}
    for result in results:
        result.run = this_run
    for result in results if draw is None else draw:
        for figure in result.figures:
            write_figure(out_dir, figure)
    merged = _earlier(out_dir, results)
    payload = {
        "machine": machine,
        "settings": {
            "quick": settings.quick,
            "repeats": settings.repeats,
            "warmup": settings.warmup,
        },
        "headlines": [{**h.to_dict(), "benchmark": r.name} for r in merged for h in r.headlines],
        "benchmarks": {r.name: r.to_dict() for r in merged},
    }
    payload = _plain(payload)
    text = json.dumps(payload, indent=2, allow_nan=False)
    (out_dir / "results.json").write_text(text + "\n", encoding="utf-8")
    write_markdown(out_dir / "results.md", merged, machine)
    return payload
