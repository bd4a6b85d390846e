"""Deterministic seeds: split, never added.

``derive_seed(seed, *path)`` gives an independent child seed for any path of non-negative integers
(epoch, rank, worker id, sample index, ...). It uses :class:`numpy.random.SeedSequence` spawn keys,
so ``derive_seed(s, 1, 0)`` and ``derive_seed(s, 0, 1)`` are unrelated, unlike ``s + 1``.

numpy's MT19937 state (a ``RandomState``'s or the global ``np.random`` one) is saved as plain types
by :func:`mt19937_to_plain` and read back by :func:`mt19937_from_plain`; the scheduler's choice RNG
and the trainer's ``rng_states["numpy_random"]`` both use them.
"""

from __future__ import annotations

import enum
import random
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import torch

from statefuldata.validators import check_int, to_enum

__all__ = ["RngBackend", "derive_seed", "sample_rng", "seed_everything", "seed_worker"]

_MAX_SEED = 2**63 - 1


def _check_non_negative_int(name: str, value: object) -> int:
    check_int(
        name,
        value,
        minimum=0,
        hint="seeds and seed paths are non-negative integers, pass e.g. abs(seed) or a fixed "
        "value like 0",
    )
    return int(value)  # type: ignore[call-overload,no-any-return]


def derive_seed(seed: int, *path: int) -> int:
    """Derive an independent, non-negative 63-bit seed from ``seed`` and a path of integers.

    Example:
        >>> derive_seed(0, 1) != derive_seed(1, 0)
        True
    """
    root = _check_non_negative_int("seed", seed)
    key = tuple(_check_non_negative_int(f"path[{i}]", p) for i, p in enumerate(path))
    state = np.random.SeedSequence(root, spawn_key=key).generate_state(1, dtype=np.uint64)
    return int(state[0]) & _MAX_SEED


def seed_everything(seed: int) -> None:
    """Seed Python's ``random``, numpy's global RNG and torch (CPU and CUDA) from one seed."""
    seed = _check_non_negative_int("seed", seed)
    random.seed(seed)
    np.random.seed(derive_seed(seed, 0) % 2**32)
    torch.manual_seed(seed)


def seed_worker(worker_id: int, *, seed: int | None = None, epoch: int = 0, rank: int = 0) -> None:
    """Seed a DataLoader worker's Python, numpy and torch RNGs from ``(seed, epoch, rank, worker_id)``.

    Usable directly as ``worker_init_fn``: without ``seed`` it reads the per-worker seed that the
    DataLoader drew from its generator (``torch.utils.data.get_worker_info().seed``), so a loader with a
    seeded ``generator`` is reproducible. :func:`statefuldata.make_loader` installs it with the
    loader's seed, rank and pass index (epoch) filled in.

    Global RNGs inside workers are reproducible from the start of a pass, not across a mid-pass
    resume (a resumed worker has drawn fewer numbers). Draw per-sample randomness from
    :func:`sample_rng` when augmentations must survive resumes.
    """
    if seed is None:
        info = torch.utils.data.get_worker_info()
        if info is None:
            raise RuntimeError(
                "seed_worker(worker_id) without 'seed' must run inside a DataLoader worker "
                "(got no worker info); pass seed=... to call it elsewhere"
            )
        seed = int(info.seed) & _MAX_SEED
    child = derive_seed(seed, epoch, rank, worker_id)
    random.seed(child)
    np.random.seed(child % 2**32)
    torch.manual_seed(child)


class RngBackend(str, enum.Enum):
    """Which generator :func:`sample_rng` returns (a str enum: ``"numpy"`` works too)."""

    TORCH = "torch"
    NUMPY = "numpy"


def sample_rng(
    seed: int,
    epoch: int,
    index: int,
    *,
    backend: RngBackend | Literal["torch", "numpy"] = RngBackend.TORCH,
) -> torch.Generator | np.random.Generator:
    """A generator that depends only on ``(seed, epoch, index)`` of one sample.

    Augmentations drawn from it are identical whatever the worker count and after any resume.
    Inside a dataset read by a :func:`statefuldata.make_loader` loader, the epoch of the pass being
    produced is :func:`statefuldata.current_epoch` (in every worker, persistent ones included, and
    after a resume), so ``sample_rng(seed, current_epoch(), index)`` gives each epoch its own
    augmentation; a hard-coded ``epoch=0`` repeats the same one every epoch. To keep transforms
    that draw from the global RNGs instead, use ``make_loader(..., per_sample_seed=True)``.

    Example:
        >>> g = sample_rng(0, epoch=0, index=7)
        >>> bool(torch.equal(torch.rand(2, generator=g), torch.rand(2, generator=sample_rng(0, 0, 7))))
        True
    """
    try:
        kind = to_enum(RngBackend, backend, "backend")
    except ValueError:
        raise ValueError(f"'backend' must be 'torch' or 'numpy' (got {backend!r})") from None
    child = derive_seed(seed, epoch, index)
    if kind is RngBackend.TORCH:
        return torch.Generator().manual_seed(child)
    return np.random.default_rng(child)


_MT_KEY_WORDS = 624
PlainMT19937 = tuple[str, torch.Tensor, int, int, float]


def mt19937_to_plain(state: Any) -> PlainMT19937:
    """numpy's legacy MT19937 state as ``("MT19937", int64 tensor of 624 key words, pos, has_gauss,
    cached_gaussian)``: plain types that load with ``torch.load(weights_only=True)``.

    Args:
        state: ``RandomState.get_state(legacy=True)`` or ``np.random.get_state(legacy=True)``.

    Example:
        >>> plain = mt19937_to_plain(np.random.RandomState(0).get_state(legacy=True))
        >>> plain[0], plain[1].dtype, plain[1].shape
        ('MT19937', torch.int64, torch.Size([624]))
    """
    name, keys, pos, has_gauss, cached = state
    words = torch.from_numpy(np.asarray(keys, dtype=np.int64).copy())
    return (str(name), words, int(pos), int(has_gauss), float(cached))


def mt19937_from_plain(state: Sequence[Any]) -> tuple[str, np.ndarray, int, int, float]:
    """The legacy state tuple, for ``RandomState.set_state``, of a :func:`mt19937_to_plain` record.

    Raises:
        ValueError: ``state`` is not a 5-entry ``("MT19937", keys, pos, has_gauss, cached)``
            record, or its keys are not 624 words in ``0..2**32-1``.
    """
    if not isinstance(state, (tuple, list)) or len(state) != 5 or state[0] != "MT19937":
        raise ValueError(
            "an MT19937 state must be ('MT19937', keys, pos, has_gauss, cached_gaussian) "
            f"(got {type(state).__name__} {str(state)[:80]}); pass mt19937_to_plain(...) output"
        )
    _, keys, pos, has_gauss, cached = state
    raw = keys.detach().cpu().numpy() if isinstance(keys, torch.Tensor) else np.asarray(keys)
    words = raw.astype(np.int64).reshape(-1)
    if words.size != _MT_KEY_WORDS or words.min() < 0 or words.max() >= 2**32:
        raise ValueError(
            f"MT19937 keys must be {_MT_KEY_WORDS} words in 0..2**32-1 (got {words.size} words); "
            "pass mt19937_to_plain(...) output"
        )
    return ("MT19937", words.astype(np.uint32), int(pos), int(has_gauss), float(cached))
