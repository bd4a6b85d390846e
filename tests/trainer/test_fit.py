"""Resume semantics of GenericTrainer.fit: epoch ends, finished runs, signals, interrupts, loads."""

from __future__ import annotations

import io
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from statefuldata import MultiDataLoaderConfig, make_loader
from tests.data import Features
from tests.trainer.harness import InterruptAt, SignalAt, assert_same, build, loaders, snapshot
from trainer import (
    CheckpointConfig,
    CheckpointError,
    GenericTrainer,
    GenericTrainerConfig,
    PerformanceConfig,
    PreemptionConfig,
    ValidationConfig,
    load_checkpoint,
    save_checkpoint,
)
from trainer.checkpoints import V1_KEYS, read_checkpoint

ROOT = Path(__file__).resolve().parents[2]


def linear_trainer(root, *, log=None, callbacks=(), sources=1, **overrides) -> GenericTrainer:
    """One linear layer (no dropout), SGD without momentum: steps with zero gradient change nothing."""
    torch.manual_seed(0)
    model = torch.nn.Linear(8, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=3, gamma=0.5)
    overrides.setdefault("checkpoint", CheckpointConfig(root_dir=root))
    config = GenericTrainerConfig(progress_bar=False, log_every_n_steps=1, **overrides)
    trainer = GenericTrainer(config, model, optimizer, scheduler, callbacks=callbacks)

    def step(t, batch, batch_idx, dataloader_idx, name):
        if log is not None:
            log.append((t.state.epoch, name, batch["id"].tolist()))
        return {"loss": torch.nn.functional.mse_loss(t.model(batch["x"]), batch["y"])}

    trainer.set_training_step(step)
    trainer.set_validation_step(
        lambda t, batch, i, di, name: {
            "loss": torch.nn.functional.mse_loss(t.model(batch["x"]), batch["y"])
        }
    )
    return trainer


def eight_batches(offset=0):
    return make_loader(Features(32, offset=offset), batch_size=4, shuffle=True, seed=3)


def test_epoch_end_checkpoint_resumes_into_one_full_next_epoch(tmp_path) -> None:
    reference_log: list = []
    linear_trainer(tmp_path / "ref", log=reference_log).fit([eight_batches()], max_epochs=2)
    first_log: list = []
    assert (
        linear_trainer(tmp_path / "run", log=first_log).fit([eight_batches()], max_epochs=1).status
        == "completed"
    )
    second_log: list = []
    result = linear_trainer(tmp_path / "run", log=second_log).fit([eight_batches()], max_epochs=2)
    assert result.status == "completed" and len(second_log) == 8
    assert first_log + second_log == reference_log


def test_finished_run_refit_trains_nothing(tmp_path, caplog) -> None:
    linear_trainer(tmp_path).fit([eight_batches()], max_epochs=2)
    log: list = []
    trainer = linear_trainer(tmp_path, log=log)
    with caplog.at_level("INFO", logger="trainer.loop"):
        result = trainer.fit([eight_batches()], max_epochs=2)
    assert result.status == "already_complete" and log == [] and result.global_step == 16
    assert "already complete: 2 of 2 epochs done" in caplog.text


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGUSR1])
def test_real_signal_at_batch_3_of_8_then_resume_gives_exactly_24_batches(tmp_path, signum) -> None:
    reference_log: list = []
    linear_trainer(tmp_path / "ref", log=reference_log).fit([eight_batches()], max_epochs=3)
    first_log: list = []
    trainer = linear_trainer(tmp_path / "run", log=first_log, callbacks=(SignalAt(3, signum),))
    assert trainer.fit([eight_batches()], max_epochs=3).status == "preempted"
    assert len(first_log) == 3
    saved = read_checkpoint(tmp_path / "run" / "latest.ckpt")
    assert (
        saved["resume_state"]["preempted"] and saved["resume_state"]["save_reason"] == "preempted"
    )
    second_log: list = []
    linear_trainer(tmp_path / "run", log=second_log).fit([eight_batches()], max_epochs=3)
    assert len(first_log + second_log) == 24
    assert first_log + second_log == reference_log


