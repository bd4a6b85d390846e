"""What a benchmark returns: tables of rows, headline ratios with targets, and figures to plot."""

from __future__ import annotations

import math
import operator
from collections.abc import Callable
from typing import Any

import attrs

__all__ = ["BenchmarkResult", "Column", "Figure", "Headline", "Panel", "Series", "Table"]

_OPS: dict[str, Callable[[float, float], bool]] = {
    "<=": operator.le,
    ">=": operator.ge,
    "==": operator.eq,
}
COLUMN_KINDS = ("text", "int", "seconds", "ratio", "bytes", "rate")


@attrs.frozen
class Column:
    """A table column: the row key it reads, its header, and how its values are formatted."""

    key: str
    header: str
    kind: str = attrs.field(default="text", validator=attrs.validators.in_(COLUMN_KINDS))


@attrs.frozen(kw_only=True)
class Table:
    """Rows (plain dicts of numbers and strings) shown under ``columns``."""

    title: str
    columns: tuple[Column, ...] = attrs.field(converter=tuple)
    rows: tuple[dict[str, Any], ...] = attrs.field(converter=tuple)

    def to_dict(self) -> dict[str, Any]:
        return {
            "title": self.title,
            "columns": [attrs.asdict(c) for c in self.columns],
            "rows": [dict(r) for r in self.rows],
        }


@attrs.frozen(kw_only=True)
class Headline:
    """One ratio with its target: ``value op threshold`` passes (a non-finite value misses).

    Attributes:
        basis: How the value was obtained, e.g. ``"measured"`` or ``"extrapolated (linear fit)"``.
    """

    key: str
    label: str
    value: float
    op: str = attrs.field(validator=attrs.validators.in_(tuple(_OPS)))
    threshold: float
    basis: str = "measured"
    detail: str = ""

    @property
    def target(self) -> str:
        return f"{self.op} {self.threshold:g}"

    @property
    def passed(self) -> bool:
        return math.isfinite(self.value) and _OPS[self.op](self.value, self.threshold)

    def to_dict(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "label": self.label,
            "value": self.value,
            "target": self.target,
            "op": self.op,
            "threshold": self.threshold,
            "passed": self.passed,
            "basis": self.basis,
            "detail": self.detail,
        }


@attrs.frozen(kw_only=True)
class Series:
    """A line (or a set of bars): ``estimated[i]`` marks point i as extrapolated, not measured."""

    label: str
    x: tuple[float, ...] = attrs.field(converter=tuple)
    y: tuple[float, ...] = attrs.field(converter=tuple)
    estimated: tuple[bool, ...] = attrs.field(default=(), converter=tuple)


@attrs.frozen(kw_only=True)
class Panel:
    """One axes. With ``categories`` the series are grouped bars over those labels."""

    title: str
    series: tuple[Series, ...] = attrs.field(converter=tuple)
    xlabel: str = ""
    ylabel: str = ""
    logx: bool = False
    logy: bool = False
    categories: tuple[str, ...] = attrs.field(default=(), converter=tuple)


@attrs.frozen(kw_only=True)
class Figure:
    """One PNG file made of panels side by side (wrapped in rows of two)."""

    filename: str
    title: str
    panels: tuple[Panel, ...] = attrs.field(converter=tuple)


@attrs.define(kw_only=True)
class BenchmarkResult:
    """Everything one benchmark reports; ``status`` is ``"ok"`` or ``"skipped: <reason>"``."""

    name: str
    title: str
    method: str = ""
    tables: list[Table] = attrs.field(factory=list)
    headlines: list[Headline] = attrs.field(factory=list)
    figures: list[Figure] = attrs.field(factory=list)
    notes: list[str] = attrs.field(factory=list)
    status: str = "ok"
    seconds: float = 0.0
    load_average: dict[str, Any] = attrs.field(factory=dict)
    run: dict[str, Any] = attrs.field(factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "title": self.title,
            "status": self.status,
            "method": self.method,
            "seconds": self.seconds,
            "load_average": self.load_average,
            "run": self.run,
            "headlines": [h.to_dict() for h in self.headlines],
            "tables": [t.to_dict() for t in self.tables],
            "figures": [f.filename for f in self.figures],
            "figure_titles": [f.title for f in self.figures],
            "notes": list(self.notes),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BenchmarkResult:
        """A result read back from ``results.json`` (its figures as files already drawn)."""
        titles = data.get("figure_titles") or data.get("figures", [])
        return cls(
            name=data["name"],
            title=data["title"],
            method=data.get("method", ""),
            status=data.get("status", "ok"),
            seconds=data.get("seconds", 0.0),
            load_average=data.get("load_average", {}),
            run=data.get("run", {}),
            notes=list(data.get("notes", [])),
            tables=[
                Table(
                    title=t["title"],
                    columns=[Column(**c) for c in t["columns"]],
                    rows=t["rows"],
                )
                for t in data.get("tables", [])
            ],
            headlines=[
                Headline(
                    key=h["key"],
                    label=h["label"],
                    value=math.nan if h["value"] is None else h["value"],
                    op=h["op"],
                    threshold=h["threshold"],
                    basis=h.get("basis", "measured"),
                    detail=h.get("detail", ""),
                )
                for h in data.get("headlines", [])
            ],
            figures=[
                Figure(filename=name, title=title, panels=())
                for name, title in zip(data.get("figures", []), titles, strict=False)
            ],
        )
