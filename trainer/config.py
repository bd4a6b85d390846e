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
import string
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

import attrs

__all__ = [
    "Aggregation",
    "AmpDtype",
    "CheckpointConfig",
    "MonitorMode",
    "PerformanceConfig",
    "PreemptionConfig",
    "ValidationConfig",
    "ValidationFrequency",
]

_E = TypeVar("_E", bound=enum.Enum)


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


def _enum_converter(enum_cls: type[_E], name: str) -> Callable[[Any], _E]:
    """Return a converter accepting a member of ``enum_cls`` or one of its string values."""

    def convert(value: Any) -> _E:
        if isinstance(value, enum_cls):
            return value
        for member in enum_cls:
            if value == member.value:
                return member
        valid = ", ".join(repr(m.value) for m in enum_cls)
        raise ValueError(f"'{name}' must be one of {valid} (got {value!r})")

    return convert


def _int_at_least(minimum: int, *, optional: bool = False) -> Callable[[Any, Any, Any], None]:
    """Validator: an int (not a bool) >= ``minimum``; None also allowed when ``optional``."""

    def check(_instance: Any, attribute: attrs.Attribute, value: Any) -> None:
        if value is None and optional:
            return
        if isinstance(value, bool) or not isinstance(value, int):
            allowed = "an int or None" if optional else "an int"
            raise TypeError(f"'{attribute.name}' must be {allowed} (got {value!r})")
        if value < minimum:
            hint = "; pass None to disable it" if optional else ""
            raise ValueError(f"'{attribute.name}' must be >= {minimum} (got {value}){hint}")

    return check


def _positive_float_or_none(_instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"'{attribute.name}' must be a float or None (got {value!r})")
    if not value > 0:
        raise ValueError(f"'{attribute.name}' must be > 0 or None to disable it (got {value})")


_bool = attrs.validators.instance_of(bool)


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

    use_amp: bool = attrs.field(default=False, validator=_bool)
    amp_dtype: AmpDtype = attrs.field(
        default=AmpDtype.BFLOAT16, converter=_enum_converter(AmpDtype, "amp_dtype")
    )
    gradient_accumulation_steps: int = attrs.field(default=1, validator=_int_at_least(1))
    clip_grad_norm: float | None = attrs.field(default=None, validator=_positive_float_or_none)


_TEMPLATE_FIELDS = frozenset({"epoch", "global_step"})
_RESERVED_NAMES = frozenset({"latest.ckpt", "best.ckpt"})


