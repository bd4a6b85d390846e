"""``python -m trainer inspect PATH [--json]``: a readable summary of one checkpoint file.

Shows the format version, epoch, global step, resume state, the data position (schedule position,
total batches, per-loader batch index, exhaustion and cycles), the data fingerprint and the size in
bytes of each top-level field.

Example:
    >>> print(format_summary(summarize_checkpoint("checkpoints/latest.ckpt")))  # doctest: +SKIP
"""

from __future__ import annotations

import argparse
import io
import json
import os
from collections.abc import Mapping, Sequence
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
    read_checkpoint,
)

__all__ = ["add_inspect_parser", "format_summary", "run_inspect", "summarize_checkpoint"]


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


def format_summary(summary: Mapping[str, Any]) -> str:
    """Render :func:`summarize_checkpoint` output as aligned text."""
    lines = [
        f"checkpoint      {summary['path']} ({summary['file_bytes']:,} bytes)",
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
    """Print the summary of ``args.path`` as text or, with ``args.json``, as JSON."""
    summary = summarize_checkpoint(args.path)
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


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point for the ``inspect`` subcommand alone: ``main(["PATH", "--json"])``."""
    parser = argparse.ArgumentParser(prog="python -m trainer inspect")
    parser.add_argument("path", type=Path)
    parser.add_argument("--json", action="store_true")
    return run_inspect(parser.parse_args(argv))
