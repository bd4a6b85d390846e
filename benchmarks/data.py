"""Synthetic datasets with a small per-item cost (module level, so worker processes can load them)."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Dataset, IterableDataset, get_worker_info

__all__ = ["CheckpointedStream", "PlainStream", "Regression", "SyntheticMap", "item_value"]

_MASK = (1 << 64) - 1


def item_value(index: int) -> int:
    """The item at ``index``: four rounds of a 64-bit LCG, about a microsecond of Python work."""
    x = index
    for _ in range(4):
        x = (x * 6364136223846793005 + 1442695040888963407) & _MASK
    return x >> 40


class SyntheticMap(Dataset):
    """Map-style: item ``i`` is :func:`item_value` of ``i``; no storage, any length."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> int:
        return item_value(index)


def _shard() -> tuple[int, int]:
    info = get_worker_info()
    return (0, 1) if info is None else (info.id, info.num_workers)


class PlainStream(IterableDataset):
    """Iterable without state methods (what most user streams look like); sharded over workers."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[int]:
        worker, workers = _shard()
        for i in range(worker, self.n, workers):
            yield item_value(i)


class CheckpointedStream(PlainStream):
    """The same stream implementing ``state_dict``/``load_state_dict``: its position in the shard.

    A restore seeks straight to the saved position (O(1)), which is what a checkpointable reader
    (a file offset, a shard index) does.
    """

    KEY_POSITION = "position"

    def __init__(self, n: int) -> None:
        super().__init__(n)
        self._start = 0
        self._position = 0

    def __iter__(self) -> Iterator[int]:
        self._position, self._start = self._start, 0
        return self._generate()

    def _generate(self) -> Iterator[int]:
        worker, workers = _shard()
        shard = range(worker, self.n, workers)
        while self._position < len(shard):
            self._position += 1
            yield item_value(shard[self._position - 1])

    def state_dict(self) -> dict[str, int]:
        return {self.KEY_POSITION: self._position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self._start = int(state[self.KEY_POSITION])


class Regression(Dataset):
    """Map-style ``(x, y)`` pairs of a noisy linear map: x has ``features`` values, y one."""

    def __init__(self, n: int, features: int = 32, seed: int = 0) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, features, generator=generator)
        weights = torch.randn(features, 1, generator=generator)
        self.y = self.x @ weights + 0.1 * torch.randn(n, 1, generator=generator)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x[index], self.y[index]
