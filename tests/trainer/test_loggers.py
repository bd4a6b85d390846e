"""What a run records and shows: every scalar, metrics.csv, TensorBoard, summary lines, a console."""

from __future__ import annotations

import csv
import logging
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch

from statefuldata import make_loader
from tests.data import Features
from tests.trainer.harness import SignalAt
from trainer import (
    CheckpointConfig,
    CSVLogger,
    GenericTrainer,
    GenericTrainerConfig,
    Logger,
    TensorBoardLogger,
)

ROOT = Path(__file__).resolve().parents[2]


def acc_trainer(root: Path, *, callbacks=(), **overrides) -> GenericTrainer:
    torch.manual_seed(0)
    model = torch.nn.Linear(8, 1)
    overrides.setdefault("checkpoint", CheckpointConfig(root_dir=root))
    config = GenericTrainerConfig(progress_bar=False, log_every_n_steps=2, **overrides)
    trainer = GenericTrainer(
        config, model, torch.optim.SGD(model.parameters(), lr=0.05), callbacks=callbacks
    )

    def step(t, batch, i, di, name):
        out = t.model(batch["x"])
        return {
            "loss": torch.nn.functional.mse_loss(out, batch["y"]),
            "acc": ((out - batch["y"]).abs() < 0.5).float().mean(),
            "lr": t.optimizers[0].param_groups[0]["lr"],
            "ignored": "not a number",
        }

    trainer.set_training_step(step)
    trainer.set_validation_step(
        lambda t, b, i, di, n: {
            "loss": torch.nn.functional.mse_loss(t.model(b["x"]), b["y"]),
            "mae": (t.model(b["x"]) - b["y"]).abs().mean(),
        }
    )
    return trainer


def data():
    return (
        [make_loader(Features(40), batch_size=4, shuffle=True, seed=2)],
        [make_loader(Features(8, offset=70), batch_size=4)],
    )


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open() as f:
        return list(csv.DictReader(f))


def test_every_scalar_goes_to_metrics_history_the_csv_and_the_checkpoint(tmp_path) -> None:
    trainer = acc_trainer(tmp_path)
    trainer.fit(*data(), max_epochs=2)
    history = trainer.metrics_history
    assert {"train/loss", "train/acc", "train/lr", "val/loss", "val/mae"} <= set(history)
    assert "train/ignored" not in history
    assert [s for s, _ in history["train/acc"]] == [2, 4, 6, 8, 10, 12, 14, 16, 18, 20]
    rows = read_csv(tmp_path / "metrics.csv")
    assert [int(r["step"]) for r in rows] == [2, 4, 6, 8, 10, 12, 14, 16, 18, 20]  # one per step
    assert list(rows[0]) == ["step", *sorted(history)]
    by_step = {int(r["step"]): r for r in rows}
    for key, points in history.items():
        for step, value in points:
            assert float(by_step[step][key]) == value, (key, step)
    assert by_step[10]["val/loss"] != "" and by_step[8]["val/loss"] == ""  # validation per epoch
    saved = torch.load(tmp_path / "latest.ckpt", weights_only=True)["metrics_history"]
    assert saved == history


@pytest.mark.parametrize("signal_at", [7, 10, 13, 20])  # mid-epoch 0, its end, epoch 1, the end
def test_a_preempted_and_resumed_run_writes_the_same_csv(tmp_path, signal_at) -> None:
    acc_trainer(tmp_path / "ref").fit(*data(), max_epochs=2)
    first = acc_trainer(tmp_path / "run", callbacks=(SignalAt(signal_at),))
    assert first.fit(*data(), max_epochs=2).status == "preempted"
    assert acc_trainer(tmp_path / "run").fit(*data(), max_epochs=2).status == "completed"
    expected = (tmp_path / "ref" / "metrics.csv").read_text()
    assert (tmp_path / "run" / "metrics.csv").read_text() == expected


def crashed_and_resumed(tmp_path: Path, newest: int) -> Path:
    """An uninterrupted run in ``ref``; in ``run``, a 20-step run that crashed after step 20
    with step ``newest``'s checkpoint as its newest, then resumed to the end."""
    acc_trainer(tmp_path / "ref").fit(*data(), max_epochs=2)
    run = tmp_path / "run"
    acc_trainer(run, checkpoint=CheckpointConfig(root_dir=run, save_every_n_steps=3)).fit(
        *data(), max_epochs=2
    )
    for path in run.glob("*.ckpt"):
        if path.name == "latest.ckpt" or int(path.stem.split("step=")[1]) > newest:
            path.unlink()
    resumed = acc_trainer(run, checkpoint=CheckpointConfig(root_dir=run, save_every_n_steps=3))
    resumed.fit(*data(), max_epochs=2)
    return run


def test_rows_logged_after_the_resumed_checkpoint_are_dropped(tmp_path) -> None:
    run = crashed_and_resumed(tmp_path, newest=18)
    assert (run / "metrics.csv").read_text() == (tmp_path / "ref" / "metrics.csv").read_text()


