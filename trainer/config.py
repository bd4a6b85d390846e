"""Frozen trainer configs: precision, checkpointing, validation and preemption.

Each config is a frozen attrs class validated once at construction (change one with
``attrs.evolve``). Modes are enums that also accept their string values, so
``ValidationConfig(aggregation="macro")`` and ``ValidationConfig(aggregation=Aggregation.MACRO)``
are the same config.

Example:
    >>> PerformanceConfig(use_amp=True, amp_dtype="float16").amp_dtype
    <AmpDtype.FLOAT16: 'float16'>
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import attrs

from trainer.validators import (
    check_logger_names,
    check_loss_weights,
    check_optimizer_ids,
    check_signals,
    check_template,
    int_at_least,
    is_bool,
    loader_config_or_none,
    optional_tuple,
    positive_float_or_none,
    signal_names,
    to_enum,
    to_path,
    to_plain,
)

__all__ = [
    "Aggregation",
    "AmpDtype",
    "CheckpointConfig",
    "LoggerName",
    "MonitorMode",
    "NonFiniteLoss",
    "PerformanceConfig",
    "PreemptionConfig",
    "ValidationConfig",
    "ValidationFrequency",
]


class AmpDtype(enum.Enum):
    """The autocast dtype used when ``use_amp`` is on."""

    BFLOAT16 = "bfloat16"
    FLOAT16 = "float16"


class MonitorMode(enum.Enum):
    """Whether a lower (``min``) or higher (``max``) monitored metric is better."""

    MIN = "min"
    MAX = "max"


class ValidationFrequency(enum.Enum):
    """When validation runs: after each epoch or every ``every_n_steps`` optimizer steps."""

    PER_EPOCH = "per_epoch"
    EVERY_N_STEPS = "every_n_steps"


class Aggregation(enum.Enum):
    """How validation metrics combine over loaders: over all batches (micro) or per loader (macro)."""

    MICRO = "micro"
    MACRO = "macro"


@attrs.frozen(kw_only=True)
class PerformanceConfig:
    """Mixed precision, gradient accumulation and clipping.

    Attributes:
        use_amp: Run the forward under autocast. CPU uses bf16 (or fp16 with a GradScaler); CUDA
            uses fp16 with a GradScaler or bf16 without one.
        amp_dtype: ``"bfloat16"`` or ``"float16"``.
        gradient_accumulation_steps: Micro-batches per optimizer step.
        clip_grad_norm: Max total gradient norm, or None to not clip.
    """

    use_amp: bool = attrs.field(default=False, validator=is_bool)
    amp_dtype: AmpDtype = attrs.field(
        default=AmpDtype.BFLOAT16, converter=lambda v: to_enum(AmpDtype, v, "amp_dtype")
    )
    gradient_accumulation_steps: int = attrs.field(default=1, validator=int_at_least(1))
    clip_grad_norm: float | None = attrs.field(default=None, validator=positive_float_or_none)


@attrs.frozen(kw_only=True)
class CheckpointConfig:
    """Where and when checkpoints are written, how many are kept and which one is best.

    Attributes:
        root_dir: Folder holding the ``*.ckpt`` files, ``latest.ckpt``, ``best.ckpt``, ``best.json``.
        save_every_n_steps: Save every N optimizer steps, or None.
        save_every_n_epochs: Save at the end of every N epochs, or None.
        max_checkpoints: Keep the newest N files (the best one is kept besides), or None to keep all.
        monitor_metric: Metric name deciding the best checkpoint, or None to not track a best.
        monitor_mode: ``"min"`` or ``"max"``.
        save_best: Maintain ``best.ckpt`` when ``monitor_metric`` is set.
        use_symlinks: ``latest``/``best`` are symlinks; False (or a failing symlink) makes copies.
        filename_template: File name from ``epoch`` and ``global_step``.
        allow_overwrite: With auto-resume off, a fresh run refuses a folder that already holds
            checkpoints (another run's files would be overwritten and rotated away); True lets it
            write there anyway.
        file_mode: Permission bits of new checkpoint files, ``best.json`` and copies, e.g.
            ``0o600``; None (default) follows the umask like any new file: ``0o666 & ~umask``
            (``0o644`` under the usual umask 022).
        async_save: Write checkpoints in a background thread: a save blocks training only while
            the state is copied to host memory (pinned, asynchronously, for CUDA tensors), and
            the next save, a preemption and the end of ``fit()`` wait for the one in flight.
            Every guarantee holds (atomic, checksummed, ``latest`` only ever on a complete file;
            a kill during the write loses that save only). Costs one host copy of the model and
            optimizer state, kept between saves. Callbacks' ``on_checkpoint`` runs when the save
            is started; the file is complete after ``trainer.checkpoints.wait()``. An error of
            the write is raised by the next save or at the end of ``fit()``.
        defer_snapshot: With ``async_save``, the parameters and optimizer state (CPU tensors) are
            copied while the next forward and backward run, and the next optimizer step waits
            for that copy, instead of being copied inside the save (CheckFreq's idea: only the
            optimizer step changes them). A tensor changed in place before its copy (by a
            training step or callback; not seen through ``.data``) fails that save with
            ``SnapshotChangedError`` rather than writing a torn copy: set False for such code.

    The folder takes one writer at a time: saving holds an exclusive lock on ``root_dir/.lock``
    (see :meth:`trainer.checkpoints.manager.CheckpointManager.acquire`); ``fit()`` holds it throughout.
    """

    root_dir: Path = attrs.field(default=Path("checkpoints"), converter=to_path)
    save_every_n_steps: int | None = attrs.field(
        default=None, validator=int_at_least(1, optional=True)
    )
    save_every_n_epochs: int | None = attrs.field(
        default=1, validator=int_at_least(1, optional=True)
    )
    max_checkpoints: int | None = attrs.field(default=5, validator=int_at_least(1, optional=True))
    monitor_metric: str | None = attrs.field(
        default=None, validator=attrs.validators.optional(attrs.validators.instance_of(str))
    )
    monitor_mode: MonitorMode = attrs.field(
        default=MonitorMode.MIN, converter=lambda v: to_enum(MonitorMode, v, "monitor_mode")
    )
    save_best: bool = attrs.field(default=True, validator=is_bool)
    use_symlinks: bool = attrs.field(default=True, validator=is_bool)
    filename_template: str = attrs.field(
        default="epoch={epoch:04d}-step={global_step:06d}.ckpt", validator=check_template
    )
    allow_overwrite: bool = attrs.field(default=False, validator=is_bool)
    file_mode: int | None = attrs.field(default=None)
    async_save: bool = attrs.field(default=False, validator=is_bool)
    defer_snapshot: bool = attrs.field(default=True, validator=is_bool)

    @file_mode.validator
    def _check_file_mode(self, attribute: attrs.Attribute, value: Any) -> None:
        if value is not None and (type(value) is not int or not 0 <= value <= 0o777):
            raise ValueError(
                f"'{attribute.name}' must be None (follow the umask) or permission bits from 0 to "
                f"0o777 such as 0o600 or 0o640 (got {value!r})"
            )

    @property
    def tracks_best(self) -> bool:
        """Whether a best checkpoint is maintained (``save_best`` and a ``monitor_metric``)."""
        return self.save_best and self.monitor_metric is not None


@attrs.frozen(kw_only=True)
class ValidationConfig:
    """When validation runs and how its metrics are aggregated over loaders.

    Attributes:
        frequency: ``"per_epoch"`` or ``"every_n_steps"`` (then ``every_n_steps`` is required).
        every_n_steps: Optimizer steps between validations.
        aggregation: ``"micro"`` (mean over all batches) or ``"macro"`` (mean of per-loader means).
    """

    frequency: ValidationFrequency = attrs.field(
        default=ValidationFrequency.PER_EPOCH,
        converter=lambda v: to_enum(ValidationFrequency, v, "frequency"),
    )
    every_n_steps: int | None = attrs.field(default=None, validator=int_at_least(1, optional=True))
    aggregation: Aggregation = attrs.field(
        default=Aggregation.MICRO, converter=lambda v: to_enum(Aggregation, v, "aggregation")
    )

    def __attrs_post_init__(self) -> None:
        if self.frequency is ValidationFrequency.EVERY_N_STEPS and self.every_n_steps is None:
            raise ValueError(
                "'every_n_steps' must be set when frequency is 'every_n_steps' (got None); "
                "pass every_n_steps=N or frequency='per_epoch'"
            )


@attrs.frozen(kw_only=True)
class PreemptionConfig:
    """Preemption handling and automatic resume.

    Attributes:
        signals: Signal names that request a save-and-stop at the next optimizer step. Names not
            available on the platform are skipped by the handler.
        auto_resume: Resume from the checkpoint folder when it holds a checkpoint.
        resume_from_latest: Resume from the newest valid checkpoint (else only an explicit path).
        strict_resume: Refuse (``IncompatibleStateError``) to resume a checkpoint written under a
            trainer configuration that changes the result (accumulation steps, clipping,
            precision, loss weights, optimizer-to-loader mapping, optimizer or scheduler types).
            False resumes anyway, with a WARNING: the run is then no longer exact. A world-size
            change is not refused here: map-style loaders resume it exactly (elastic resume).
        restart_incompatible_sources: On a resume under another world size or ``num_workers``,
            restart the current pass of the loaders whose position is kept per rank or per worker
            (iterables, wrapped iterables, skip-based loaders), with a WARNING naming them. False
            (the default) refuses such a resume with ``IncompatibleStateError``.
        defer_keyboard_interrupt: While ``fit()`` runs in the main thread, the first Ctrl-C (or
            a notebook's stop button) stops at the next batch boundary, so that ``fit()`` again
            continues exactly; a second one stops at once (then ``fit()`` again goes back to the
            last checkpoint). False keeps Python's immediate KeyboardInterrupt.
    """

    signals: tuple[str, ...] = attrs.field(
        default=("SIGTERM", "SIGUSR1"), converter=signal_names, validator=check_signals
    )
    auto_resume: bool = attrs.field(default=True, validator=is_bool)
    resume_from_latest: bool = attrs.field(default=True, validator=is_bool)
    strict_resume: bool = attrs.field(default=True, validator=is_bool)
    restart_incompatible_sources: bool = attrs.field(default=False, validator=is_bool)
    defer_keyboard_interrupt: bool = attrs.field(default=True, validator=is_bool)


class SchedulerInterval(enum.Enum):
    """When schedulers step: after each optimizer step, or once per epoch."""

    STEP = "step"
    EPOCH = "epoch"


class LoggerName(str, enum.Enum):
    """The built-in loggers ``GenericTrainerConfig.loggers`` names (a str enum: ``"csv"`` compares
    equal to ``LoggerName.CSV``)."""

    CSV = "csv"
    TENSORBOARD = "tensorboard"


def _to_logger_names(value: str | Iterable[object]) -> tuple[object, ...]:
    """Names as :class:`LoggerName` members; unknown ones are kept for the validator to report."""
    names = (value,) if isinstance(value, str) else tuple(value)
    known = {m.value: m for m in LoggerName}
    return tuple(known.get(n.strip().lower(), n) if isinstance(n, str) else n for n in names)


class NonFiniteLoss(enum.Enum):
    """What a NaN or infinite loss does: raise ``FloatingPointError`` before the optimizer step, or
    skip that optimizer step (gradients dropped, counted in ``train/skipped_steps``)."""

    RAISE = "raise"
    SKIP = "skip"


@attrs.frozen(kw_only=True)
class GenericTrainerConfig:
    """Everything the trainer needs besides the model, optimizers and data.

    Attributes:
        seed: Seeds Python, numpy and torch at the start of a fresh run (a resume restores RNGs).
        train_loader_config: How train loaders are mixed (``statefuldata.MultiDataLoaderConfig``);
            None means SEQUENTIAL over one pass of each loader.
        val_loader_config: Same for validation loaders.
        checkpoint, performance, validation, preemption: Sub-configs.
        loss_weights_per_loader: Multiplies each train loader's loss before backward (0 ignores it).
        per_loader_optimizer_id: Optimizer index each train loader's loss belongs to; None means
            every optimizer steps at every accumulation boundary.
        scheduler_interval: ``"step"`` or ``"epoch"``; scheduler i belongs to optimizer i.
        nonfinite_loss: ``"raise"`` (default): a NaN or infinite loss raises
            ``FloatingPointError`` naming the step, epoch and loader, before the optimizer step;
            ``"skip"``: that optimizer step is skipped and counted (``train/skipped_steps``).
        log_every_n_steps: Optimizer steps between recorded training metrics (``train/<name>``
            for every scalar the training step returns, in ``metrics_history`` and the loggers).
        loggers: Built-in loggers (:mod:`trainer.loggers`): ``"csv"`` writes ``metrics.csv`` in
            ``root_dir``; ``"tensorboard"`` writes event files there when tensorboard is installed.
            Pass your own :class:`~trainer.loggers.Logger` in ``callbacks``.
        progress_bar: Show a tqdm bar (notebook-aware) on rank 0.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"`` or ``"auto"``.
        ddp_find_unused_parameters: Passed to the ``DistributedDataParallel`` wrapper the trainer
            builds under torch.distributed; True when a loader's loss uses only part of the model
            (e.g. with ``per_loader_optimizer_id``).
    """

    seed: int = attrs.field(default=0, validator=int_at_least(0))
    train_loader_config: Any = attrs.field(default=None, validator=loader_config_or_none)
    val_loader_config: Any = attrs.field(default=None, validator=loader_config_or_none)
    checkpoint: CheckpointConfig = attrs.field(factory=CheckpointConfig)
    performance: PerformanceConfig = attrs.field(factory=PerformanceConfig)
    validation: ValidationConfig = attrs.field(factory=ValidationConfig)
    preemption: PreemptionConfig = attrs.field(factory=PreemptionConfig)
    loss_weights_per_loader: tuple[float, ...] | None = attrs.field(
        default=None, converter=optional_tuple, validator=check_loss_weights
    )
    per_loader_optimizer_id: tuple[int, ...] | None = attrs.field(
        default=None, converter=optional_tuple, validator=check_optimizer_ids
    )
    scheduler_interval: SchedulerInterval = attrs.field(
        default=SchedulerInterval.STEP,
        converter=lambda v: to_enum(SchedulerInterval, v, "scheduler_interval"),
    )
    nonfinite_loss: NonFiniteLoss = attrs.field(
        default=NonFiniteLoss.RAISE, converter=lambda v: to_enum(NonFiniteLoss, v, "nonfinite_loss")
    )
    log_every_n_steps: int = attrs.field(default=50, validator=int_at_least(1))
    loggers: tuple[LoggerName, ...] = attrs.field(
        default=(LoggerName.CSV, LoggerName.TENSORBOARD),
        converter=_to_logger_names,
        validator=check_logger_names,
    )
    progress_bar: bool = attrs.field(default=True, validator=is_bool)
    device: str = attrs.field(default="auto", validator=attrs.validators.instance_of(str))
    ddp_find_unused_parameters: bool = attrs.field(default=False, validator=is_bool)

    def to_dict(self) -> dict[str, Any]:
        """Plain-typed snapshot (stored in the checkpoint's ``config_snapshot``)."""
        return {f.name: to_plain(getattr(self, f.name)) for f in attrs.fields(type(self))}
