"""``python -m trainer inspect PATH [--json]``: a readable summary of one checkpoint file.

Shows the checksum check, the format version, epoch, global step, resume state, the data position
(schedule position, total batches, per-loader batch index, exhaustion and cycles), the data
fingerprint and the size in bytes of each top-level field. A damaged file exits with status 1 after
saying which check failed: the checksum (stored and computed digests), the zip records whose own
CRC-32 fails (the pickled structure or which tensor storage), or the load itself.

Example:
    >>> print(format_summary(summarize_checkpoint("checkpoints/latest.ckpt")))  # doctest: +SKIP
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import zipfile
import zlib
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from trainer.checkpoints import (
    KEY_DATALOADER_MANAGER,
    KEY_FORMAT_VERSION,
    KEY_OPTIMIZERS,
    KEY_RESUME,
    KEY_SAVE_TIMESTAMP,
    KEY_SCALER,
    KEY_SCHEDULERS,
    CheckpointError,
    read_checkpoint,
)
from trainer.checkpoints.integrity import IntegrityStatus, check_integrity

__all__ = [
    "add_inspect_parser",
    "damaged_records",
    "format_summary",
    "run_inspect",
    "summarize_checkpoint",
]

_STORAGE = re.compile(r"(?:.*/)?data/(\d+)")


def _record_kind(name: str) -> str:
    storage = _STORAGE.fullmatch(name)
    if storage is not None:
        return f"{name} (tensor storage {storage[1]})"
    if name.endswith("data.pkl"):
        return f"{name} (the pickled structure: keys, shapes, plain values)"
    return name


def damaged_records(path: str | os.PathLike[str]) -> list[str]:
    """Zip records of ``path`` whose own CRC-32 (written by torch.save) fails, described."""
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        return [f"the zip directory itself ({exc})"]
    damaged = []
    with archive:
        for info in archive.infolist():
            try:
                with archive.open(info) as record:
                    while record.read(1 << 20):
                        pass
            except (zipfile.BadZipFile, zlib.error, OSError, EOFError, ValueError) as exc:
                damaged.append(f"{_record_kind(info.filename)}: {exc}")
    return damaged


def _saved_size(value: Any) -> int:
    buffer = io.BytesIO()
    torch.save(value, buffer)
    return buffer.tell()


def _field_sizes(payload: Mapping[str, Any]) -> dict[str, int]:
    """Bytes of each field saved alone with torch.save, less the size of an empty save."""
    overhead = _saved_size(None)
    return {str(key): max(_saved_size(value) - overhead, 0) for key, value in payload.items()}


def _data_position(manager_state: Any) -> dict[str, Any] | None:
    """Per-loader position from ``dataloader_manager_state["train_iterator_state"]``."""
    if not isinstance(manager_state, Mapping):
        return None
    state = manager_state.get("train_iterator_state")
    if not isinstance(state, Mapping):
        return {"train_iterator_state": None}
    cycles = state.get("loader_cycles") or {}
    loaders = []
    for index, loader in enumerate(state.get("loader_states") or []):
        loader = loader if isinstance(loader, Mapping) else {}
        loaders.append(
            {
                "index": index,
                "batch_idx": loader.get("batch_idx"),
                "exhausted": loader.get("exhausted"),
                "cycles": cycles.get(index, cycles.get(str(index), 0)),
            }
        )
    return {
        "epoch": state.get("epoch"),
        "schedule_position": state.get("schedule_position"),
        "total_batches": state.get("total_batches"),
        "fingerprint": state.get("fingerprint"),
        "loaders": loaders,
        "has_val_iterator_state": manager_state.get("val_iterator_state") is not None,
    }


def summarize_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read ``path`` (weights_only) and return a JSON-friendly summary dict."""
    path = Path(path)
    payload = read_checkpoint(path)
    integrity = check_integrity(path)
    timestamp = payload.get(KEY_SAVE_TIMESTAMP)
    saved_at = (
        datetime.fromtimestamp(timestamp, tz=timezone.utc).isoformat(timespec="seconds")
        if isinstance(timestamp, (int, float)) and timestamp > 0
        else None
    )
    scaler = payload.get(KEY_SCALER)
    return {
        "path": str(path),
        "file_bytes": path.stat().st_size,
        "integrity": integrity.to_dict(),
        "format_version": payload.get(KEY_FORMAT_VERSION),
        "saved_at": saved_at,
        "epoch": payload.get("epoch"),
        "global_step": payload.get("global_step"),
        "resume_state": payload.get(KEY_RESUME),
        "num_optimizers": len(payload.get(KEY_OPTIMIZERS) or []),
        "num_schedulers": len(payload.get(KEY_SCHEDULERS) or []),
        "amp_scale": scaler.get("scale") if isinstance(scaler, Mapping) else None,
        "data": _data_position(payload.get(KEY_DATALOADER_MANAGER)),
        "field_bytes": _field_sizes(payload),
    }


