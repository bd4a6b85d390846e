"""The restore variants compared by :mod:`benchmarks.restore`, their states and one measurement.

A way builds a fresh loader from ``(n, batch_size, num_workers)``. Stateful ways restore from a
serialised state (``torch.load(weights_only=True)`` then ``load_state_dict``); the naive way has no
state and discards ``k`` batches of a freshly seeded loader.
"""

from __future__ import annotations

import collections
import copy
import io
import itertools
import time
from collections.abc import Callable
from typing import Any

import attrs
import torch
from torch.utils.data import DataLoader

from benchmarks.curves import extrapolate_state, states_equal
from benchmarks.data import CheckpointedStream, PlainStream, SyntheticMap
from statefuldata import make_loader
from statefuldata.loader import quiet_stateful_dataloader

__all__ = ["SYNTH_KS", "WAYS", "Way", "measure", "prepare"]

SYNTH_KS = (4, 8)
"""Real states taken after these many batches define the linear synthesis of the others."""


@attrs.frozen
class Way:
    """One restore variant.

    Attributes:
        flat: Its cost is dominated by a constant (measured at the first and last k only, the
            points between interpolated).
    """

    key: str
    label: str
    build: Callable[[int, int, int], Any]  # (n, batch_size, num_workers) -> loader
    stateful: bool = True
    flat: bool = False


def _torchdata(dataset: Any, batch_size: int, workers: int, **kwargs: Any) -> Any:
    return quiet_stateful_dataloader(dataset, batch_size=batch_size, num_workers=workers, **kwargs)


def _naive_map(n: int, b: int, w: int) -> DataLoader:
    gen = torch.Generator().manual_seed(0)
    return DataLoader(SyntheticMap(n), batch_size=b, shuffle=True, num_workers=w, generator=gen)


WAYS: dict[str, tuple[Way, ...]] = {
    "map": (
        Way(
            "state",
            "ours: state (make_loader)",
            lambda n, b, w: make_loader(SyntheticMap(n), batch_size=b, shuffle=True, num_workers=w),
        ),
        Way(
            "torchdata",
            "torchdata default (RandomSampler replay)",
            lambda n, b, w: _torchdata(SyntheticMap(n), b, w, shuffle=True),
            flat=True,
        ),
        Way("naive", "DataLoader, skip k batches", _naive_map, stateful=False),
    ),
    "iterable": (
        Way(
            "state",
            "ours: state (stream with state_dict)",
            lambda n, b, w: make_loader(CheckpointedStream(n), batch_size=b, num_workers=w),
        ),
        Way(
            "skip",
            "ours: skip fallback (SkipFallback)",
            lambda n, b, w: make_loader(PlainStream(n), batch_size=b, num_workers=w),
        ),
        Way(
            "torchdata",
            "torchdata default (fast-forward)",
            lambda n, b, w: _torchdata(PlainStream(n), b, w),
        ),
        Way(
            "naive",
            "DataLoader, skip k batches",
            lambda n, b, w: DataLoader(PlainStream(n), batch_size=b, num_workers=w),
            stateful=False,
        ),
    ),
}


def _consume(iterator: Any, count: int) -> None:
    collections.deque(itertools.islice(iterator, count), maxlen=0)


def _close(iterator: Any) -> None:
    shutdown = getattr(iterator, "_shutdown_workers", None)
    if shutdown is not None:
        shutdown()


def prepare(
    way: Way, n: int, batch_size: int, workers: int, ks: tuple[int, ...], real_limit: int
) -> tuple[dict[int, bytes], dict[int, Any]]:
    """Serialised states at every k (real up to ``real_limit``, synthesised beyond) and the batch
    an uninterrupted run yields after each real k (to check the restores against)."""
    loader = way.build(n, batch_size, workers)
    iterator, done = iter(loader), 0
    states: dict[int, Any] = {}
    references: dict[int, Any] = {}
    for k in sorted(set(SYNTH_KS) | {k for k in ks if k <= real_limit}):
        _consume(iterator, k - done)
        if way.stateful:
            states[k] = copy.deepcopy(loader.state_dict())
        references[k] = next(iterator)
        done = k + 1
    _close(iterator)
    if not way.stateful:
        return {}, references
    (k1, k2), blobs = SYNTH_KS, {}
    for k in ks:
        synthetic = extrapolate_state(states[k1], k1, states[k2], k2, k)
        if k in states and not states_equal(synthetic, states[k]):
            raise RuntimeError(
                f"{way.label}, {workers} workers: the synthesised state at k={k} differs from the "
                "real one, so states at larger k cannot be synthesised; inspect state_dict()"
            )
        buffer = io.BytesIO()
        torch.save(states.get(k, synthetic), buffer)
        blobs[k] = buffer.getvalue()
    return blobs, references


def measure(
    way: Way, n: int, batch_size: int, workers: int, k: int, blob: bytes | None, sink: dict
) -> float:
    """Seconds from building fresh objects to holding the first batch after position ``k``."""
    start = time.perf_counter()
    loader = way.build(n, batch_size, workers)
    if blob is None:
        iterator = iter(loader)
        _consume(iterator, k)
    else:
        loader.load_state_dict(torch.load(io.BytesIO(blob), weights_only=True))
        iterator = iter(loader)
    batch = next(iterator)
    elapsed = time.perf_counter() - start
    _close(iterator)
    sink[way.key] = batch
    return elapsed
