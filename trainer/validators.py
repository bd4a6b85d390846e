"""Validators and converters of the trainer's configs and state records (attrs field hooks).

Each follows attrs' ``(instance, attribute, value)`` validator signature or is a one-argument
converter; messages read ``'field' must be ... (got value); what to do``.
"""

from __future__ import annotations

import enum
import math
import os
import signal
import string
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import attrs

# One enum conversion and one int check for both packages (trainer may import statefuldata, never
# the reverse).
from statefuldata.validators import int_at_least as _int_at_least
from statefuldata.validators import to_enum

__all__ = [
    "as_list",
    "check_logger_names",
    "check_loss_weights",
    "check_optimizer_ids",
    "check_signals",
    "check_template",
    "int_at_least",
    "is_bool",
    "loader_config_or_none",
    "optional_tuple",
    "positive_float_or_none",
    "signal_names",
    "to_enum",
    "to_path",
    "to_plain",
]

is_bool = attrs.validators.instance_of(bool)


def int_at_least(minimum: int, *, optional: bool = False) -> Callable[[Any, Any, Any], None]:
    """Validator: an int (not a bool, not a numpy integer: configs are saved as they are) >=
    ``minimum``; None also allowed when ``optional``. :func:`statefuldata.validators.int_at_least`
    with the trainer's wording."""
    return _int_at_least(
        minimum,
        optional=optional,
        hint="pass None to disable it" if optional else "",
        allow_numpy=False,
    )


def positive_float_or_none(_instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"'{attribute.name}' must be a float or None (got {value!r})")
    if not value > 0:
        raise ValueError(f"'{attribute.name}' must be > 0 or None to disable it (got {value})")


def to_path(value: Any) -> Path:
    if not isinstance(value, (str, os.PathLike)):
        raise TypeError(
            f"'root_dir' must be a folder path, str or os.PathLike (got {value!r}); pass e.g. "
            "root_dir='runs/exp1' (every run needs a folder for its checkpoints and its lock)"
        )
    return Path(value)


_TEMPLATE_FIELDS = frozenset({"epoch", "global_step"})


_RESERVED_NAMES = frozenset({"latest.ckpt", "best.ckpt"})


def check_template(_instance: Any, attribute: attrs.Attribute, value: Any) -> None:
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


def signal_names(value: Iterable[Any]) -> tuple[str, ...]:
    if isinstance(value, str):
        value = (value,)
    return tuple(getattr(v, "name", v) for v in value)


# POSIX signals a handler can catch; names outside this set that the platform lacks are typos.


_CATCHABLE_SIGNALS = frozenset(
    {
        "SIGTERM",
        "SIGUSR1",
        "SIGUSR2",
        "SIGINT",
        "SIGHUP",
        "SIGQUIT",
        "SIGCONT",
        "SIGXCPU",
        "SIGALRM",
        "SIGPWR",
        "SIGBREAK",
        "SIGWINCH",
    }
)


_UNCATCHABLE_SIGNALS = frozenset({"SIGKILL", "SIGSTOP"})


def check_signals(_instance: Any, attribute: attrs.Attribute, value: tuple[Any, ...]) -> None:
    for name in value:
        if not isinstance(name, str) or not name.startswith("SIG") or name.startswith("SIG_"):
            raise ValueError(
                f"'{attribute.name}' must hold signal names like 'SIGTERM' or 'SIGUSR1' "
                f"(got {name!r} in {value!r})"
            )
        if name in _UNCATCHABLE_SIGNALS:
            raise ValueError(
                f"'{attribute.name}' holds {name}, which no process can catch, so it can never "
                f"trigger a save (got {value!r}); schedulers send SIGTERM (or SIGUSR1 with Slurm's "
                "--signal) before SIGKILL: list those instead"
            )
        if name not in _CATCHABLE_SIGNALS and not hasattr(signal, name):
            raise ValueError(
                f"'{attribute.name}' holds {name!r}, which is not a signal name (got {value!r}); "
                f"use names such as {sorted(_CATCHABLE_SIGNALS - {'SIGBREAK', 'SIGPWR'})}"
            )


def as_list(value: Any) -> list[Any]:
    """``None`` -> ``[]``, a list or tuple -> a list, anything else -> a one-element list.

    The one normaliser of "one or several" arguments (optimizers, schedulers, loaders).
    """
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


def optional_tuple(value: Any) -> tuple[Any, ...] | None:
    return None if value is None else tuple(value)


def check_loss_weights(_instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    if value is None:
        return
    for w in value:
        if (
            isinstance(w, bool)
            or not isinstance(w, (int, float))
            or not math.isfinite(w)
            or not w >= 0
        ):
            raise ValueError(
                f"'{attribute.name}' must hold finite numbers >= 0, one per train loader "
                f"(got {value!r}); use 0 to ignore a loader's loss"
            )


def check_optimizer_ids(_instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    if value is None:
        return
    if any(isinstance(i, bool) or not isinstance(i, int) or i < 0 for i in value):
        raise ValueError(
            f"'{attribute.name}' must hold optimizer indices >= 0, one per train loader (got {value!r})"
        )


def to_plain(value: Any) -> Any:
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (list, tuple)):
        return [to_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: to_plain(v) for k, v in value.items()}
    if attrs.has(type(value)):
        return (
            value.to_dict()
            if hasattr(value, "to_dict")
            else to_plain(attrs.asdict(value, recurse=False))
        )
    return value


def loader_config_or_none(_instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    from statefuldata import MultiDataLoaderConfig

    if value is None or isinstance(value, MultiDataLoaderConfig):
        return
    raise TypeError(
        f"'{attribute.name}' must be a statefuldata.MultiDataLoaderConfig or None "
        f"(got {type(value).__name__})"
    )


LOGGER_NAMES = ("csv", "tensorboard")  # the values of trainer.config.LoggerName


def check_logger_names(_instance: Any, attribute: attrs.Attribute, value: tuple[Any, ...]) -> None:
    unknown = [name for name in value if name not in LOGGER_NAMES]
    if unknown:
        raise ValueError(
            f"'{attribute.name}' holds unknown logger names {unknown} (got {value!r}); the built-in "
            f"ones are {list(LOGGER_NAMES)}: pass your own trainer.loggers.Logger in callbacks"
        )