class CsvWatcher(Logger):
    """After the CSV logger in ``callbacks``: the steps in metrics.csv at each log and checkpoint."""

    def __init__(self, path: Path) -> None:
        self.path, self.seen = path, []

    def rows(self) -> list[int]:
        return [int(r["step"]) for r in read_csv(self.path)] if self.path.exists() else []

    def log_metrics(self, trainer, metrics, step) -> None:
        self.seen.append(("log", step, self.rows()))

    def on_checkpoint(self, trainer, path) -> None:
        self.seen.append(("checkpoint", trainer.state.global_step, self.rows()))


@pytest.mark.parametrize("flush_every_s", [0, 3600])
def test_csv_rows_reach_the_file_by_time_and_at_every_checkpoint(tmp_path, flush_every_s) -> None:
    watcher = CsvWatcher(tmp_path / "metrics.csv")
    checkpoint = CheckpointConfig(root_dir=tmp_path, save_every_n_steps=4, save_every_n_epochs=None)
    csv_logger = CSVLogger(flush_every_s=flush_every_s)
    trainer = acc_trainer(
        tmp_path, callbacks=(csv_logger, watcher), loggers=(), checkpoint=checkpoint
    )
    trainer.fit(*data(), max_epochs=1)
    seen = {(kind, step): rows for kind, step, rows in watcher.seen}
    # a row is written once its step is over; the first one sets the header (a rewrite), later
    # ones wait for flush_every_s (0: at once) or the next checkpoint
    assert seen[("log", 4)] == [2]
    assert seen[("log", 6)] == ([2, 4] if flush_every_s == 0 else [2])
    assert seen[("log", 8)] == ([2, 4, 6] if flush_every_s == 0 else [2])
    assert seen[("checkpoint", 4)] == [2] and seen[("checkpoint", 8)] == [2, 4, 6]
    assert watcher.rows() == [2, 4, 6, 8, 10]  # fit() returned: every row, file closed
    assert csv_logger._file is None


def test_a_csv_logger_pickles_mid_run_and_its_copy_appends(tmp_path) -> None:
    import pickle

    csv_logger = CSVLogger(flush_every_s=3600)
    trainer = acc_trainer(tmp_path, callbacks=(csv_logger,), loggers=())
    csv_logger.start(trainer)
    for step, loss in ((2, 1.0), (4, 0.5), (6, 0.25)):  # as the trainer records and logs them
        trainer.metrics_history.setdefault("train/loss", []).append([step, loss])
        csv_logger.log_metrics(trainer, {"train/loss": loss}, step)
    # row 2 went in with the header (a rewrite), row 4 is buffered, row 6 is still open
    copy = pickle.loads(pickle.dumps(csv_logger))  # flushes row 4; the copy holds row 6
    assert [r["step"] for r in read_csv(tmp_path / "metrics.csv")] == ["2", "4"]
    csv_logger.finish(trainer)
    assert copy._file is None and copy._row == {"train/loss": 0.25}


def test_csv_logger_refuses_a_negative_flush_interval() -> None:
    with pytest.raises(ValueError, match=r"flush_every_s must be .* \(got -1\)"):
        CSVLogger(flush_every_s=-1)


def tensorboard_scalars(log_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar TensorBoard shows for ``log_dir``, as (step, value) per tag."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(log_dir))
    accumulator.Reload()
    return {
        tag: [(e.step, e.value) for e in accumulator.Scalars(tag)]
        for tag in accumulator.Tags()["scalars"]
    }


def test_tensorboard_event_files_appear(tmp_path) -> None:
    pytest.importorskip("tensorboard", reason="tensorboard is an optional test dependency")
    trainer = acc_trainer(tmp_path)
    trainer.fit(*data(), max_epochs=1)
    assert len(list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))) == 1
    scalars = tensorboard_scalars(tmp_path / "tensorboard")
    assert {"train/loss", "train/acc", "val/loss"} <= set(scalars)
    assert [step for step, _ in scalars["train/acc"]] == [2, 4, 6, 8, 10]
    for key, points in trainer.metrics_history.items():  # float32 in the file
        assert scalars[key] == [(s, pytest.approx(v, rel=1e-6)) for s, v in points], key


def test_tensorboard_hides_what_a_run_logged_after_the_resumed_checkpoint(tmp_path) -> None:
    pytest.importorskip("tensorboard", reason="tensorboard is an optional test dependency")
    run = crashed_and_resumed(tmp_path, newest=15)
    assert len(list((run / "tensorboard").glob("events.out.tfevents.*"))) == 2
    expected = tensorboard_scalars(tmp_path / "ref" / "tensorboard")
    assert tensorboard_scalars(run / "tensorboard") == expected  # steps 16-20 once, as in ref
    assert [step for step, _ in expected["train/acc"]] == list(range(2, 21, 2))