@pytest.fixture(scope="module")
def three_loader_reference(tmp_path_factory):
    log: list = []
    trainer = build(tmp_path_factory.mktemp("ref"), log=log)
    trainer.fit(loaders(), max_epochs=2)
    return trainer, log


# 37: inside an accumulation window (accumulation 2); 36 and 100: right at a window's last batch,
# before its optimizer step ran; 100 is also the last batch of epoch 0.
@pytest.mark.parametrize("at", [36, 37, 100])
def test_keyboard_interrupt_then_fit_again_continues_from_the_exact_batch(
    tmp_path, three_loader_reference, at
) -> None:
    expected, expected_log = three_loader_reference
    log: list = []
    interrupt = InterruptAt(at)
    trainer = build(tmp_path / "run", log=log, callbacks=(interrupt,))
    data = loaders()
    with pytest.raises(KeyboardInterrupt):
        trainer.fit(data, max_epochs=2)
    assert len(log) == at and trainer.state.micro_step == (1 if at % 2 else 2)
    trainer.callbacks.remove(interrupt)
    assert trainer.fit(data, max_epochs=2).status == "completed"
    assert log == expected_log
    assert_same(snapshot(trainer), snapshot(expected))


def test_checkpoint_loaded_before_fit_keeps_its_data_position(tmp_path) -> None:
    expected_log: list = []
    expected = build(tmp_path / "ref", log=expected_log)
    expected.fit(loaders(), max_epochs=2)
    first_log: list = []
    build(tmp_path / "run", log=first_log, callbacks=(SignalAt(61),)).fit(loaders(), max_epochs=2)
    path = (tmp_path / "run" / "latest.ckpt").resolve()
    log: list = []
    trainer = build(
        tmp_path / "elsewhere",
        ambient_seed=99,
        log=log,
        preemption=PreemptionConfig(auto_resume=False),
    )
    load_checkpoint(path, trainer)
    trainer.fit(loaders(), max_epochs=2)
    assert first_log + log == expected_log
    assert_same(snapshot(trainer), snapshot(expected))


def test_explicit_path_and_latest_on_a_first_run(tmp_path) -> None:
    reference = build(tmp_path / "ref")
    reference.fit(loaders(), max_epochs=1)
    fresh = build(tmp_path / "fresh")
    assert fresh.fit(loaders(), max_epochs=1, resume_from_checkpoint="latest").status == "completed"
    assert_same(snapshot(fresh), snapshot(reference))
    with pytest.raises(FileNotFoundError):
        build(tmp_path / "other").fit(
            loaders(), max_epochs=1, resume_from_checkpoint=tmp_path / "missing.ckpt"
        )


def test_corrupt_checkpoints_never_silently_train_from_scratch(tmp_path) -> None:
    build(tmp_path, callbacks=(SignalAt(10),)).fit(loaders(), max_epochs=1)
    for path in tmp_path.glob("epoch=*.ckpt"):
        path.write_bytes(path.read_bytes()[:100])
    log: list = []
    with pytest.raises(
        CheckpointError, match=r"No valid checkpoint in .* every candidate failed to load"
    ):
        build(tmp_path, log=log).fit(loaders(), max_epochs=1)
    assert log == []


def test_loss_weight_zero_equals_training_on_the_other_loader_alone(tmp_path) -> None:
    alone = linear_trainer(tmp_path / "alone")
    alone.fit([eight_batches()], max_epochs=2)
    mixed = linear_trainer(
        tmp_path / "mixed",
        train_loader_config=MultiDataLoaderConfig(sampling_strategy="round_robin"),
        loss_weights_per_loader=[1.0, 0.0],
    )
    mixed.fit([eight_batches(), eight_batches(offset=500)], max_epochs=2)
    assert_same(alone.model.state_dict(), mixed.model.state_dict())
    changed = linear_trainer(
        tmp_path / "changed",
        train_loader_config=MultiDataLoaderConfig(sampling_strategy="round_robin"),
        loss_weights_per_loader=[1.0, 0.5],
    )
    changed.fit([eight_batches(), eight_batches(offset=500)], max_epochs=2)
    assert not torch.equal(alone.model.weight, changed.model.weight)


