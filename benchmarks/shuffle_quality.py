"""How well a shuffle mixes a stream: mean and max displacement of an item from its position.

Compared over a stream of n items: :class:`statefuldata.ShuffleBuffer` (windowed), the refilling
shuffle buffer that Hugging Face and webdataset use (fill B items, then emit a random slot and refill
it; not exactly resumable) and a full shuffle (``torch.randperm``).
"""

from __future__ import annotations

import random
import statistics
from collections.abc import Iterable, Iterator
from typing import Any

import torch

from statefuldata import ShuffleBuffer

__all__ = ["displacement", "displacement_rows", "refilling_order", "windowed_order"]


def windowed_order(n: int, buffer_size: int) -> Iterator[int]:
    class Stream(torch.utils.data.IterableDataset):
        def __iter__(self) -> Iterator[int]:
            return iter(range(n))

    return iter(ShuffleBuffer(Stream(), buffer_size, seed=0))


def refilling_order(n: int, buffer_size: int) -> Iterator[int]:
    """The usual shuffle buffer: fill, then emit a random slot and refill it from the stream."""
    rng = random.Random(0)
    buffer: list[int] = []
    for item in range(n):
        if len(buffer) < buffer_size:
            buffer.append(item)
            continue
        slot = rng.randrange(buffer_size)
        yield buffer[slot]
        buffer[slot] = item
    rng.shuffle(buffer)
    yield from buffer


def displacement(order: Iterable[int]) -> tuple[float, int]:
    moves = [abs(pos - item) for pos, item in enumerate(order)]
    return statistics.fmean(moves), max(moves)


def displacement_rows(n: int, buffers: Iterable[int]) -> list[dict[str, Any]]:
    """One row per buffer size: mean and max displacement of the three shuffles over ``n`` items."""
    full_mean, full_max = displacement(
        torch.randperm(n, generator=torch.Generator().manual_seed(0)).tolist()
    )
    rows = []
    for b in buffers:
        if b > n:
            continue
        windowed, windowed_max = displacement(windowed_order(n, b))
        refilling, refilling_max = displacement(refilling_order(n, b))
        rows.append(
            {
                "buffer": b,
                "windowed": windowed,
                "windowed_over_b": windowed / b,
                "windowed_max": windowed_max,
                "refilling": refilling,
                "refilling_over_b": refilling / b,
                "refilling_max": refilling_max,
                "full": full_mean,
                "full_max": full_max,
            }
        )
    return rows
