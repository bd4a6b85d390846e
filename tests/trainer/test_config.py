from __future__ import annotations

from pathlib import Path

import attrs
import pytest

from trainer.config import (
    Aggregation,
    AmpDtype,
    CheckpointConfig,
    MonitorMode,
    PerformanceConfig,
    PreemptionConfig,
    ValidationConfig,
    ValidationFrequency,
)


def test_defaults() -> None:
    perf = PerformanceConfig()
    assert (
        perf.use_amp,
        perf.amp_dtype,
        perf.gradient_accumulation_steps,
        perf.clip_grad_norm,
    ) == (
        False,
        AmpDtype.BFLOAT16,
        1,
        None,
    )
    ckpt = CheckpointConfig()
    assert ckpt.root_dir == Path("checkpoints")
    assert (ckpt.save_every_n_steps, ckpt.save_every_n_epochs, ckpt.max_checkpoints) == (None, 1, 5)
    assert ckpt.monitor_mode is MonitorMode.MIN and ckpt.save_best and ckpt.use_symlinks
    assert not ckpt.tracks_best
    assert ckpt.filename_template.format(epoch=2, global_step=150) == "epoch=0002-step=000150.ckpt"
    val = ValidationConfig()
    assert val.frequency is ValidationFrequency.PER_EPOCH and val.aggregation is Aggregation.MICRO
    pre = PreemptionConfig()
    assert pre.signals == ("SIGTERM", "SIGUSR1") and pre.auto_resume and pre.resume_from_latest


def test_enums_accept_string_values() -> None:
    assert PerformanceConfig(amp_dtype="float16").amp_dtype is AmpDtype.FLOAT16
    assert CheckpointConfig(monitor_mode="max").monitor_mode is MonitorMode.MAX
    cfg = ValidationConfig(frequency="every_n_steps", every_n_steps=10, aggregation="macro")
    assert cfg == ValidationConfig(
        frequency=ValidationFrequency.EVERY_N_STEPS, every_n_steps=10, aggregation=Aggregation.MACRO
    )


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (
            lambda: PerformanceConfig(amp_dtype="fp8"),
            r"'amp_dtype' must be one of 'bfloat16', 'float16' \(got 'fp8'\)",
        ),
        (
            lambda: CheckpointConfig(monitor_mode="best"),
            r"'monitor_mode' must be one of 'min', 'max'",
        ),
        (
            lambda: ValidationConfig(aggregation="mean"),
            r"'aggregation' must be one of 'micro', 'macro'",
        ),
        (lambda: CheckpointConfig(max_checkpoints=0), r"'max_checkpoints' must be >= 1 \(got 0\)"),
        (
            lambda: CheckpointConfig(save_every_n_steps=0),
            r"'save_every_n_steps' must be >= 1 \(got 0\)",
        ),
        (
            lambda: CheckpointConfig(save_every_n_epochs=-1),
            r"'save_every_n_epochs' must be >= 1 \(got -1\)",
        ),
        (
            lambda: PerformanceConfig(gradient_accumulation_steps=0),
            r"'gradient_accumulation_steps' must be >= 1 \(got 0\)",
        ),
        (lambda: PerformanceConfig(clip_grad_norm=0.0), r"'clip_grad_norm' must be > 0"),
        (lambda: ValidationConfig(frequency="every_n_steps"), r"'every_n_steps' must be set"),
        (
            lambda: CheckpointConfig(filename_template="step-{step}.ckpt"),
            r"'filename_template' must use \{global_step\}",
        ),
        (lambda: CheckpointConfig(filename_template="{global_step}.pt"), r"ending in '.ckpt'"),
        (
            lambda: CheckpointConfig(filename_template="{global_step"),
            r"'filename_template' must be a format string",
        ),
        (lambda: PreemptionConfig(signals=("TERM",)), r"'signals' must hold signal names"),
    ],
)
def test_invalid_values_raise_with_the_value(make, match) -> None:
    with pytest.raises(ValueError, match=match):
        make()


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: PerformanceConfig(use_amp="yes"), "'use_amp' must be <class 'bool'>"),
        (
            lambda: CheckpointConfig(max_checkpoints=True),
            r"'max_checkpoints' must be an int or None \(got True\)",
        ),
        (
            lambda: PerformanceConfig(gradient_accumulation_steps=2.0),
            r"'gradient_accumulation_steps' must be an int \(got 2.0\)",
        ),
        (lambda: CheckpointConfig(monitor_metric=3), "'monitor_metric' must be <class 'str'>"),
    ],
)
def test_wrong_types_raise(make, match) -> None:
    with pytest.raises(TypeError, match=match):
        make()


def test_frozen_and_evolve() -> None:
    cfg = CheckpointConfig(root_dir="runs/a", max_checkpoints=None)
    assert cfg.root_dir == Path("runs/a") and cfg.max_checkpoints is None
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        cfg.max_checkpoints = 3  # type: ignore[misc]
    assert attrs.evolve(cfg, max_checkpoints=3).max_checkpoints == 3
    assert CheckpointConfig(monitor_metric="val/loss").tracks_best
    assert not CheckpointConfig(monitor_metric="val/loss", save_best=False).tracks_best


def test_signals_accept_a_single_name_and_enum_members() -> None:
    import signal

    assert PreemptionConfig(signals="SIGINT").signals == ("SIGINT",)
    assert PreemptionConfig(signals=[signal.SIGTERM]).signals == ("SIGTERM",)


def test_logger_names_become_logger_name_members_and_snapshot_as_plain_strings() -> None:
    from trainer import GenericTrainerConfig, LoggerName

    config = GenericTrainerConfig(loggers=["CSV", LoggerName.TENSORBOARD])
    assert config.loggers == (LoggerName.CSV, LoggerName.TENSORBOARD)
    assert config.loggers == ("csv", "tensorboard")  # a str enum: strings compare equal
    assert GenericTrainerConfig(loggers="csv").loggers == (LoggerName.CSV,)
    snapshot = config.to_dict()["loggers"]
    assert snapshot == ["csv", "tensorboard"] and all(type(n) is str for n in snapshot)
    with pytest.raises(ValueError, match=r"'loggers' holds unknown logger names \['wandb'\]"):
        GenericTrainerConfig(loggers=["csv", "wandb"])
