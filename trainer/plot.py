"""``python -m trainer plot ROOT [--out FILE.png]``: the loss and validation curves of a run.

Reads ``ROOT/metrics.csv`` (the CSV logger), or else the newest valid checkpoint's
``metrics_history``, and marks where the run resumed (``ROOT/runs.jsonl``: each ``fit()`` start after
step 0). Needs matplotlib (``pip install 'statefuldata[bench]'``).
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path
from typing import Any

from trainer.checkpoints.folder import RUNS_NAME
from trainer.checkpoints.manager import CheckpointManager
from trainer.config import CheckpointConfig
from trainer.loggers import CSVLogger, rows_by_step

__all__ = ["add_plot_parser", "load_curves", "plot_run"]

Curves = dict[str, list[tuple[int, float]]]


def load_curves(root: Path) -> Curves:
    """Every metric of the run in ``root`` as ``{name: [(step, value), ...]}``."""
    csv_path = root / CSVLogger.FILE_NAME
    curves: Curves = {}
    if csv_path.is_file():
        with csv_path.open() as f:
            for row in csv.DictReader(f):
                step = int(row.pop("step"))
                for name, cell in row.items():
                    if cell:
                        curves.setdefault(name, []).append((step, float(cell)))
        return curves
    found = CheckpointManager(CheckpointConfig(root_dir=root)).load_latest_valid()
    if found is None:
        raise FileNotFoundError(
            f"{root} holds neither {CSVLogger.FILE_NAME} nor a checkpoint; pass the root_dir of a run"
        )
    for step, metrics in rows_by_step(found[1]["metrics_history"] or {}).items():
        for name, value in metrics.items():
            curves.setdefault(name, []).append((step, value))
    return curves


def resume_steps(root: Path) -> list[int]:
    """The steps at which a ``fit()`` started after the first (from ``runs.jsonl``)."""
    path = root / RUNS_NAME
    if not path.is_file():
        return []
    starts = [json.loads(line)["global_step"] for line in path.read_text().splitlines() if line]
    return sorted({step for step in starts if step > 0})


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError as exc:
        raise ImportError(
            "plot needs matplotlib, an optional extra: pip install 'statefuldata[bench]'"
        ) from exc
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_run(root: Path, out: Path | None = None) -> Path:
    """Draw the train and validation loss (and the other ``train/``, ``val/`` scalars) to a PNG."""
    curves = load_curves(root)
    plt = _pyplot()
    losses: list[str] = [n for n in ("train/loss", "val/loss") if n in curves]
    others = sorted(n for n in curves if n not in losses and n.count("/") == 1)
    panels: list[list[str]] = [losses, *([others] if others else [])]
    fig, axes = plt.subplots(len(panels), 1, figsize=(8, 3.6 * len(panels)), squeeze=False)
    resumes = resume_steps(root)
    for ax, names in zip(axes[:, 0], panels):
        for name in names:
            steps, values = zip(*curves[name])
            ax.plot(steps, values, marker="o" if name.startswith("val/") else None, label=name)
        for i, step in enumerate(resumes):
            ax.axvline(step, color="grey", linestyle="--", label="resumed" if i == 0 else None)
        ax.set_xlabel("optimizer step")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize="small")
    axes[0, 0].set_title(f"{root}")
    fig.tight_layout()
    out = out or root / "curves.png"
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def _run(args: argparse.Namespace) -> int:
    path = plot_run(Path(args.root), None if args.out is None else Path(args.out))
    print(f"wrote {path}")
    return 0


def add_plot_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register the ``plot`` subcommand."""
    parser = subparsers.add_parser(
        "plot", help="draw a run's loss and validation curves, resumes marked"
    )
    parser.add_argument("root", help="the run's root_dir (holding metrics.csv or checkpoints)")
    parser.add_argument("--out", help="the PNG to write (default: ROOT/curves.png)")
    parser.set_defaults(func=_run)
    return parser
