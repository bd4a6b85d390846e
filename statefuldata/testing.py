"""``verify_resume``: prove that a pipeline resumes exactly, on your own data.

The checker runs the reference epochs once, then for each interruption point ``k`` builds a fresh
loader, consumes ``k`` batches, takes ``state_dict()`` (round-tripped through ``torch.save`` and
``torch.load(weights_only=True)``, as a checkpoint would), loads it into another fresh loader, and
compares every remaining batch with the reference, tensor-exactly. Each point also resumes the resumed
loader once more, halfway through what remains.

Which points: ``points="all"`` checks every ``k`` from 0 to the total number of batches. The default
checks every point too when there are at most 47 batches; beyond that it checks 48 points: the first
``prefetch_factor * num_workers + 2`` (mid-prefetch), the batch before, at and after every epoch
boundary, and an even spread over the rest. ``ResumeReport.points`` lists the points checked.

When a resume is inexact for a known reason (Hugging Face's shuffle buffer, which its state does not
store), the mismatch carries a ``hint`` saying why and what to use instead.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Literal

import attrs
import numpy as np
import torch

from statefuldata.diagnose import Difference, explain
from statefuldata.hints import inexact_resume_hint
from statefuldata.loader import close_loader

__all__ = ["Mismatch", "ResumeMismatchError", "ResumeReport", "verify_resume"]

_MAX_DEFAULT_POINTS = 48


@attrs.frozen
class Mismatch:
    """Where a resumed run first differed: ``point`` k, the global ``batch_index``, both values.

    ``difference`` says which part differs (ids: other samples or order; values: the same samples
    with other values) and ``suggestion`` the likely fix (see :mod:`statefuldata.diagnose`);
    ``hint`` says why and what to use instead when the loader's cause is known (else it is empty).
    """

    point: int
    batch_index: int
    expected: Any
    got: Any
    reason: str
    difference: Difference | None = None
    suggestion: str = ""
    hint: str = ""


@attrs.frozen
class ResumeReport:
    """Result of :func:`verify_resume`; truthy when every point resumed exactly."""

    ok: bool
    points: tuple[int, ...]
    first_mismatch: Mismatch | None
    total_batches: int

    def __bool__(self) -> bool:
        return self.ok

    @property
    def hint(self) -> str:
        """Why the first mismatch happened and what to use instead, when known (else empty)."""
        return "" if self.first_mismatch is None else self.first_mismatch.hint


class ResumeMismatchError(AssertionError):
    """Raised by ``verify_resume(..., raise_on_mismatch=True)``."""


def equal(a: Any, b: Any) -> bool:
    """Exact structural equality: tensors by dtype, shape and values; containers recursively."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return (
            isinstance(a, torch.Tensor)
            and isinstance(b, torch.Tensor)
            and a.dtype == b.dtype
            and a.shape == b.shape
            and bool(torch.equal(a, b))
        )
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return bool(np.array_equal(a, b)) and np.asarray(a).dtype == np.asarray(b).dtype
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(map(equal, a, b))
    return bool(a == b)


def _round_trip(state: Any) -> Any:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


class _Stream:
    """Iterates a loader pass by pass as one flat stream of batches."""

    def __init__(self, loader: Any, passes: int) -> None:
        self.loader, self.passes_left = loader, passes
        self._it: Any = None

    def close(self) -> None:
        self._it = None
        close_loader(self.loader)

    def take(self, count: int | None) -> list[Any]:
        out: list[Any] = []
        while (count is None or len(out) < count) and self.passes_left > 0:
            if self._it is None:
                self._it = iter(self.loader)
            try:
                out.append(next(self._it))
            except StopIteration:
                self._it, self.passes_left = None, self.passes_left - 1
        return out


def _default_points(total: int, boundaries: Sequence[int], prefetch: int) -> list[int]:
    """Every point up to 48; else exactly 48: mid-prefetch, around boundaries, an even spread."""
    if total + 1 <= _MAX_DEFAULT_POINTS:
        return list(range(total + 1))
    points = set(range(min(prefetch + 2, total + 1)))
    for b in boundaries:
        points.update(p for p in (b - 1, b, b + 1) if 0 <= p <= total)
    spread = _MAX_DEFAULT_POINTS - len(points)
    while len(points) < _MAX_DEFAULT_POINTS:
        candidates = np.linspace(0, total, num=spread, dtype=int).tolist()
        fresh = [c for c in candidates if c not in points]
        points.update(fresh[: _MAX_DEFAULT_POINTS - len(points)])
        spread += 1
    return sorted(points)


def _pass_of(k: int, boundaries: Sequence[int]) -> int:
    """Index of the pass the k-th consumed batch ends in (a boundary belongs to the earlier pass)."""
    return next((i for i, end in enumerate(boundaries) if k <= end), len(boundaries) - 1)


