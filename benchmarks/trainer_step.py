"""GenericTrainer step time against a hand-written loop doing the same work; checkpoint size.

A 2-layer MLP (32 -> 64 -> 1, ReLU) trained with SGD (momentum 0.9) on MSE over a synthetic
regression set, batch 64, from one ``make_loader(shuffle=True)`` loader (num_workers=0), with
``torch.set_num_threads(1)`` (both variants; tiny matmuls gain nothing from threads). The hand
loop iterates the loader and does forward, ``zero_grad``, backward, ``step``. The trainer runs
``fit()`` with no checkpoint (both cadences off) and with a checkpoint every 100 optimizer steps (atomic write with fsync, 2 kept). Each measurement builds
fresh model, optimizer and loader outside the timed region and times the whole training run;
the table gives seconds per optimizer step and the extra time a step takes over the hand loop's.
The trainer keeps its default loggers (metrics every 50 steps to ``metrics_history``, metrics.csv
and, when installed, TensorBoard). Auto-resume is off and each run gets a new folder.
Every round runs the hand loop beside each other variant (see :func:`benchmarks.harness.interleave`);
the headline is the median of the per-pair ratios, the table also gives the ratio of the medians.
Peers, when Lightning is installed: the same work as a Lightning Fabric loop and through
``lightning.Trainer`` (see :mod:`benchmarks.trainer_peers`).
"""

from __future__ import annotations

import io
import shutil
import tempfile
from pathlib import Path
from typing import Any

import attrs
import torch
import torch.nn.functional as F

from benchmarks import trainer_peers
from benchmarks.data import Regression
from benchmarks.harness import Progress, Settings, Stat, clock, interleave, quiet_logs
from benchmarks.results import BenchmarkResult, Column, Figure, Headline, Panel, Series, Table
from statefuldata import make_loader

__all__ = ["run"]

HAND, PLAIN, EVERY = (
    "hand-written loop",
    "GenericTrainer, no periodic checkpoint",
    "GenericTrainer, checkpoint every 100 steps",
)
BATCH = 64


@attrs.frozen(kw_only=True)
class _Plan:
    batches_per_epoch: int
    epochs: int
    min_repeats: int

    @property
    def steps(self) -> int:
        return self.batches_per_epoch * self.epochs


FULL = _Plan(batches_per_epoch=500, epochs=4, min_repeats=11)
QUICK = _Plan(batches_per_epoch=50, epochs=2, min_repeats=5)


