"""Restoring a model and its optimizers from a file while the file's checksum is being checked.

:func:`restore_file` maps the file, copies its tensors into the given objects (RNGs aside) while a
thread checks the checksum, and then waits for the check: a damaged file raises
:class:`~trainer.checkpoints.errors.CheckpointError` after its values were copied, so the caller
restores another file over them (:func:`restore_newest` does, in the folder's restore order) or
rebuilds the objects. The RNGs are restored only from a file that passed.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from trainer.checkpoints.folder import newest_valid
from trainer.checkpoints.format import KEY_RNG, apply_payload
from trainer.checkpoints.io import open_checkpoint
from trainer.resume import ResumeState
from trainer.rng import restore_rng_states

__all__ = ["restore_file", "restore_newest"]


def restore_file(path: Path, **apply_args: Any) -> tuple[dict[str, Any], ResumeState]:
    """Apply ``path`` with :func:`apply_payload` (RNGs aside) while its checksum is checked.

    Raises:
        CheckpointError: The file is damaged (raised once the copy is done: the objects then hold
            its values) or does not load.
    """
    pending = open_checkpoint(path)
    try:
        resume = apply_payload(pending.payload, restore_rng=False, **apply_args)
    finally:
        pending.verify()  # a damaged file wins over any error its damage caused
    return pending.payload, resume


def restore_newest(
    root: Path,
    files: list[Path],
    checkpoint_path: str | os.PathLike[str] | None,
    *,
    restore_rng: bool,
    **apply_args: Any,
) -> tuple[Path, dict[str, Any], ResumeState] | None:
    """Restore ``checkpoint_path``, or without one the newest valid candidate of the folder.

    Returns:
        ``(path, payload, resume_state)``, or None when the folder holds no candidate.
    """

    def attempt(path: Path) -> tuple[dict[str, Any], ResumeState]:
        return restore_file(path, **apply_args)

    if checkpoint_path is None:
        found = newest_valid(root, files, attempt)
        if found is None:
            return None
        path, (payload, resume) = found
    else:
        path = Path(checkpoint_path)
        payload, resume = attempt(path)
    if restore_rng and payload[KEY_RNG] is not None:
        restore_rng_states(payload[KEY_RNG])
    return path, payload, resume
