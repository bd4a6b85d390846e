"""Capture and restore the global RNGs of Python, numpy and torch as plain, safely loadable types.

The captured dict is the checkpoint's ``rng_states`` field (format v1)::

    {
        "python_random": tuple,        # random.getstate()
        "numpy_random": tuple,         # np.random.get_state(), key array as an int64 tensor
                                       # (statefuldata.seeding.mt19937_to_plain)
        "torch_cpu": ByteTensor,       # torch.get_rng_state()
        "torch_cuda": list[ByteTensor] | None,  # None only when CUDA is unavailable
    }

It holds only tuples, ints, floats, strings and tensors, so it survives
``torch.save`` / ``torch.load(weights_only=True)``. Resume guarantee: after
``restore_rng_states(capture_rng_states())`` every later draw equals the draw that would have
followed the capture.

Example:
    >>> states = capture_rng_states()
    >>> a = random.random()
    >>> restore_rng_states(states)
    >>> random.random() == a
    True
"""

from __future__ import annotations

import logging
import random
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from statefuldata.seeding import mt19937_from_plain, mt19937_to_plain

__all__ = [
    "KEY_NUMPY",
    "KEY_PYTHON",
    "KEY_TORCH_CPU",
    "KEY_TORCH_CUDA",
    "RNG_KEYS",
    "capture_rng_states",
    "restore_rng_states",
]

logger = logging.getLogger(__name__)

KEY_PYTHON = "python_random"
KEY_NUMPY = "numpy_random"
KEY_TORCH_CPU = "torch_cpu"
KEY_TORCH_CUDA = "torch_cuda"
RNG_KEYS = (KEY_PYTHON, KEY_NUMPY, KEY_TORCH_CPU, KEY_TORCH_CUDA)


def capture_rng_states() -> dict[str, Any]:
    """Return the current global RNG states of Python, numpy, torch CPU and torch CUDA.

    Returns:
        The ``rng_states`` dict described in the module docstring (copies; later draws do not
        change it).
    """
    numpy_state = mt19937_to_plain(np.random.get_state(legacy=True))
    cuda = (
        [s.clone() for s in torch.cuda.get_rng_state_all()] if torch.cuda.is_available() else None
    )
    return {
        KEY_PYTHON: random.getstate(),
        KEY_NUMPY: numpy_state,
        KEY_TORCH_CPU: torch.get_rng_state().clone(),
        KEY_TORCH_CUDA: cuda,
    }


def _python_state(state: Any) -> tuple[Any, ...]:
    version, internal, gauss_next = state
    return (int(version), tuple(int(v) for v in internal), gauss_next)


def restore_rng_states(states: Mapping[str, Any]) -> None:
    """Restore the global RNGs from a dict made by :func:`capture_rng_states`.

    Args:
        states: The ``rng_states`` dict, possibly after a ``torch.save``/``torch.load`` round trip.

    Raises:
        ValueError: A key is missing or unknown, or a state has the wrong shape.
    """
    missing = [k for k in RNG_KEYS if k not in states]
    unknown = sorted(set(states) - set(RNG_KEYS))
    if missing or unknown:
        raise ValueError(
            f"rng_states must have exactly the keys {list(RNG_KEYS)} (missing {missing}, "
            f"unknown {unknown}); pass the dict made by trainer.rng.capture_rng_states()"
        )
    try:
        python_state = _python_state(states[KEY_PYTHON])
        numpy_state = mt19937_from_plain(states[KEY_NUMPY])
    except (TypeError, ValueError) as exc:
        raise ValueError(
            f"rng_states holds a malformed Python or numpy state ({exc}); "
            "pass the dict made by trainer.rng.capture_rng_states()"
        ) from exc
    cpu = states[KEY_TORCH_CPU]
    if not isinstance(cpu, torch.Tensor) or cpu.dtype != torch.uint8:
        raise ValueError(
            f"rng_states['{KEY_TORCH_CPU}'] must be a uint8 tensor (got {type(cpu).__name__}); "
            "pass the dict made by trainer.rng.capture_rng_states()"
        )
    random.setstate(python_state)
    np.random.set_state(numpy_state)
    torch.set_rng_state(cpu.cpu())
    _restore_cuda(states[KEY_TORCH_CUDA])


def _restore_cuda(cuda: list[torch.Tensor] | None) -> None:
    available = torch.cuda.is_available()
    if cuda is None:
        if available:
            logger.warning(
                "The checkpoint holds no CUDA RNG state (it was saved without CUDA); "
                "CUDA RNGs keep their current state, so CUDA random draws differ from that run"
            )
        return
    if not available:
        logger.warning(
            "The checkpoint holds %d CUDA RNG state(s) but CUDA is unavailable; they are not "
            "restored, so random draws that ran on CUDA in that run now differ",
            len(cuda),
        )
        return
    count = torch.cuda.device_count()
    if len(cuda) != count:
        logger.warning(
            "The checkpoint holds %d CUDA RNG state(s) but %d CUDA device(s) are visible; "
            "restoring the first %d",
            len(cuda),
            count,
            min(len(cuda), count),
        )
    for index, state in enumerate(cuda[:count]):
        torch.cuda.set_rng_state(state.cpu(), device=index)
