"""Small datasets shared by the tests (module level, so DataLoader workers can unpickle them)."""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import Dataset, IterableDataset, get_worker_info

from statefuldata import sample_rng


class Ids(Dataset):
    """Map-style: item i is the int64 id i."""

    def __init__(self, n: int, offset: int = 0) -> None:
        self.n, self.offset = n, offset

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> int:
        if not 0 <= index < self.n:
            raise IndexError(index)
        return index + self.offset


class AugmentedIds(Ids):
    """Map-style: (id, noise) with noise drawn from ``sample_rng(seed, 0, id)``."""

    def __getitem__(self, index: int) -> Any:
        return index, torch.rand(3, generator=sample_rng(7, 0, index))


def _shard() -> tuple[int, int]:
    info = get_worker_info()
    return (0, 1) if info is None else (info.id, info.num_workers)


class PlainStream(IterableDataset):
    """Iterable without state methods: ids offset..offset+n-1, sharded across workers."""

    def __init__(self, n: int, offset: int = 0) -> None:
        self.n, self.offset = n, offset

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        worker, workers = _shard()
        for i in range(worker, self.n, workers):
            yield i + self.offset


class UnsizedStream(PlainStream):
    """A PlainStream without ``__len__`` (infinite-looking)."""

    __len__ = None  # type: ignore[assignment]


class CountingStream(IterableDataset):
    """Iterable implementing the protocol: its state is the position within this worker's shard."""

    def __init__(self, n: int, offset: int = 0, restore_shift: int = 0) -> None:
        self.n, self.offset, self.restore_shift = n, offset, restore_shift
        self._start = 0
        self._position = 0

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        # The loaded position is consumed here, in __iter__, not lazily in the generator: a loader
        # may call iter() and never draw from it (e.g. a restore at the very end of a pass).
        self._position, self._start = self._start, 0
        return self._generate()

    def _generate(self):
        worker, workers = _shard()
        ids = range(worker, self.n, workers)
        while self._position < len(ids):
            self._position += 1
            yield ids[self._position - 1] + self.offset

    def state_dict(self) -> dict[str, int]:
        return {"position": self._position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self._start = state["position"] + self.restore_shift


class ShortStream(IterableDataset):
    def __init__(self, n: int) -> None:
        self.n = n

    def __iter__(self):
        return iter(range(self.n))


class Features(Dataset):
    """Map-style regression data: item i is {"id", "x" (8 floats), "y"}, a pure function of the id."""

    def __init__(self, n: int, offset: int = 0) -> None:
        self.n, self.offset = n, offset

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> dict[str, Any]:
        sample_id = index + self.offset
        g = torch.Generator().manual_seed(sample_id)
        x = torch.randn(8, generator=g)
        return {"id": sample_id, "x": x, "y": x.sum(dim=0, keepdim=True) * 0.5 + 0.1}


class FeatureStream(IterableDataset):
    """The same items as :class:`Features`, streamed, implementing the state protocol."""

    def __init__(self, n: int, offset: int = 0) -> None:
        self.items = Features(n, offset)
        self._start = self._position = 0

    def __len__(self) -> int:
        return len(self.items)

    def __iter__(self):
        self._position, self._start = self._start, 0
        return self._generate()

    def _generate(self):
        worker, workers = _shard()
        ids = range(worker, len(self.items), workers)
        while self._position < len(ids):
            self._position += 1
            yield self.items[ids[self._position - 1]]

    def state_dict(self) -> dict[str, int]:
        return {"position": self._position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self._start = state["position"]


class PlainFeatureStream(IterableDataset):
    """The same items as :class:`Features`, streamed, without state methods (skip fallback)."""

    def __init__(self, n: int, offset: int = 0) -> None:
        self.items = Features(n, offset)

    def __len__(self) -> int:
        return len(self.items)

    def __iter__(self):
        worker, workers = _shard()
        for i in range(worker, len(self.items), workers):
            yield self.items[i]
