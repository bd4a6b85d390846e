"""The scalars a run records: every value a training or validation step returns.

A training step's outputs are kept, detached, for the micro-batches of the current accumulation
window; at every ``log_every_n_steps``-th optimizer step their means become ``train/<name>``
(``train/loss`` included). Validation gives ``val/<name>`` and ``val/<loader>/<name>``.
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping, Sequence
from typing import Any

import torch

__all__ = ["describe", "is_scalar", "mean_loss", "scalar_outputs", "window_means"]


def is_scalar(value: Any) -> bool:
    """A number, or a tensor holding one number."""
    if isinstance(value, torch.Tensor):
        return value.numel() == 1
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def scalar_outputs(outputs: Mapping[str, Any]) -> dict[str, Any] | None:
    """The scalars of a step's outputs besides ``loss`` (tensors detached), or None if none."""
    if len(outputs) == 1:
        return None
    extras = {
        key: value.detach() if isinstance(value, torch.Tensor) else value
        for key, value in outputs.items()
        if key != "loss" and is_scalar(value)
    }
    return extras or None


def mean_loss(losses: Sequence[tuple[torch.Tensor, str, int]]) -> float:
    """The mean of a window's ``(loss, loader name, batch index)`` losses."""
    return float(torch.stack([x.float() for x, _, _ in losses]).mean())


def window_means(
    losses: Sequence[tuple[torch.Tensor, str, int]], extras: Sequence[Mapping[str, Any]]
) -> dict[str, float]:
    """``train/loss`` and ``train/<name>``: means over the window's micro-batches."""
    metrics = {"train/loss": mean_loss(losses)}
    names = sorted({key for row in extras for key in row})
    for name in names:
        values = [float(row[name]) for row in extras if name in row]
        metrics[f"train/{name}"] = sum(values) / len(values)
    return metrics


def describe(metrics: Mapping[str, float], prefix: str) -> str:
    """``", loss 0.1234, acc 0.9"`` for the metrics named ``<prefix>/<name>`` (no per-loader
    ones), or ``""`` when there are none."""
    parts = []
    for key, value in metrics.items():
        head, _, name = key.partition("/")
        if head == prefix and "/" not in name:
            parts.append(f"{name} {value:.4g}")
    return "".join(f", {part}" for part in parts)