def verify_resume(
    factory: Callable[[], Any],
    *,
    points: Iterable[int] | Literal["all"] | None = None,
    epochs: int = 2,
    raise_on_mismatch: bool = False,
) -> ResumeReport:
    """Check that interrupting and resuming a loader reproduces the uninterrupted batches exactly.

    Args:
        factory: Zero-argument callable returning a *fresh* loader (anything iterable with
            ``state_dict``/``load_state_dict``, e.g. from :func:`make_loader`).
        points: Interruption points ``k`` (batches consumed before the state is taken), from 0 to the
            total number of batches over ``epochs`` passes, or ``"all"`` for every one of them.
            Default: every point when there are at most 47 batches, else 48 points: the first
            ``prefetch_factor * num_workers + 2``, the batch before, at and after each epoch
            boundary, and an even spread (see the module docstring).
        epochs: Passes over the loader in the reference run (2 covers an epoch boundary).
        raise_on_mismatch: Raise :class:`ResumeMismatchError` at the first mismatch (and let
            exceptions from the resumed run propagate) instead of reporting it.

    Returns:
        A :class:`ResumeReport` with ``ok``, the ``points`` checked and the ``first_mismatch``
        (whose ``hint`` says why and what to use instead, when the cause is known).

    Example:
        >>> from statefuldata import make_loader
        >>> verify_resume(lambda: make_loader(list(range(8)), batch_size=3, shuffle=True)).ok
        True
    """
    if not callable(factory):
        raise TypeError(
            f"'factory' must be a zero-argument callable returning a fresh loader (got "
            f"{type(factory).__name__}); pass e.g. lambda: make_loader(dataset, ...)"
        )
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"'epochs' must be an int >= 1 (got {epochs!r})")
    reference_loader = factory()
    boundaries: list[int] = []
    reference: list[Any] = []
    stream = _Stream(reference_loader, 1)
    for _ in range(epochs):
        stream.passes_left = 1
        reference.extend(stream.take(None))
        boundaries.append(len(reference))
    stream.close()
    total = len(reference)
    prefetch = getattr(reference_loader, "num_workers", 0) * (
        getattr(reference_loader, "prefetch_factor", None) or 0
    )
    if points is None:
        chosen = _default_points(total, boundaries, prefetch)
    elif isinstance(points, str):
        if points != "all":
            raise ValueError(
                f"points must be 'all', None or a list of ints (got {points!r}); pass points='all' "
                "to check every batch"
            )
        chosen = list(range(total + 1))
    else:
        chosen = sorted(set(points))
    bad = [k for k in chosen if not (isinstance(k, int) and 0 <= k <= total)]
    if bad:
        raise ValueError(f"points must be ints in [0, {total}] (got {bad}); {total} batches in all")
    for k in chosen:
        mismatch = _check_point(factory, reference, boundaries, k, raise_on_mismatch)
        if mismatch is not None:
            mismatch = explain(mismatch)
            mismatch = attrs.evolve(mismatch, hint=inexact_resume_hint(reference_loader))
            if raise_on_mismatch:
                raise ResumeMismatchError(
                    f"resume at point {mismatch.point} differs at batch {mismatch.batch_index}: "
                    f"{mismatch.reason}; expected {mismatch.expected!r}, got {mismatch.got!r}. "
                    f"Fix: {mismatch.suggestion}" + (f" {mismatch.hint}" if mismatch.hint else "")
                )
            return ResumeReport(False, tuple(chosen), mismatch, total)
    return ResumeReport(True, tuple(chosen), None, total)


def _compare(
    point: int, start: int, expected: Sequence[Any], got: Sequence[Any]
) -> Mismatch | None:
    for offset, (e, g) in enumerate(zip(expected, got)):
        if not equal(e, g):
            return Mismatch(point, start + offset, e, g, "batch differs")
    if len(expected) != len(got):
        index = start + min(len(expected), len(got))
        return Mismatch(
            point,
            index,
            expected[len(got)] if len(got) < len(expected) else None,
            got[len(expected)] if len(expected) < len(got) else None,
            f"resumed run yielded {len(got)} batches where {len(expected)} were expected",
        )
    return None


def _resume_from(factory: Callable[[], Any], state: Any, passes: int) -> _Stream:
    loader = factory()
    loader.load_state_dict(_round_trip(state))
    return _Stream(loader, passes)


def _check_point(
    factory: Callable[[], Any],
    reference: list[Any],
    boundaries: list[int],
    k: int,
    raise_errors: bool,
) -> Mismatch | None:
    epochs = len(boundaries)
    streams: list[_Stream] = []
    try:
        first = _Stream(factory(), epochs)
        streams.append(first)
        first.take(k)
        state = first.loader.state_dict()
        first.close()
        resumed = _resume_from(factory, state, epochs - _pass_of(k, boundaries))
        streams.append(resumed)
        half = (len(reference) - k) // 2
        mismatch = _compare(k, k, reference[k : k + half], resumed.take(half))
        if mismatch is not None:
            return mismatch
        state = resumed.loader.state_dict()
        again = _resume_from(factory, state, epochs - _pass_of(k + half, boundaries))
        streams.append(again)
        rest_of_resumed = resumed.take(None)
        rest_of_again = again.take(None)
    except Exception as exc:
        if raise_errors:
            raise
        return Mismatch(k, k, None, None, f"resumed run raised {type(exc).__name__}: {exc}")
    finally:
        for stream in streams:
            stream.close()
    rest = reference[k + half :]
    return _compare(k, k + half, rest, rest_of_resumed) or _compare(
        k, k + half, rest, rest_of_again
    )
