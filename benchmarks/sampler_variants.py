"""The sampler variants timed by :mod:`benchmarks.sampler` and probed by :mod:`benchmarks.memprobe`."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch.utils.data import BatchSampler
from torchdata.stateful_dataloader.sampler import RandomSampler as TorchdataRandomSampler

from benchmarks.harness import clock
from statefuldata import FeistelPermutation, ShuffledSampler, derive_seed

__all__ = [
    "BATCH",
    "FIRST_BATCH",
    "OURS",
    "PYTHON_LIST_VARIANTS",
    "RANDPERM",
    "TORCHDATA",
    "epoch_seconds",
    "feistel_seconds",
    "permutation_list_seconds",
]

BATCH = 32
OURS, RANDPERM, TORCHDATA = "ShuffledSampler", "torch.randperm", "torchdata RandomSampler"
PYTHON_LIST_VARIANTS = frozenset({TORCHDATA})  # materialise n Python ints


def _ours_first(n: int, epoch: int) -> list[int]:
    sampler = ShuffledSampler(n, seed=0)
    sampler.set_epoch(epoch)
    return list(itertools.islice(iter(sampler), BATCH))


def _randperm_first(n: int, epoch: int) -> list[int]:
    return torch.randperm(n, generator=torch.Generator().manual_seed(epoch))[:BATCH].tolist()


def _torchdata_first(n: int, epoch: int) -> list[int]:
    sampler = TorchdataRandomSampler(range(n), generator=torch.Generator().manual_seed(epoch))
    iterator = iter(sampler)
    return [next(iterator) for _ in range(BATCH)]


FIRST_BATCH: dict[str, Callable[[int, int], list[int]]] = {
    OURS: _ours_first,
    RANDPERM: _randperm_first,
    TORCHDATA: _torchdata_first,
}


def epoch_seconds(sampler: Any) -> float:
    """Seconds to draw one whole epoch through a BatchSampler, as a DataLoader would."""
    batches = BatchSampler(sampler, BATCH, drop_last=False)
    return clock(lambda: sum(1 for _ in batches))


def feistel_seconds(n: int, tolist: bool) -> float:
    """The Feistel evaluation of one epoch alone, in 2^16 chunks (no per-index Python work)."""
    perm, chunk = FeistelPermutation(n, key=derive_seed(0, 1)), 1 << 16

    def work() -> None:
        for start in range(0, n, chunk):
            out = perm(np.arange(start, min(start + chunk, n), dtype=np.int64))
            if tolist:
                out.tolist()

    return clock(work)


def permutation_list_seconds(n: int, generator: torch.Generator) -> float:
    """``randperm(n).tolist()`` drawn through a BatchSampler: one materialised permutation, timed
    from its creation (what RandomSampler would cost without its second permutation per epoch)."""
    return clock(
        lambda: sum(
            1
            for _ in BatchSampler(
                torch.randperm(n, generator=generator).tolist(), BATCH, drop_last=False
            )
        )
    )
