"""Legacy checkpoints (no ``format_version``): migrated to format v1 in memory, with a WARNING."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from trainer.checkpoints.errors import CheckpointError
from trainer.checkpoints.format import (
    FORMAT_VERSION,
    KEY_CHOICE_RNG,
    KEY_DATALOADER_MANAGER,
    KEY_EPOCH,
    KEY_FORMAT_VERSION,
    KEY_GLOBAL_STEP,
    KEY_MODEL,
    KEY_MULTI_DATALOADER_ONLY,
    KEY_OPTIMIZERS,
    KEY_RESUME,
    KEY_SAVE_TIMESTAMP,
    KEY_SCALER,
    KEY_SCHEDULERS,
    MANAGER_CHOICE_RNG_KEY,
    V1_KEYS,
)
from trainer.resume import ResumeState, SaveReason

__all__ = ["migrate_legacy_payload"]

logger = logging.getLogger(__name__)


_LEGACY_RENAMES = {"scaler_state_dict": KEY_SCALER, "amp_scaler_state_dict": KEY_SCALER}


def migrate_legacy_payload(
    legacy: Mapping[str, Any], *, source: str = "<payload>"
) -> dict[str, Any]:
    """Convert a payload without ``format_version`` to v1, logging one WARNING.

    Singular ``optimizer_state_dict``/``scheduler_state_dict`` become one-element lists; missing
    fields are filled (``resume_state`` from ``epoch``/``global_step`` at batch 0; others None).

    Raises:
        CheckpointError: The payload has no ``model_state_dict``.
    """
    old = dict(legacy)
    for name, new_name in _LEGACY_RENAMES.items():
        if name in old and new_name not in old:
            old[new_name] = old.pop(name)
    if KEY_MODEL not in old:
        raise CheckpointError(
            f"Checkpoint {source} has no format_version and no '{KEY_MODEL}' (keys: "
            f"{sorted(map(str, old))}); it is not a trainer checkpoint"
        )
    changes = ["format_version -> 1"]
    for plural in (KEY_OPTIMIZERS, KEY_SCHEDULERS):
        singular = plural.replace("_dicts", "_dict")
        if plural not in old:
            value = old.pop(singular, None)
            old[plural] = [] if value is None else [value]
            changes.append(f"{singular} -> {plural}")
    epoch, step = int(old.get(KEY_EPOCH, 0)), int(old.get(KEY_GLOBAL_STEP, 0))
    if KEY_RESUME not in old:
        old[KEY_RESUME] = ResumeState(
            epoch=epoch, global_step=step, save_reason=SaveReason.LEGACY
        ).to_dict()
    defaults: dict[str, Any] = {KEY_SAVE_TIMESTAMP: 0.0, KEY_EPOCH: epoch, KEY_GLOBAL_STEP: step}
    manager_state = old.get(KEY_DATALOADER_MANAGER)
    if isinstance(manager_state, dict):
        defaults[KEY_CHOICE_RNG] = manager_state.get(MANAGER_CHOICE_RNG_KEY)
    filled = [k for k in V1_KEYS[2:] if k not in old]
    payload = {k: old.get(k, defaults.get(k)) for k in V1_KEYS}
    payload[KEY_FORMAT_VERSION], payload[KEY_MULTI_DATALOADER_ONLY] = FORMAT_VERSION, True
    dropped = sorted(str(k) for k in old if k not in V1_KEYS)
    logger.warning(
        "Checkpoint %s is a legacy file (no format_version); migrated it to format v1 in memory "
        "(%s; filled %s; dropped %s). Re-save it to write format v1.",
        source,
        ", ".join(changes),
        filled or "nothing",
        dropped or "nothing",
    )
    return payload
