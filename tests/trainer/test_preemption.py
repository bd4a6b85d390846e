"""Preemption: process-group signals, the distributed agreement, signals during epoch-end work."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from statefuldata import make_loader
from tests.data import Features
from tests.trainer.group_signal_run import EPOCHS, build
from tests.trainer.harness import assert_same
from trainer import (
    CheckpointConfig,
    GenericTrainer,
    GenericTrainerConfig,
    InterruptFlag,
    PreemptionFlag,
)
from trainer.checkpoints import read_checkpoint

ROOT = Path(__file__).resolve().parents[2]


def test_interrupt_flag_defers_the_first_sigint_and_not_the_second() -> None:
    with InterruptFlag() as flag:
        os.kill(os.getpid(), signal.SIGINT)
        assert flag.requested and not flag.hard  # no KeyboardInterrupt yet
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
        assert flag.hard
        with pytest.raises(KeyboardInterrupt):
            flag.raise_if_requested()
        flag.raise_if_requested()  # consumed: nothing more
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_preemption_flag_keeps_a_local_request_and_restores_handlers() -> None:
    before = signal.getsignal(signal.SIGUSR1)
    with PreemptionFlag(("SIGUSR1",)) as flag:
        assert not flag.agreed()
        os.kill(os.getpid(), signal.SIGUSR1)
        assert flag.agreed() and flag.agreed() and flag.signal_name == "SIGUSR1"
    assert signal.getsignal(signal.SIGUSR1) is before


def _reference(tmp_path: Path, persistent: bool) -> tuple[dict, list]:
    log: list = []
    trainer, loaders = build(tmp_path / "ref", log, persistent=persistent)
    assert trainer.fit(loaders, max_epochs=EPOCHS).status == "completed"
    return {k: v.clone() for k, v in trainer.model.state_dict().items()}, log


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "persistent", "at", "context"),
    [
        ("SIGTERM", False, 7, "fork"),
        ("SIGUSR1", False, 12, "forkserver"),  # workers do not inherit the trainer's handlers
        ("SIGTERM", True, 21, "forkserver"),
        ("SIGUSR1", True, 5, "fork"),
    ],
)
def test_process_group_signal_with_workers_saves_once_and_resumes_exactly(
    tmp_path, name, persistent, at, context
) -> None:
    expected_params, expected_log = _reference(tmp_path, persistent)
    run, out = tmp_path / "run", tmp_path / "first.pt"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "tests.trainer.group_signal_run",
            str(run),
            str(out),
            name,
            str(at),
            str(int(persistent)),
            context,
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
        start_new_session=True,  # its own process group: the signal reaches it and its workers only
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "killed by signal" not in done.stderr
    assert done.stderr.count(f"Received {name}") == 1  # the main process only: workers ignore it
    # multiprocessing's resource tracker survives it too (it would be relaunched with this warning;
    # its own leak accounting at shutdown can race under load and is not what this checks)
    assert "process died unexpectedly" not in done.stderr
    first = torch.load(out, weights_only=True)
    assert first["status"] == "preempted"
    assert len(first["log"]) == at and first["step"] == at  # saved at the boundary of batch `at`
    files = sorted(p.name for p in run.glob("epoch=*.ckpt"))
    assert len(files) == 1, files  # exactly one checkpoint: the preemption's
    saved = read_checkpoint(run / files[0])
    assert saved["resume_state"]["save_reason"] == "preempted"
    assert saved["resume_state"]["micro_step"] == 0 and saved["global_step"] == at
    log: list = []
    trainer, loaders = build(run, log, persistent=persistent)
    assert trainer.fit(loaders, max_epochs=EPOCHS).status == "completed"
    assert first["log"] + log == expected_log
    assert_same(trainer.model.state_dict(), expected_params)


def test_signal_during_epoch_end_validation_stops_there_with_one_save(tmp_path) -> None:
    sent: list = []

    def trainer_for(root: Path, log: list, signal_in_validation: bool) -> GenericTrainer:
        torch.manual_seed(0)
        model = torch.nn.Linear(8, 1)
        config = GenericTrainerConfig(
            progress_bar=False, checkpoint=CheckpointConfig(root_dir=root, max_checkpoints=None)
        )
        trainer = GenericTrainer(config, model, torch.optim.SGD(model.parameters(), lr=0.1))

        def step(t, batch, i, di, name):
            log.append(batch["id"].tolist())
            return {"loss": torch.nn.functional.mse_loss(t.model(batch["x"]), batch["y"])}

        def validation_step(t, batch, i, di, name):
            if signal_in_validation and not sent:
                sent.append(True)
                os.kill(os.getpid(), signal.SIGTERM)
            return {"loss": torch.nn.functional.mse_loss(t.model(batch["x"]), batch["y"])}

        trainer.set_training_step(step)
        trainer.set_validation_step(validation_step)
        return trainer

    def data():
        return (
            [make_loader(Features(24), batch_size=4, shuffle=True, seed=1)],
            [make_loader(Features(8, offset=50), batch_size=4)],
        )

    reference_log: list = []
    reference = trainer_for(tmp_path / "ref", reference_log, False)
    reference.fit(*data(), max_epochs=2)
    log: list = []
    result = trainer_for(tmp_path / "run", log, True).fit(*data(), max_epochs=2)
    assert result.status == "preempted" and result.global_step == 6  # no step of epoch 1
    assert len(log) == 6
    files = sorted(p.name for p in (tmp_path / "run").glob("epoch=*.ckpt"))
    assert files == ["epoch=0001-step=000006.ckpt"]  # the epoch-end save, not a second one
    assert read_checkpoint(tmp_path / "run" / files[0])["resume_state"]["preempted"] is False
    rest: list = []
    resumed = trainer_for(tmp_path / "run", rest, False)
    assert resumed.fit(*data(), max_epochs=2).status == "completed"
    assert log + rest == reference_log
    assert_same(resumed.model.state_dict(), reference.model.state_dict())
