"""Why a resumed run differs: other samples (ids) or the same samples with other values, and the fix.

:func:`statefuldata.verify_resume` calls :func:`diagnose` on the first pair of batches that differ.
Leaves of a batch are *id-like* when they name a sample: under a key such as ``"id"`` or
``"index"``, or integers with at most one value per sample (an int tensor of shape ``(batch,)``,
ints, strings). Everything else (float tensors, integer images) is a *value*.

* ids differ: the resumed run read other samples, or the same ones in another order. The usual
  cause is a stream that shuffles itself with a buffer that does not resume; the fix is
  :class:`statefuldata.ShuffleBuffer` (``make_loader(stream, shuffle=True, shuffle_buffer_size=N)``).
* only values differ: the same samples came out with other random values, i.e. augmentations drawn
  from the global RNGs. The fix is ``make_loader(..., per_sample_seed=True)``.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator
from typing import Any, TypeVar

import attrs
import numpy as np
import torch

__all__ = ["Difference"]

ID_KEYS = frozenset(
    {"id", "ids", "idx", "index", "indices", "key", "__key__", "sample_id", "uid", "name"}
)

SUGGEST_SHUFFLE = (
    "the resumed run read other samples or another order, so the position or the order was not "
    "restored: shuffle streams with make_loader(stream, shuffle=True, shuffle_buffer_size=N) "
    "(statefuldata.ShuffleBuffer) rather than the stream's own shuffle buffer (Hugging Face "
    ".shuffle(buffer_size=...), webdataset .shuffle(n)), give the stream state_dict/"
    "load_state_dict, or make it yield the same items in the same order each time it is opened"
)
SUGGEST_SEED = (
    "the same samples came out with other values: randomness drawn inside the dataset from the "
    "global random, numpy.random or torch RNGs (augmentations) is not restored; pass "
    "per_sample_seed=True to make_loader (LoaderSpec(per_sample_seed=True)), or draw from "
    "sample_rng(seed, current_epoch(), index)"
)
SUGGEST_NO_IDS = (
    "; the batch has no id-like field (such as 'id' or an int tensor of one value per sample), so "
    "other samples or another order cannot be ruled out: " + SUGGEST_SHUFFLE
)
SUGGEST_STRUCTURE = (
    "the batches differ in structure (keys, lengths, shapes or dtypes): the resumed pipeline is "
    "configured differently, or the samples differ; build it the way the reference was built"
)


class Difference(enum.Enum):
    """Which part of a batch differs in :class:`statefuldata.Mismatch`."""

    IDS = "ids"
    VALUES = "values"
    STRUCTURE = "structure"
    BATCH_COUNT = "batch count"
    ERROR = "error"


class _Shape(Exception):
    """The two batches do not have the same structure."""


def _is_id(key: str | None, leaf: Any) -> bool:
    if key is not None and key.lower() in ID_KEYS:
        return True
    if isinstance(leaf, (str, bytes)) or (isinstance(leaf, int) and not isinstance(leaf, bool)):
        return True
    if isinstance(leaf, torch.Tensor):
        dtype = leaf.dtype
        integer = not (dtype.is_floating_point or dtype.is_complex or dtype == torch.bool)
        return integer and leaf.ndim <= 1
    if isinstance(leaf, np.ndarray):
        return bool(np.issubdtype(leaf.dtype, np.integer)) and leaf.ndim <= 1
    return False


def _scalar(x: Any) -> bool:
    return not isinstance(x, (dict, list, tuple, torch.Tensor, np.ndarray))


def _leaves(a: Any, b: Any, key: str | None = None) -> Iterator[tuple[bool, bool]]:
    """``(id_like, differs)`` for each pair of leaves; raises :class:`_Shape` on another structure.

    A different number of samples (lists of scalars of other lengths, tensors differing in their
    first dimension only) counts as other samples: an id-like difference.
    """
    if isinstance(a, dict) or isinstance(b, dict):
        if not (isinstance(a, dict) and isinstance(b, dict)) or a.keys() != b.keys():
            raise _Shape
        for k in a:
            yield from _leaves(a[k], b[k], str(k))
    elif isinstance(a, (list, tuple)) or isinstance(b, (list, tuple)):
        if type(a) is not type(b):
            raise _Shape
        if all(map(_scalar, a)) and all(map(_scalar, b)):  # a list of scalars is one leaf
            yield len(a) != len(b) or _is_id(key, a[0] if a else None), a != b
        elif len(a) != len(b):
            raise _Shape
        else:
            for x, y in zip(a, b):
                yield from _leaves(x, y, key)
    elif isinstance(a, (torch.Tensor, np.ndarray)) or isinstance(b, (torch.Tensor, np.ndarray)):
        if type(a) is not type(b) or a.dtype != b.dtype or a.ndim != b.ndim:
            raise _Shape
        if a.shape != b.shape:
            if a.ndim == 0 or a.shape[1:] != b.shape[1:]:
                raise _Shape
            yield True, True
            return
        same = bool(torch.equal(a, b)) if isinstance(a, torch.Tensor) else np.array_equal(a, b)
        yield _is_id(key, a), not same
    else:
        yield _is_id(key, a), bool(a != b)


def diagnose(expected: Any, got: Any) -> tuple[Difference, str]:
    """Which part of two differing batches differs, and what to do about it.

    Example:
        >>> ids = torch.tensor([0, 1])
        >>> diagnose((ids, torch.zeros(2)), (ids, torch.ones(2)))[0]
        <Difference.VALUES: 'values'>
    """
    try:
        leaves = list(_leaves(expected, got))
    except _Shape:
        return Difference.STRUCTURE, SUGGEST_STRUCTURE
    if any(id_like and differs for id_like, differs in leaves):
        return Difference.IDS, SUGGEST_SHUFFLE
    if any(id_like for id_like, _ in leaves):
        return Difference.VALUES, SUGGEST_SEED
    return Difference.VALUES, SUGGEST_SEED + SUGGEST_NO_IDS


SUGGEST_COUNT = (
    "the resumed run ended at another batch: the stream's restore lands on another position "
    "(check its state_dict/load_state_dict), or the data changed since the state was taken"
)
SUGGEST_ERROR = "the resumed run raised; the reason names the error"

_M = TypeVar("_M")


def explain(mismatch: _M) -> _M:
    """``mismatch`` (a :class:`statefuldata.Mismatch`) with its ``difference`` and ``suggestion``."""
    reason: str = mismatch.reason  # type: ignore[attr-defined]
    if reason.startswith("resumed run raised"):
        difference, suggestion = Difference.ERROR, SUGGEST_ERROR
    elif reason.startswith("resumed run yielded"):
        difference, suggestion = Difference.BATCH_COUNT, SUGGEST_COUNT
    else:
        difference, suggestion = diagnose(mismatch.expected, mismatch.got)  # type: ignore[attr-defined]
    return attrs.evolve(mismatch, difference=difference, suggestion=suggestion)  # type: ignore[misc]
