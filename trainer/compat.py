"""Is a checkpoint's trainer configuration compatible with the current one?

A resume is exact only under the configuration that wrote the checkpoint. The fields below change
what the next steps compute (how gradients are accumulated, clipped, scaled and weighted, which
optimizer steps with which loader, what the optimizer and scheduler are); every other field
(logging, progress bar, checkpoint cadence, validation, seed of a fresh run, ...) is harmless and may
change between runs.

The world size is not one of them: the data pipeline decides (elastic resume, see
:mod:`statefuldata.elastic`). Map-style loaders hold a global position and resume under any world
size with the same global batch size; a loader whose position is per rank or per worker refuses
with an ``IncompatibleStateError`` naming both sizes, unless
``PreemptionConfig(restart_incompatible_sources=True)`` restarts its current pass.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["EXACTNESS_FIELDS", "config_differences", "describe_differences"]

#: Dotted paths into ``config_snapshot`` whose change breaks exactness.
EXACTNESS_FIELDS = (
    "trainer.performance.gradient_accumulation_steps",
    "trainer.performance.clip_grad_norm",
    "trainer.performance.use_amp",
    "trainer.performance.amp_dtype",
    "trainer.loss_weights_per_loader",
    "trainer.per_loader_optimizer_id",
    "trainer.scheduler_interval",
    "optimizers",
    "schedulers",
)

_MISSING = object()


def _get(snapshot: Mapping[str, Any], path: str) -> Any:
    node: Any = snapshot
    for key in path.split("."):
        if not isinstance(node, Mapping) or key not in node:
            return _MISSING
        node = node[key]
    return node


def config_differences(
    saved: Mapping[str, Any] | None, current: Mapping[str, Any]
) -> list[tuple[str, Any, Any]]:
    """``(field, saved value, current value)`` for every exactness field that changed.

    Fields the saved snapshot does not hold (files written by an older version) are not compared.
    """
    if not isinstance(saved, Mapping):
        return []
    out = []
    for path in EXACTNESS_FIELDS:
        before, now = _get(saved, path), _get(current, path)
        if before is _MISSING or now is _MISSING:
            continue
        if _normalise(before) != _normalise(now):
            out.append((path.removeprefix("trainer."), before, now))
    return out


def _normalise(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return [_normalise(v) for v in value]
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def describe_differences(differences: list[tuple[str, Any, Any]]) -> str:
    """``"field: saved X, current Y; ..."`` for an error or warning message."""
    return "; ".join(f"{field}: saved {a!r}, current {b!r}" for field, a, b in differences)