def _setup(plan: _Plan, dataset: Regression) -> tuple[torch.nn.Module, torch.optim.Optimizer, Any]:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.ReLU(), torch.nn.Linear(64, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    return model, optimizer, make_loader(dataset, batch_size=BATCH, shuffle=True, seed=0)


def _hand(plan: _Plan, dataset: Regression) -> float:
    model, optimizer, loader = _setup(plan, dataset)

    def train() -> None:
        model.train()
        for _ in range(plan.epochs):
            for x, y in loader:
                loss = F.mse_loss(model(x), y)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()

    return clock(train) / plan.steps


def _training_step(trainer: Any, batch: Any, batch_idx: int, loader_idx: int, name: str) -> dict:
    x, y = batch
    return {"loss": F.mse_loss(trainer.model(x), y)}


def _trainer(plan: _Plan, dataset: Regression, every: int | None, keep: dict) -> float:
    from trainer import CheckpointConfig, GenericTrainer, GenericTrainerConfig, PreemptionConfig

    model, optimizer, loader = _setup(plan, dataset)
    root = Path(tempfile.mkdtemp(prefix="bench-trainer-"))
    config = GenericTrainerConfig(
        seed=0,
        checkpoint=CheckpointConfig(
            root_dir=root, save_every_n_steps=every, save_every_n_epochs=None, max_checkpoints=2
        ),
        preemption=PreemptionConfig(auto_resume=False),
        progress_bar=False,
    )
    trainer = GenericTrainer(config, model, optimizer)
    trainer.set_training_step(_training_step)
    seconds = clock(lambda: trainer.fit([loader], max_epochs=plan.epochs))
    if trainer.last_checkpoint is not None:
        keep["checkpoint"] = trainer.last_checkpoint.read_bytes()
    shutil.rmtree(root, ignore_errors=True)
    return seconds / plan.steps


def _saved_size(value: Any) -> int:
    buffer = io.BytesIO()
    torch.save(value, buffer)
    return len(buffer.getvalue())


def _field_sizes(blob: bytes) -> list[dict[str, Any]]:
    """Bytes each top-level field adds to the file: its size minus the size without it."""
    payload = torch.load(io.BytesIO(blob), weights_only=True)
    total = _saved_size(payload)
    rows, small = [], []
    for key in payload:
        marginal = total - _saved_size({k: v for k, v in payload.items() if k != key})
        (rows if marginal >= 100 else small).append({"field": key, "bytes": marginal})
    rows.sort(key=lambda r: -r["bytes"])
    rows.append({"field": f"{len(small)} scalar fields", "bytes": sum(r["bytes"] for r in small)})
    rest = total - sum(r["bytes"] for r in rows)
    rows.append({"field": "container (zip, pickle framing)", "bytes": rest})
    rows.append({"field": "whole file", "bytes": len(blob)})
    return [{**r, "share": r["bytes"] / len(blob)} for r in rows]


def _unavailable() -> str:
    try:
        from trainer import GenericTrainer, GenericTrainerConfig  # noqa: F401
    except ImportError as exc:
        return f"skipped: trainer not available ({exc})"
    return ""


def run(settings: Settings) -> BenchmarkResult:
    reason = _unavailable()
    if reason:
        return BenchmarkResult(name="trainer", title="Trainer overhead", status=reason)
    plan = QUICK if settings.quick else FULL
    dataset = Regression(plan.batches_per_epoch * BATCH)
    keep: dict[str, bytes] = {}
    variants = {
        HAND: lambda: _hand(plan, dataset),
        PLAIN: lambda: _trainer(plan, dataset, None, {}),
        EVERY: lambda: _trainer(plan, dataset, 100, keep),
    }
    notes: list[str] = []
    missing = trainer_peers.available()
    if missing:
        notes.append(missing)
    else:

        def setup() -> tuple[torch.nn.Module, torch.optim.Optimizer, Any]:
            return _setup(plan, dataset)

        variants[trainer_peers.FABRIC] = lambda: trainer_peers.fabric_loop(
            setup, plan.epochs, plan.steps
        )
        variants[trainer_peers.LIGHTNING] = lambda: trainer_peers.lightning_trainer(
            setup, plan.epochs, plan.steps
        )
    repeats = max(settings.repeats, plan.min_repeats)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matmuls; no OpenMP spinning against other load on few cores
    try:
        with quiet_logs("trainer", "statefuldata"), Progress(settings, "trainer") as progress:
            stats = interleave(
                variants,
                repeats=repeats,
                warmup=settings.warmup,
                progress=progress,
                baseline=HAND,
            )
    finally:
        torch.set_num_threads(threads)
    base = stats[HAND].median

    def paired(s: Stat) -> float:  # every variant but the baseline has its pairs
        return s.paired_ratio or s.median / base

    rows = [
        {
            "variant": name,
            "seconds": s.median,
            "ratio": s.median / base,
            "paired": 1.0 if name == HAND else s.paired_ratio,
            "extra": 0.0 if name == HAND else (paired(s) - 1.0) * base,
            "stat": s.to_dict(),
        }
        for name, s in stats.items()
    ]
    sizes = _field_sizes(keep["checkpoint"])
    return BenchmarkResult(
        name="trainer",
        title="Trainer overhead",
        notes=notes,
        method=(__doc__ or "").split("\n", 1)[1].strip().replace("\n", " "),
        tables=[
            Table(
                title=f"Seconds per optimizer step over {plan.steps:,} steps ({plan.epochs} epochs)",
                columns=[
                    Column("variant", "variant"),
                    Column("seconds", "per step (median)", "seconds"),
                    Column("ratio", "median / hand loop's median", "ratio"),
                    Column("paired", "median of per-pair ratios to the hand loop", "ratio"),
                    Column("extra", "extra time per step (per-pair ratio - 1) x hand", "seconds"),
                ],
                rows=rows,
            ),
            Table(
                title="Checkpoint size by field (bytes the file would lose without the field)",
                columns=[
                    Column("field", "field"),
                    Column("bytes", "bytes", "int"),
                    Column("share", "share of file", "ratio"),
                ],
                rows=sizes,
            ),
        ],
        headlines=[
            Headline(
                key="trainer_overhead",
                label="step time, GenericTrainer (no periodic checkpoint) / hand loop (median of "
                "per-pair ratios)",
                value=paired(stats[PLAIN]),
                op="<=",
                threshold=1.02,
            )
        ],
        figures=[
            Figure(
                filename="trainer.png",
                title="GenericTrainer vs a hand-written loop",
                panels=[
                    Panel(
                        title="seconds per optimizer step",
                        categories=["per step"],
                        series=[Series(label=r["variant"], x=[0], y=[r["seconds"]]) for r in rows],
                        ylabel="seconds",
                    ),
                    Panel(
                        title="checkpoint bytes by field",
                        categories=[r["field"] for r in sizes[:-1]],
                        series=[
                            Series(
                                label="bytes",
                                x=range(len(sizes) - 1),
                                y=[r["bytes"] for r in sizes[:-1]],
                            )
                        ],
                        ylabel="bytes",
                    ),
                ],
            )
        ],
    )