def test_per_step_scheduler_steps_exactly_once_per_optimizer_step(tmp_path) -> None:
    trainer = linear_trainer(tmp_path, performance=PerformanceConfig(gradient_accumulation_steps=2))
    trainer.fit([eight_batches()], max_epochs=3)
    assert trainer.state.global_step == 12
    scheduler = trainer.schedulers[0]
    assert scheduler.last_epoch == 12
    assert scheduler.get_last_lr() == [0.05 * 0.5 ** (12 // 3)]


def test_validation_metrics_per_loader_and_global_and_train_mode_restored(tmp_path) -> None:
    for aggregation in ("micro", "macro"):
        trainer = linear_trainer(
            tmp_path / aggregation, validation=ValidationConfig(aggregation=aggregation)
        )
        val = [
            make_loader(Features(8, offset=900), batch_size=4),
            make_loader(Features(4, offset=950), batch_size=4),
        ]
        result = trainer.fit([eight_batches()], val_loaders=val, max_epochs=1)
        metrics = result.metrics
        assert trainer.model.training
        a, b = metrics["val/val_0/loss"], metrics["val/val_1/loss"]
        expected = (a + b) / 2 if aggregation == "macro" else (2 * a + b) / 3
        assert metrics["val/loss"] == pytest.approx(expected)
        assert len(trainer.metrics_history["val/loss"]) == 1


def test_saved_file_has_exactly_the_spec_fields_all_written(tmp_path) -> None:
    config = MultiDataLoaderConfig(
        sampling_strategy="weighted_random",
        dataloader_weights=[0.5, 0.5],
        epoch_length_policy="fixed_num_steps",
        steps_per_epoch=6,
    )
    trainer = linear_trainer(
        tmp_path,
        train_loader_config=config,
        performance=PerformanceConfig(use_amp=True, amp_dtype="float16"),
        checkpoint=CheckpointConfig(root_dir=tmp_path, save_every_n_steps=4),
    )
    trainer.fit([eight_batches(), eight_batches(offset=500)], max_epochs=1)
    payload = torch.load(tmp_path / "latest.ckpt", weights_only=True)
    assert set(payload) == set(V1_KEYS)
    never_none = set(V1_KEYS) - {"rng_states"}
    assert all(payload[key] is not None for key in never_none), [
        k for k in never_none if payload[k] is None
    ]
    assert payload["rng_states"]["torch_cuda"] is None or isinstance(
        payload["rng_states"]["torch_cuda"], list
    )
    assert isinstance(payload["rng_states"]["torch_cpu"], torch.Tensor)
    assert payload["amp_scaler_state"]["scale"] > 0
    manager_state = payload["dataloader_manager_state"]
    assert payload["choice_rng_state"] is manager_state["choice_rng"] or torch.equal(
        payload["choice_rng_state"][1], manager_state["choice_rng"][1]
    )
    assert manager_state["train_iterator_state"]["schedule_position"] == 6
    assert payload["config_snapshot"]["trainer"]["performance"]["amp_dtype"] == "float16"
    buffer = io.BytesIO()
    save_checkpoint(tmp_path / "manual.ckpt", trainer)
    buffer.write((tmp_path / "manual.ckpt").read_bytes())
    assert torch.load(io.BytesIO(buffer.getvalue()), weights_only=True)["global_step"] == 6


@pytest.mark.slow
def test_demo_command_prints_the_equality_verdict() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "trainer", "demo"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "final parameters equal to the uninterrupted run: equal (True)" in done.stdout
    assert "preempted" in done.stdout and "schedule position" in done.stdout
    removed = re.search(r"demo: removed its folder (\S+)", done.stdout)
    assert removed and not Path(removed.group(1)).exists()  # it cleans up after itself


def test_fit_takes_a_pipeline_spec_and_stores_its_snapshot(tmp_path) -> None:
    from statefuldata import LoaderSpec, PipelineSpec

    spec = PipelineSpec(
        loaders=[
            LoaderSpec(name="a", dataset=Features(16), batch_size=4, shuffle=True, weight=0.6),
            LoaderSpec(name="b", dataset=Features(16, offset=500), batch_size=4, weight=0.4),
        ],
        sampling_strategy="weighted",
        epoch_length_policy="fixed_num_steps",
        steps_per_epoch=5,
        seed=2,
    )
    log: list = []
    trainer = linear_trainer(
        tmp_path, log=log, checkpoint=CheckpointConfig(root_dir=tmp_path, save_every_n_steps=2)
    )
    assert trainer.fit(spec, max_epochs=1).status == "completed"
    assert [name for _, name, _ in log] == [
        name for _, name, _ in spec.build().create_epoch_iterator("train", 0)
    ]
    payload = read_checkpoint(tmp_path / "latest.ckpt")
    assert payload["config_snapshot"]["data"] == spec.to_dict()
    # map-style data without state: its state is current at every step, no worker snapshots
    assert [ld.snapshot_every_n_steps for ld in trainer.dataloader_manager.loaders()] == [
        None,
        None,
    ]


def test_worker_snapshots_follow_the_checkpoint_cadence_where_they_cost(tmp_path) -> None:
    from tests.data import FeatureStream

    trainer = linear_trainer(
        tmp_path, checkpoint=CheckpointConfig(root_dir=tmp_path, save_every_n_steps=2)
    )
    pair = [make_loader(Features(8), batch_size=4), make_loader(FeatureStream(8), batch_size=4)]
    trainer.fit(pair, max_epochs=1)
    # the stream's workers hold its state: snapshots at the cadence bound a restore's replay
    assert [ld.snapshot_every_n_steps for ld in pair] == [None, 2]


def test_per_loader_optimizers_only_step_with_their_loader(tmp_path) -> None:
    torch.manual_seed(0)
    model = torch.nn.ModuleDict({"a": torch.nn.Linear(8, 1), "b": torch.nn.Linear(8, 1)})
    opt_a = torch.optim.SGD(model["a"].parameters(), lr=0.1)
    opt_b = torch.optim.SGD(model["b"].parameters(), lr=0.1)
    sched_a = torch.optim.lr_scheduler.StepLR(opt_a, step_size=1, gamma=0.5)
    sched_b = torch.optim.lr_scheduler.StepLR(opt_b, step_size=1, gamma=0.5)
    config = GenericTrainerConfig(
        progress_bar=False,
        checkpoint=CheckpointConfig(root_dir=tmp_path),
        train_loader_config=MultiDataLoaderConfig(sampling_strategy="sequential"),
        per_loader_optimizer_id=[0, 1],
        loss_weights_per_loader=[1.0, 0.0],
    )
    trainer = GenericTrainer(config, model, [opt_a, opt_b], [sched_a, sched_b])
    before_b = model["b"].weight.detach().clone()
    trainer.set_training_step(
        lambda t, batch, i, di, name: {
            "loss": torch.nn.functional.mse_loss(
                t.model["a" if di == 0 else "b"](batch["x"]), batch["y"]
            )
        }
    )
    trainer.fit([eight_batches(), eight_batches(offset=500)], max_epochs=1)
    assert torch.equal(model["b"].weight, before_b)  # its loader's loss weight is 0: never stepped
    assert sched_a.last_epoch == 8 and sched_b.last_epoch == 0  # 8 batches of loader a, 8 of b
