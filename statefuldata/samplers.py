"""Samplers whose whole state is ``(epoch, position)``: O(1) memory, O(1) restore.

Both samplers walk a *global order* of ``range(n)`` (identity, or a keyed Feistel bijection re-keyed
every epoch) and hand rank ``r`` of ``world_size`` the global positions ``r, r + W, r + 2W, ...``, padded
by wrapping around (or truncated with ``drop_last``) exactly like ``torch.utils.data.DistributedSampler``.

Epochs follow torch's convention (``DistributedSampler``, torchdata's ``StatefulDistributedSampler``):

* ``set_epoch(e)`` chooses the epoch of the *next* pass. A pass is in flight once it has handed out an
  index (with DataLoader workers, prefetching does that right at ``iter(loader)``); ``set_epoch`` never
  touches a pass in flight. A pass that ``iter()`` created but that has handed out nothing yet (no
  workers, before the first batch) is still the next pass, so it takes the epoch, as torch's do.
* Without ``set_epoch`` the sampler advances by itself: ``iter()`` after a pass that handed out anything
  (or ended) starts the next epoch, a fresh order.
* Both: an explicit ``set_epoch`` wins for the next pass; the passes after it advance from it.
* ``load_state_dict`` makes the loaded ``(epoch, position)`` the next pass (clearing an earlier
  ``set_epoch``) and redirects an iterator that is already live. Its position is never discarded: a
  ``set_epoch`` equal to the loaded epoch keeps it, another one is ignored with a WARNING, except when
  the loaded pass has nothing left (a state taken at its end), which then starts the requested epoch.
* The loaded state applies to the resumed pass only; later passes start at position 0.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any, ClassVar

import attrs
import numpy as np

from statefuldata.errors import IncompatibleStateError
from statefuldata.permutation import FeistelPermutation
from statefuldata.seeding import derive_seed
from statefuldata.validators import check_epoch, int_at_least

__all__ = ["SequentialSampler", "ShuffledSampler"]

logger = logging.getLogger(__name__)

_MIN_CHUNK = 512
_MAX_CHUNK = 1 << 16


_positive_int = int_at_least(1, above=True)
_non_negative_int = int_at_least(0, hint="use e.g. 0")
# 'n' names what an empty sampler would lack
_positive_n = int_at_least(1, above=True, hint="a sampler needs a non-empty dataset")


@attrs.define(eq=False)
class PositionSampler:
    """Shared machinery: rank striding, padding, chunked iteration, state (see module docstring)."""

    KEY_EPOCH: ClassVar[str] = "epoch"
    KEY_POSITION: ClassVar[str] = "position"
    KEY_FINGERPRINT: ClassVar[str] = "fingerprint"
    KIND: ClassVar[str] = ""

    n: int = attrs.field(validator=_positive_n)
    rank: int = attrs.field(default=0, kw_only=True, validator=_non_negative_int)
    world_size: int = attrs.field(default=1, kw_only=True, validator=_positive_int)
    drop_last: bool = attrs.field(default=False, kw_only=True, converter=bool)

    _epoch: int = attrs.field(init=False, default=0)
    _position: int = attrs.field(init=False, default=0)
    _iterated: bool = attrs.field(init=False, default=False)  # iter() was called on this pass
    _live: bool = attrs.field(init=False, default=False)  # this pass handed out an index or ended
    _loaded: bool = attrs.field(init=False, default=False)  # this pass resumes a loaded position
    _requested: int | None = attrs.field(init=False, default=None)
    _exhausted: bool = attrs.field(init=False, default=False)
    _generation: int = attrs.field(init=False, default=0)
    _chunk: list[int] | None = attrs.field(init=False, default=None, repr=False)
    _chunk_start: int = attrs.field(init=False, default=0)
    _chunk_iter: Any = attrs.field(init=False, default=None, repr=False)

    def __attrs_post_init__(self) -> None:
        if self.rank >= self.world_size:
            raise ValueError(
                f"'rank' must be < world_size (got rank={self.rank}, world_size={self.world_size}); "
                "ranks are numbered 0..world_size-1"
            )
        if self.drop_last and self.n < self.world_size:
            raise ValueError(
                f"drop_last=True with n={self.n} < world_size={self.world_size} leaves every rank "
                "empty; use drop_last=False or a larger dataset"
            )

    @property
    def num_samples(self) -> int:
        """Samples this rank yields per epoch."""
        if self.drop_last:
            return self.n // self.world_size
        return -(-self.n // self.world_size)

    def __len__(self) -> int:
        return self.num_samples

    @property
    def epoch(self) -> int:
        return self._epoch

    @property
    def position(self) -> int:
        """Samples of the current epoch already handed out by this rank."""
        if self._chunk_iter is None or self._chunk is None:
            return self._position
        left: int = self._chunk_iter.__length_hint__()
        return self._chunk_start + len(self._chunk) - left

    def _advances(self) -> bool:
        """Whether the next ``iter()`` starts a new pass (the current one began or has nothing left)."""
        return self._live or (self._iterated and self.position >= self.num_samples)

    @property
    def next_epoch(self) -> int:
        """The epoch the next ``iter()`` will produce."""
        if not self._advances():
            return self._epoch
        return self._epoch + 1 if self._requested is None else self._requested

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch of the next pass; a pass in flight and a loaded position are kept.

        See the module docstring for the full rule (torch's convention plus automatic advance).
        """
        check_epoch(epoch)
        epoch = int(epoch)
        if self._live:
            self._requested = epoch
        elif self._loaded and (epoch == self._epoch or self._position < self.num_samples):
            if epoch != self._epoch:
                logger.warning(
                    "%s.set_epoch(%d) ignored: a loaded state resumes epoch %d at position %d of %d "
                    "and a loaded position is never discarded. Call set_epoch(%d) for the resumed "
                    "pass (or load a state of epoch %d).",
                    type(self).__name__,
                    epoch,
                    self._epoch,
                    self._position,
                    self.num_samples,
                    self._epoch,
                    epoch,
                )
        else:
            self._redirect(epoch, 0, loaded=False)

    def _redirect(self, epoch: int, position: int, *, loaded: bool) -> None:
        if self._chunk is not None:
            self._chunk.clear()  # a live iterator stops its chunk and re-reads the position
        self._chunk, self._chunk_iter = None, None
        self._epoch, self._position, self._loaded = int(epoch), int(position), loaded
        self._live = self._exhausted = False

    def __iter__(self) -> Iterator[int]:
        if self._advances():
            epoch = self._epoch + 1 if self._requested is None else self._requested
            self._redirect(epoch, 0, loaded=False)
        if self._chunk is not None:
            self._chunk.clear()
        self._chunk, self._chunk_iter = None, None
        self._requested, self._iterated, self._live, self._exhausted = None, True, False, False
        self._generation += 1
        return self._generate(self._generation)

    def _generate(self, generation: int) -> Iterator[int]:
        size = _MIN_CHUNK
        total = self.num_samples
        while self._generation == generation:
            self._live = True
            start = self._position
            if start >= total:
                self._exhausted = True
                return
            end = min(start + size, total)
            chunk = self._indices(start, end).tolist()
            self._chunk, self._chunk_start = chunk, start
            self._chunk_iter = it = iter(chunk)
            yield from it
            if self._chunk is chunk:  # ran to its end; otherwise state was redirected meanwhile
                self._position, self._chunk, self._chunk_iter = end, None, None
            size = min(size * 2, _MAX_CHUNK)

    def _indices(self, start: int, end: int) -> np.ndarray:
        global_positions = np.arange(start, end, dtype=np.int64) * self.world_size + self.rank
        return self._order(global_positions % self.n)

    def _order(self, positions: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _fingerprint(self) -> dict[str, Any]:
        return {
            "kind": self.KIND,
            "n": self.n,
            "rank": self.rank,
            "world_size": self.world_size,
            "drop_last": self.drop_last,
        }

    def state_dict(self) -> dict[str, Any]:
        """``{"epoch", "position", "fingerprint"}``; a few dozen bytes whatever ``n`` is."""
        return {
            self.KEY_EPOCH: self._epoch,
            self.KEY_POSITION: self.position,
            self.KEY_FINGERPRINT: self._fingerprint(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore ``(epoch, position)``; raises ``IncompatibleStateError`` on another configuration."""
        expected = {self.KEY_EPOCH, self.KEY_POSITION, self.KEY_FINGERPRINT}
        if not isinstance(state, dict) or set(state) != expected:
            got = sorted(state) if isinstance(state, dict) else type(state).__name__
            raise IncompatibleStateError(
                f"{type(self).__name__} state must have keys {sorted(expected)} (got {got}); "
                "pass the dict returned by state_dict()"
            )
        if state[self.KEY_FINGERPRINT] != self._fingerprint():
            raise IncompatibleStateError(
                f"{type(self).__name__} state was taken under {state[self.KEY_FINGERPRINT]} but this "
                f"sampler is {self._fingerprint()}; rebuild the sampler with the saved configuration"
            )
        position = int(state[self.KEY_POSITION])
        if not 0 <= position <= self.num_samples:
            raise IncompatibleStateError(
                f"position must be in [0, {self.num_samples}] (got {position}); the state is corrupt"
            )
        self._redirect(int(state[self.KEY_EPOCH]), position, loaded=True)
        self._requested, self._iterated = None, False


@attrs.define(eq=False)
class SequentialSampler(PositionSampler):
    """``0, 1, ..., n-1`` every epoch (strided by rank), with resumable state.

    Example:
        >>> s = SequentialSampler(5)
        >>> list(s)
        [0, 1, 2, 3, 4]

    State keys: ``epoch``, ``position``, ``fingerprint``. Resume guarantee: after
    ``load_state_dict(s.state_dict())`` the remaining indices equal the uninterrupted ones.
    """

    KIND: ClassVar[str] = "sequential"

    def _order(self, positions: np.ndarray) -> np.ndarray:
        return positions


@attrs.define(eq=False)
class ShuffledSampler(PositionSampler):
    """A fresh shuffled order of ``range(n)`` each epoch, computed lazily from ``(seed, epoch)``.

    No permutation is materialised: the order is a Feistel bijection keyed by
    ``derive_seed(seed, epoch)``, evaluated in vectorised chunks. Starting an epoch over 10^8 samples
    costs milliseconds and O(1) memory; restore is O(1).

    Example:
        >>> s = ShuffledSampler(10, seed=0)
        >>> first = list(s)
        >>> sorted(first) == list(range(10)) and list(s) != first  # next epoch, new order
        True

    State keys: ``epoch``, ``position``, ``fingerprint`` (kind, n, seed, rank, world_size, drop_last).
    Resume guarantee: the remaining indices after a restore equal the uninterrupted ones, exactly.
    """

    KIND: ClassVar[str] = "shuffled"

    seed: int = attrs.field(default=0, kw_only=True, validator=_non_negative_int)
    _perm: FeistelPermutation | None = attrs.field(init=False, default=None, repr=False)

    def _order(self, positions: np.ndarray) -> np.ndarray:
        key = derive_seed(self.seed, self._epoch)
        if self._perm is None or self._perm.key != key:
            self._perm = FeistelPermutation(self.n, key=key)
        return self._perm(positions)

    def _fingerprint(self) -> dict[str, Any]:
        return {**super()._fingerprint(), "seed": self.seed}