def _check_template(_instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    if not isinstance(value, str):
        raise TypeError(f"'{attribute.name}' must be a str (got {value!r})")
    try:
        fields = {f for _, f, _, _ in string.Formatter().parse(value) if f is not None}
        example = value.format(epoch=0, global_step=0) if fields <= _TEMPLATE_FIELDS else ""
    except (ValueError, KeyError, IndexError) as exc:
        raise ValueError(
            f"'{attribute.name}' must be a format string using only {{epoch}} and {{global_step}} "
            f"(got {value!r}: {exc}); e.g. 'epoch={{epoch:04d}}-step={{global_step:06d}}.ckpt'"
        ) from exc
    if not fields <= _TEMPLATE_FIELDS or "global_step" not in fields:
        raise ValueError(
            f"'{attribute.name}' must use {{global_step}} and may use {{epoch}}, nothing else "
            f"(got {value!r} with fields {sorted(fields)})"
        )
    if not example.endswith(".ckpt") or "/" in example or example in _RESERVED_NAMES:
        raise ValueError(
            f"'{attribute.name}' must give a plain file name ending in '.ckpt' other than "
            f"{sorted(_RESERVED_NAMES)} (got {value!r}, which gives {example!r})"
        )


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
        file_mode: Permission bits of new checkpoint files, ``best.json`` and copies, e.g.
            ``0o600``; None (default) follows the umask like any new file: ``0o666 & ~umask``
            (``0o644`` under the usual umask 022).

    The folder takes one writer at a time: saving holds an exclusive lock on ``root_dir/.lock``
    (see :meth:`trainer.manager.CheckpointManager.acquire`).
    """

    root_dir: Path = attrs.field(default=Path("checkpoints"), converter=Path)
    save_every_n_steps: int | None = attrs.field(
        default=None, validator=_int_at_least(1, optional=True)
    )
    save_every_n_epochs: int | None = attrs.field(
        default=1, validator=_int_at_least(1, optional=True)
    )
    max_checkpoints: int | None = attrs.field(default=5, validator=_int_at_least(1, optional=True))
    monitor_metric: str | None = attrs.field(
        default=None, validator=attrs.validators.optional(attrs.validators.instance_of(str))
    )
    monitor_mode: MonitorMode = attrs.field(
        default=MonitorMode.MIN, converter=_enum_converter(MonitorMode, "monitor_mode")
    )
    save_best: bool = attrs.field(default=True, validator=_bool)
    use_symlinks: bool = attrs.field(default=True, validator=_bool)
    filename_template: str = attrs.field(
        default="epoch={epoch:04d}-step={global_step:06d}.ckpt", validator=_check_template
    )
    file_mode: int | None = attrs.field(default=None)

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
        converter=_enum_converter(ValidationFrequency, "frequency"),
    )
    every_n_steps: int | None = attrs.field(default=None, validator=_int_at_least(1, optional=True))
    aggregation: Aggregation = attrs.field(
        default=Aggregation.MICRO, converter=_enum_converter(Aggregation, "aggregation")
    )

    def __attrs_post_init__(self) -> None:
        if self.frequency is ValidationFrequency.EVERY_N_STEPS and self.every_n_steps is None:
            raise ValueError(
                "'every_n_steps' must be set when frequency is 'every_n_steps' (got None); "
                "pass every_n_steps=N or frequency='per_epoch'"
            )


def _signal_names(value: Iterable[Any]) -> tuple[str, ...]:
    if isinstance(value, str):
        value = (value,)
    return tuple(getattr(v, "name", v) for v in value)


def _check_signals(_instance: Any, attribute: attrs.Attribute, value: tuple[Any, ...]) -> None:
    for name in value:
        if not isinstance(name, str) or not name.startswith("SIG") or name.startswith("SIG_"):
            raise ValueError(
                f"'{attribute.name}' must hold signal names like 'SIGTERM' or 'SIGUSR1' "
                f"(got {name!r} in {value!r})"
            )


@attrs.frozen(kw_only=True)
class PreemptionConfig:
    """Preemption handling and automatic resume.

    Attributes:
        signals: Signal names that request a save-and-stop at the next optimizer step. Names not
            available on the platform are skipped by the handler.
        auto_resume: Resume from the checkpoint folder when it holds a checkpoint.
        resume_from_latest: Resume from the newest valid checkpoint (else only an explicit path).
    """

    signals: tuple[str, ...] = attrs.field(
        default=("SIGTERM", "SIGUSR1"), converter=_signal_names, validator=_check_signals
    )
    auto_resume: bool = attrs.field(default=True, validator=_bool)
    resume_from_latest: bool = attrs.field(default=True, validator=_bool)


class SchedulerInterval(enum.Enum):
    """When schedulers step: after each optimizer step, or once per epoch."""

    STEP = "step"
    EPOCH = "epoch"


def _optional_tuple(value: Any) -> tuple[Any, ...] | None:
    return None if value is None else tuple(value)


def _check_loss_weights(_instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    if value is None:
        return
    for w in value:
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not w >= 0:
            raise ValueError(
                f"'{attribute.name}' must hold finite numbers >= 0, one per train loader "
                f"(got {value!r}); use 0 to ignore a loader's loss"
            )


def _check_optimizer_ids(_instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    if value is None:
        return
    if any(isinstance(i, bool) or not isinstance(i, int) or i < 0 for i in value):
        raise ValueError(
            f"'{attribute.name}' must hold optimizer indices >= 0, one per train loader (got {value!r})"
        )


def _plain(value: Any) -> Any:
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if attrs.has(type(value)):
        return (
            value.to_dict()
            if hasattr(value, "to_dict")
            else _plain(attrs.asdict(value, recurse=False))
        )
    return value


def _loader_config(_instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    from statefuldata import MultiDataLoaderConfig

    if value is None or isinstance(value, MultiDataLoaderConfig):
        return
    raise TypeError(
        f"'{attribute.name}' must be a statefuldata.MultiDataLoaderConfig or None "
        f"(got {type(value).__name__})"
    )


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
        log_every_n_steps: Optimizer steps between train-loss log lines and history points.
        progress_bar: Show a tqdm bar (notebook-aware) on rank 0.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"`` or ``"auto"``.
    """

    seed: int = attrs.field(default=0, validator=_int_at_least(0))
    train_loader_config: Any = attrs.field(default=None, validator=_loader_config)
    val_loader_config: Any = attrs.field(default=None, validator=_loader_config)
    checkpoint: CheckpointConfig = attrs.field(factory=CheckpointConfig)
    performance: PerformanceConfig = attrs.field(factory=PerformanceConfig)
    validation: ValidationConfig = attrs.field(factory=ValidationConfig)
    preemption: PreemptionConfig = attrs.field(factory=PreemptionConfig)
    loss_weights_per_loader: tuple[float, ...] | None = attrs.field(
        default=None, converter=_optional_tuple, validator=_check_loss_weights
    )
    per_loader_optimizer_id: tuple[int, ...] | None = attrs.field(
        default=None, converter=_optional_tuple, validator=_check_optimizer_ids
    )
    scheduler_interval: SchedulerInterval = attrs.field(
        default=SchedulerInterval.STEP,
        converter=_enum_converter(SchedulerInterval, "scheduler_interval"),
    )
    log_every_n_steps: int = attrs.field(default=50, validator=_int_at_least(1))
    progress_bar: bool = attrs.field(default=True, validator=_bool)
    device: str = attrs.field(default="cpu", validator=attrs.validators.instance_of(str))

    def to_dict(self) -> dict[str, Any]:
        """Plain-typed snapshot (stored in the checkpoint's ``config_snapshot``)."""
        return {f.name: _plain(getattr(self, f.name)) for f in attrs.fields(type(self))}