def _integrity_line(integrity: Mapping[str, Any]) -> str:
    status = IntegrityStatus(integrity["status"])  # the plain value of the report's to_dict()
    if status is IntegrityStatus.VERIFIED:
        return f"checksum verified ({integrity['algorithm']} {integrity['stored']})"
    if status is IntegrityStatus.NO_CHECKSUM:
        return "no checksum (written before checksums were added, or by plain torch.save)"
    return f"{integrity['status']}: {integrity['detail']}"


def diagnose(path: Path) -> dict[str, Any]:
    """Which checks a damaged file fails: checksum, zip record CRCs (the load error is added)."""
    report = check_integrity(path)
    found: dict[str, Any] = {"path": str(path), "integrity": report.to_dict()}
    found["checksum"] = report.describe()
    found["damaged_records"] = damaged_records(path) if not report.ok else []
    return found


def _print_diagnosis(found: Mapping[str, Any], error: str, as_json: bool) -> None:
    if as_json:
        print(json.dumps({**found, "error": error}, indent=2, default=str))
        return
    lines = [f"checkpoint      {found['path']}", f"checksum        {found['checksum']}"]
    if found["damaged_records"]:
        lines.append("damaged records (their own CRC-32 fails)")
        lines += [f"  {record}" for record in found["damaged_records"]]
    elif not found["integrity"]["ok"]:
        lines.append("damaged records none: the damage is in zip headers, padding or the directory")
    lines.append(f"load            failed: {error}")
    print("\n".join(lines))


def format_summary(summary: Mapping[str, Any]) -> str:
    """Render :func:`summarize_checkpoint` output as aligned text."""
    lines = [
        f"checkpoint      {summary['path']} ({summary['file_bytes']:,} bytes)",
        f"integrity       {_integrity_line(summary['integrity'])}",
        f"format version  {summary['format_version']}",
        f"saved at        {summary['saved_at'] or 'unknown'}",
        f"epoch           {summary['epoch']}",
        f"global step     {summary['global_step']}",
        f"optimizers      {summary['num_optimizers']}, schedulers {summary['num_schedulers']}, "
        f"amp scale {summary['amp_scale']}",
        "resume state",
    ]
    for key, value in (summary["resume_state"] or {}).items():
        lines.append(f"  {key:<24} {value}")
    data = summary["data"]
    if data is None:
        lines.append("data position   none saved")
    elif data.get("train_iterator_state", True) is None:
        lines.append("data position   no train iterator state (saved before the first batch)")
    else:
        lines.append(
            f"data position   epoch {data['epoch']}, schedule position {data['schedule_position']}, "
            f"total batches {data['total_batches']}"
        )
        for loader in data["loaders"]:
            lines.append(
                f"  loader {loader['index']:<3} batch_idx {loader['batch_idx']}, "
                f"exhausted {loader['exhausted']}, cycles {loader['cycles']}"
            )
        lines.append(f"fingerprint     {data['fingerprint']}")
    lines.append("field sizes (bytes, each saved alone, torch.save overhead removed)")
    for key, size in sorted(summary["field_bytes"].items(), key=lambda kv: -kv[1]):
        lines.append(f"  {key:<26} {size:>12,}")
    return "\n".join(lines)


def run_inspect(args: argparse.Namespace) -> int:
    """Print the summary of ``args.path`` as text or, with ``args.json``, as JSON.

    A file that does not load gets a diagnosis (which check failed) instead, and the error is
    raised for the command line to report (exit status 1).
    """
    try:
        summary = summarize_checkpoint(args.path)
    except CheckpointError as exc:
        _print_diagnosis(diagnose(Path(args.path)), str(exc), args.json)
        raise
    if args.json:
        print(json.dumps(summary, indent=2, default=str))
    else:
        print(format_summary(summary))
    return 0


def add_inspect_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register the ``inspect`` subcommand on an argparse ``subparsers`` object."""
    parser = subparsers.add_parser("inspect", help="summarize a checkpoint file")
    parser.add_argument("path", type=Path, help="the .ckpt file (e.g. checkpoints/latest.ckpt)")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    parser.set_defaults(func=run_inspect)
    return parser