class TensorBoardWatcher(Logger):
    """After the TensorBoard logger: the train/loss steps in its files at each log and checkpoint."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir, self.seen = log_dir, []

    def steps(self) -> list[int]:
        return [step for step, _ in tensorboard_scalars(self.log_dir).get("train/loss", [])]

    def log_metrics(self, trainer, metrics, step) -> None:
        self.seen.append(("log", step, self.steps()))
        self.threads = {type(t).__module__ for t in threading.enumerate()}

    def on_checkpoint(self, trainer, path) -> None:
        self.seen.append(("checkpoint", trainer.state.global_step, self.steps()))


@pytest.mark.parametrize("flush_every_s", [0, 3600])
def test_tensorboard_events_reach_the_file_by_time_and_at_every_checkpoint(
    tmp_path, flush_every_s
) -> None:
    pytest.importorskip("tensorboard", reason="tensorboard is an optional test dependency")
    watcher = TensorBoardWatcher(tmp_path / "tensorboard")
    checkpoint = CheckpointConfig(root_dir=tmp_path, save_every_n_steps=4, save_every_n_epochs=None)
    board = TensorBoardLogger(flush_every_s=flush_every_s)
    trainer = acc_trainer(tmp_path, callbacks=(board, watcher), loggers=(), checkpoint=checkpoint)
    trainer.fit(*data(), max_epochs=1)
    seen = {(kind, step): steps for kind, step, steps in watcher.seen}
    assert seen[("log", 2)] == ([2] if flush_every_s == 0 else [])
    assert seen[("log", 6)] == ([2, 4, 6] if flush_every_s == 0 else [2, 4])
    assert seen[("checkpoint", 4)] == [2, 4] and seen[("checkpoint", 8)] == [2, 4, 6, 8]
    assert watcher.steps() == [2, 4, 6, 8, 10] and board._file is None  # fit() returned
    assert not any(m.startswith("tensorboard") for m in watcher.threads)  # no writer thread


def test_a_tensorboard_logger_pickles_mid_run_and_its_copy_appends(tmp_path) -> None:
    pytest.importorskip("tensorboard", reason="tensorboard is an optional test dependency")
    import pickle

    board = TensorBoardLogger(tmp_path / "tb", flush_every_s=3600)
    trainer = acc_trainer(tmp_path, loggers=())
    board.start(trainer)
    board.log_metrics(trainer, {"train/loss": 1.0}, 2)
    copy = pickle.loads(pickle.dumps(board))  # flushes step 2
    assert [s for s, _ in tensorboard_scalars(tmp_path / "tb")["train/loss"]] == [2]
    copy.log_metrics(trainer, {"train/loss": 0.5}, 4)
    copy.finish(trainer)
    board.finish(trainer)
    assert tensorboard_scalars(tmp_path / "tb")["train/loss"] == [(2, 1.0), (4, 0.5)]


def test_a_tensorboard_logger_refuses_a_negative_flush_interval() -> None:
    with pytest.raises(ValueError, match=r"flush_every_s must be .* \(got -0.5\)"):
        TensorBoardLogger(flush_every_s=-0.5)


def test_a_user_logger_in_a_few_lines(tmp_path) -> None:
    seen: list[tuple[int, list[str]]] = []

    class ListLogger(Logger):
        def log_metrics(self, trainer, metrics, step) -> None:
            seen.append((step, sorted(metrics)))

    acc_trainer(tmp_path, callbacks=(ListLogger(),), loggers=()).fit(*data(), max_epochs=1)
    assert seen[0] == (2, ["train/acc", "train/loss", "train/lr"])
    assert seen[-1][0] == 10 and "val/loss" in seen[-1][1]
    assert not (tmp_path / "metrics.csv").exists()  # loggers=() turns the built-in ones off


def test_summary_lines_per_epoch_and_per_validation(tmp_path, caplog) -> None:
    with caplog.at_level(logging.INFO, logger="trainer"):
        acc_trainer(tmp_path).fit(*data(), max_epochs=2)
    lines = [r.getMessage() for r in caplog.records if r.name == "trainer.loop"]
    epochs = [line for line in lines if line.startswith("epoch ")]
    validations = [line for line in lines if line.startswith("validation at step")]
    assert (
        len(epochs) == 2
        and "epoch 0 done: step 10, loss " in epochs[0]
        and "samples/s" in epochs[0]
    )
    assert len(validations) == 2 and ", mae " in validations[0]


def test_default_console_shows_progress_only_when_logging_is_not_configured(tmp_path) -> None:
    script = (
        "import torch\n"
        "from tests.trainer.test_loggers import acc_trainer, data\n"
        f"acc_trainer({str(tmp_path)!r}).fit(*data(), max_epochs=1)\n"
        f"acc_trainer({str(tmp_path)!r}).fit(*data(), max_epochs=1)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert "epoch 0 done: step 10" in done.stderr and "validation at step 10" in done.stderr
    assert "Training is already complete: 1 of 1 epochs done" in done.stderr  # the rerun says so
    configured = "import logging; logging.basicConfig(level=logging.WARNING)\n" + script
    quiet = subprocess.run(
        [sys.executable, "-c", configured], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert quiet.returncode == 0 and "epoch 0 done" not in quiet.stderr


def test_device_defaults_to_auto(tmp_path) -> None:
    trainer = acc_trainer(tmp_path)
    assert trainer.config.device == "auto"
    assert trainer.device.type == ("cuda" if torch.cuda.is_available() else "cpu")
