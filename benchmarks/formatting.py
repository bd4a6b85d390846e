"""How a benchmark value reads in a table: seconds, bytes, ratios and rates with their units."""

from __future__ import annotations

import math
from typing import Any

__all__ = ["format_value", "power_label"]


def _seconds(value: float) -> str:
    if abs(value) >= 1000:
        return f"{value:,.0f} s"
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("µs", 1e-6)):
        if abs(value) >= scale:
            return f"{value / scale:.3g} {unit}"
    return f"{value / 1e-9:.3g} ns"


def _bytes(value: float) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.3g} {unit}"
    return f"{value:.0f} B"


def power_label(n: int) -> str:
    """``10^8`` for a power of ten, else ``123,456``."""
    exponent = len(str(n)) - 1
    return f"10^{exponent}" if n >= 100 and n == 10**exponent else f"{n:,}"


def format_value(value: Any, kind: str) -> str:
    """A table cell: numbers formatted by the column kind, strings as they are."""
    if value is None:
        return "–"
    if isinstance(value, str) or kind == "text":
        return str(value)
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if kind == "int":
        return f"{int(value):,}"
    if kind == "seconds":
        return _seconds(value)
    if kind == "ratio":
        return f"{value:.3g}×" if value < 1000 else f"{value:,.0f}×"
    if kind == "bytes":
        return _bytes(value)
    if kind == "rate":
        return f"{value / 1e6:.3g} M/s"
    return str(value)
