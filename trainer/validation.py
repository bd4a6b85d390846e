"""Validation over every val loader: per-loader and global (micro or macro) metrics."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from typing import Any

import torch

from statefuldata import DataLoaderManager
from trainer.config import Aggregation
from trainer.precision import Precision

__all__ = ["run_validation"]


def run_validation(
    manager: DataLoaderManager,
    step: Callable[..., dict[str, Any]],
    *,
    owner: Any,
    model: torch.nn.Module,
    precision: Precision,
    to_device: Callable[[Any], Any],
    aggregation: Aggregation,
    global_step: int,
) -> dict[str, float]:
    """One pass over every val loader with ``model`` in eval mode (restored afterwards).

    ``step(owner, batch, batch_idx, loader_idx, loader_name)`` is called under ``torch.no_grad()``
    and the precision's autocast. Returns ``val/<key>`` (micro: mean over all batches; macro: mean
    of the per-loader means) and ``val/<loader>/<key>`` for every value the step returns.
    """
    manager.reset_phase("val")
    iterator = manager.create_epoch_iterator("val", global_step)
    sums: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    counts: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), precision.autocast():
            for batch_idx, (loader_idx, name, batch) in enumerate(iterator):
                outputs = step(owner, to_device(batch), batch_idx, loader_idx, name)
                for key, value in outputs.items():
                    sums[name][key] += float(value)
                    counts[name][key] += 1
    finally:
        model.train(was_training)
    metrics: dict[str, float] = {}
    keys = sorted({key for per_loader in sums.values() for key in per_loader})
    for key in keys:
        loaders = [name for name in sums if counts[name][key]]
        for name in loaders:
            metrics[f"val/{name}/{key}"] = sums[name][key] / counts[name][key]
        if aggregation is Aggregation.MACRO:
            metrics[f"val/{key}"] = sum(metrics[f"val/{n}/{key}"] for n in loaders) / len(loaders)
        else:
            metrics[f"val/{key}"] = sum(sums[n][key] for n in loaders) / sum(
                counts[n][key] for n in loaders
            )
    return metrics
