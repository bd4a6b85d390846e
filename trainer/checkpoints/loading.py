"""Loading one checkpoint file: ``weights_only=True``, memory-mapped, its checksum verified.

:func:`open_verified` loads the file with ``torch.load(mmap=True, weights_only=True)``, so tensors
are views of the file's pages and no second copy of the file is made in memory, while threads
started just before it check the checksum over the same open file
(:class:`~trainer.checkpoints.integrity.Verification`: the file is mapped and split here, so the
threads only hash, which releases the GIL, and the unpickler runs meanwhile).
The caller may use the payload at once, for example copy it into a model, and must call
:meth:`VerifiedLoad.result` before relying on anything taken from it; :func:`load_verified` waits
before it returns. Files that are not zip archives (torch's legacy format) load without a map.

Error messages never echo torch's advice to retry with ``weights_only=False``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
from pathlib import Path
from typing import Any, BinaryIO

import attrs
import torch

from trainer.checkpoints.errors import CheckpointError
from trainer.checkpoints.integrity import (
    ZIP_SIGNATURE,
    IntegrityReport,
    IntegrityStatus,
    Verification,
)

__all__ = ["VerifiedLoad", "load_verified", "note_unverified", "open_verified"]

logger = logging.getLogger(__name__)

_BLOCKED_GLOBAL = re.compile(r"GLOBAL (\S+) was not an allowed global")
_UNPICKLER_REASON = re.compile(
    r"WeightsUnpickler error: (.*?)(?: Please use| Check the documentation|$)"
)
_warned_unverified: set[str] = set()


def _load_error(path: Path, exc: Exception) -> CheckpointError:
    """A CheckpointError for a failed ``torch.load``, never echoing torch's unsafe-retry advice."""
    text = " ".join(str(exc).split())
    blocked = _BLOCKED_GLOBAL.search(text)
    if blocked is not None:
        return CheckpointError(
            f"Cannot read checkpoint {path}: it holds a pickled {blocked[1]}, which safe loading "
            "refuses because unpickling it would run code named by the file. A checkpoint holds "
            "only int, float, bool, str, None, lists, tuples, dicts and tensors (trainer.checkpoints "
            "never writes anything else). Convert that value where the file is made (numpy arrays "
            "with torch.from_numpy, numpy scalars with .item(), other objects as dicts of plain "
            "values) and save it again, or resume from another checkpoint"
        )
    unpickler = _UNPICKLER_REASON.search(text)
    reason = unpickler[1].strip() if unpickler is not None else text[:300]
    return CheckpointError(
        f"Cannot read checkpoint {path}: {type(exc).__name__}: {reason}. The file is corrupt or "
        "truncated (e.g. a save was interrupted) or holds types that safe loading refuses; resume "
        "from another checkpoint"
    )


def note_unverified(path: Path) -> None:
    key = str(path.resolve())
    if key not in _warned_unverified:
        _warned_unverified.add(key)
        logger.warning(
            "Checkpoint %s carries no checksum (written before checksums were added, or by plain "
            "torch.save), so damage inside it cannot be detected; it is loaded unverified. Saving "
            "it again with trainer.checkpoints adds one",
            path,
        )


def _head(fd: int) -> bytes:
    return os.pread(fd, 4, 0)


def _torch_load(f: BinaryIO, path: Path) -> Any:
    """``torch.load`` the open file ``f``, memory-mapped when it is a zip archive (what we write).

    The map is made through ``/proc/self/fd`` where there is one, so it is the file being verified
    even if ``path`` is replaced meanwhile.
    """
    fd = f.fileno()
    if _head(fd) != ZIP_SIGNATURE:
        return torch.load(f, map_location="cpu", weights_only=True)  # torch's legacy format
    name = f"/proc/self/fd/{fd}"
    if not os.path.exists(name):  # pragma: no cover - no procfs (macOS, Windows)
        name = str(path)
    return torch.load(name, map_location="cpu", weights_only=True, mmap=True)


@attrs.define(eq=False)
class VerifiedLoad:
    """A payload loaded (memory-mapped) while its checksum is still being checked on threads.

    Use the payload, then call :meth:`result` before relying on anything taken from it: it waits
    for the check and raises :class:`CheckpointError` when the file is damaged.

    Example:
        >>> pending = open_verified(Path("run/latest.ckpt"))   # doctest: +SKIP
        >>> model.load_state_dict(pending.payload["model_state_dict"])  # doctest: +SKIP
        >>> pending.result()   # raises if the bytes just used were damaged     # doctest: +SKIP
    """

    path: Path
    payload: Any
    _file: BinaryIO
    _check: Verification
    _status: IntegrityStatus | None = None

    def result(self) -> IntegrityStatus:
        """Wait for the check: the file's :class:`IntegrityStatus` (verified or no checksum).

        Raises:
            CheckpointError: The checksum does not match, or the file's end is damaged.
        """
        if self._status is None:
            try:
                report = self._check.result()
            finally:
                self._file.close()
            if not report.ok:
                raise _damaged(self.path, report)
            self._status = report.status
        return self._status


def _damaged(path: Path, report: IntegrityReport) -> CheckpointError:
    return CheckpointError(
        f"Cannot read checkpoint {path}: {report.describe()}. The file is corrupt or truncated "
        "(damaged on disk or in transfer, or a save was interrupted); resume from another "
        "checkpoint"
    )


def open_verified(path: Path) -> VerifiedLoad:
    """Load ``path`` (``weights_only=True``, memory-mapped) and start checking its checksum.

    The check runs on threads for large files; :meth:`VerifiedLoad.result` joins them.

    Raises:
        CheckpointError: The file does not load (the checksum is checked first, so a damaged file
            is named as such); never suggests ``weights_only=False``.
    """
    f = open(path, "rb")  # noqa: SIM115 - closed by VerifiedLoad.result or below
    try:
        check = Verification.start(f.fileno())
    except BaseException:
        f.close()
        raise
    try:
        return VerifiedLoad(path, _torch_load(f, path), f, check)
    except Exception as exc:
        try:
            report = check.result()
        finally:
            f.close()
        if not report.ok:
            raise _damaged(path, report) from None
        if "weights_only" in str(exc) or "WeightsUnpickler" in str(exc):
            raise _load_error(path, exc) from None  # torch's text suggests an unsafe retry
        raise _load_error(path, exc) from exc
    except BaseException:  # e.g. KeyboardInterrupt: the check's thread still reads the file
        with contextlib.suppress(Exception):
            check.result()
        f.close()
        raise


def load_verified(path: Path) -> tuple[Any, IntegrityStatus]:
    """``torch.load`` the file (memory-mapped) and wait for its checksum check to pass."""
    pending = open_verified(path)
    return pending.payload, pending.result()
