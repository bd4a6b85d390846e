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

Elastic state: ``position`` in a state is *global*, the samples of the epoch's global order the whole
group has handed out (ranks move in lockstep, so it is this rank's position times ``world_size``).
Loaded under another rank, world size or worker count, each rank resumes at the first global
position not yet handed out that is its own: the group goes on with the same global sequence when
the global batch size (per-rank batch size x world size) is unchanged. A pass that was complete
stays complete (the end-of-epoch padding or truncation follows the new world size). States written
before this layout (per-rank ``position``, ``rank`` and ``world_size`` in the fingerprint) still load
under the rank and world size they were taken with.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any, ClassVar

import attrs
import numpy as np

from statefuldata.errors import IncompatibleStateError
from statefuldata.permutation import FeistelPermutation
from statefuldata.ranks import local_position, num_samples_of, process_group_rank_and_world
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


def _group_rank(value: int | None) -> int:
    return process_group_rank_and_world()[0] if value is None else value


def _group_world(value: int | None) -> int:
    return process_group_rank_and_world()[1] if value is None else value


# Fields are validated (and converted) at construction only: with on_setattr hooks, attrs routes
# every attribute write through four Python calls, the iteration state's per-chunk writes included.
_NO_HOOKS = attrs.setters.NO_OP


@attrs.define(eq=False, on_setattr=_NO_HOOKS)
class PositionSampler:
    """Shared machinery: rank striding, padding, chunked iteration, state (see module docstring).

    ``rank`` and ``world_size`` default to the torch.distributed process group's when one is
    initialised (else 0 and 1); values you pass win.
    """

    KEY_EPOCH: ClassVar[str] = "epoch"
    KEY_POSITION: ClassVar[str] = "position"
    KEY_FINGERPRINT: ClassVar[str] = "fingerprint"
    KEY_WORLD_SIZE: ClassVar[str] = "world_size"
    KIND: ClassVar[str] = ""

    n: int = attrs.field(validator=_positive_n)
    rank: int = attrs.field(
        default=None, kw_only=True, converter=_group_rank, validator=_non_negative_int
    )
    world_size: int = attrs.field(
        default=None, kw_only=True, converter=_group_world, validator=_positive_int
    )
    drop_last: bool = attrs.field(default=False, kw_only=True, converter=bool)

    _epoch: int = attrs.field(init=False, default=0)
    _position: int = attrs.field(init=False, default=0)
    _iterated: bool = attrs.field(init=False, default=False)  # iter() was called on this pass
    _live: bool = attrs.field(init=False, default=False)  # this pass handed out an index or ended
    _loaded: bool = attrs.field(init=False, default=False)  # this pass resumes a loaded position
    _requested: int | None = attrs.field(init=False, default=None)
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
        return num_samples_of(self.n, self.world_size, self.drop_last)

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

    def indices_at(self, start: int, stop: int) -> list[int]:
        """This rank's indices at positions ``[start, stop)`` of the epoch's order; moves nothing."""
        stop = min(int(stop), self.num_samples)
        return [int(i) for i in self._indices(min(max(int(start), 0), stop), stop)]

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
        self._live = False

    def __iter__(self) -> Iterator[int]:
        if self._advances():
            epoch = self._epoch + 1 if self._requested is None else self._requested
            self._redirect(epoch, 0, loaded=False)
        if self._chunk is not None:
            self._chunk.clear()
        self._chunk, self._chunk_iter = None, None
        self._requested, self._iterated, self._live = None, True, False
        self._generation += 1
        return self._generate(self._generation)

    def _generate(self, generation: int) -> Iterator[int]:
        size = _MIN_CHUNK
        total = self.num_samples
        while self._generation == generation:
            self._live = True
            start = self._position
            if start >= total:
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
        """What the global order depends on (not the rank nor the world size)."""
        return {"kind": self.KIND, "n": self.n, "drop_last": self.drop_last}

    def _legacy_fingerprint(self) -> dict[str, Any]:
        """The fingerprint of the per-rank states written before positions became global."""
        return {**self._fingerprint(), "rank": self.rank, "world_size": self.world_size}

    def state_dict(self) -> dict[str, Any]:
        """``{"epoch", "position", "world_size", "fingerprint"}``; a few dozen bytes whatever ``n`` is.

        ``position`` is global: the samples of the epoch's global order that the whole group has
        handed out (this rank's position times ``world_size``; ranks move in lockstep).
        """
        return {
            self.KEY_EPOCH: self._epoch,
            self.KEY_POSITION: self.position * self.world_size,
            self.KEY_WORLD_SIZE: self.world_size,
            self.KEY_FINGERPRINT: self._fingerprint(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore ``(epoch, position)``, also under another rank, world size or worker count.

        This rank resumes at the first position of the global order not yet handed out by the
        saved group. Per-rank states of older versions load under the same rank and world size.

        Raises:
            IncompatibleStateError: The state has other keys, was taken under another ``kind``,
                ``n``, ``seed`` or ``drop_last``, or holds a position outside its epoch.
        """
        self._redirect(*self._resolve(state), loaded=True)
        self._requested, self._iterated = None, False

    def _resolve(self, state: dict[str, Any]) -> tuple[int, int]:
        """``(epoch, this rank's position)`` of a state (either layout), validated."""
        name = type(self).__name__
        if isinstance(state, dict) and set(state) == _LEGACY_KEYS:
            self._check_fingerprint(state, self._legacy_fingerprint())
            return int(state[self.KEY_EPOCH]), self._check_position(
                int(state[self.KEY_POSITION]), self.num_samples
            )
        if not isinstance(state, dict) or set(state) != _STATE_KEYS:
            got = sorted(state) if isinstance(state, dict) else type(state).__name__
            raise IncompatibleStateError(
                f"{name} state must have keys {sorted(_STATE_KEYS)} (got {got}); "
                "pass the dict returned by state_dict()"
            )
        self._check_fingerprint(state, self._fingerprint())
        saved_world = state[self.KEY_WORLD_SIZE]
        if isinstance(saved_world, bool) or not isinstance(saved_world, int) or saved_world < 1:
            raise IncompatibleStateError(
                f"{name} state has world_size {saved_world!r}; it must be an int >= 1 (the state "
                "is corrupt)"
            )
        saved_total = num_samples_of(self.n, saved_world, self.drop_last) * saved_world
        position = self._check_position(int(state[self.KEY_POSITION]), saved_total)
        local = local_position(position, saved_total, self.rank, self.world_size, self.num_samples)
        if saved_world != self.world_size:
            logger.info(
                "%s: global position %d of epoch %d (saved at world size %d) is position %d of "
                "rank %d at world size %d",
                name,
                position,
                state[self.KEY_EPOCH],
                saved_world,
                local,
                self.rank,
                self.world_size,
            )
            if position < saved_total and position % self.world_size:
                logger.warning(
                    "%s: global position %d does not divide by world size %d, so the ranks resume "
                    "at different positions; keep the global batch size (batch size x world "
                    "size) unchanged across a world-size change",
                    name,
                    position,
                    self.world_size,
                )
        return int(state[self.KEY_EPOCH]), local

    def _check_fingerprint(self, state: dict[str, Any], expected: dict[str, Any]) -> None:
        if state[self.KEY_FINGERPRINT] != expected:
            raise IncompatibleStateError(
                f"{type(self).__name__} state was taken under {state[self.KEY_FINGERPRINT]} but this "
                f"sampler is {expected}; rebuild the sampler with the saved configuration"
            )

    @staticmethod
    def _check_position(position: int, total: int) -> int:
        if not 0 <= position <= total:
            raise IncompatibleStateError(
                f"position must be in [0, {total}] (got {position}); the state is corrupt"
            )
        return position


_STATE_KEYS = frozenset(
    {
        PositionSampler.KEY_EPOCH,
        PositionSampler.KEY_POSITION,
        PositionSampler.KEY_WORLD_SIZE,
        PositionSampler.KEY_FINGERPRINT,
    }
)
_LEGACY_KEYS = _STATE_KEYS - {PositionSampler.KEY_WORLD_SIZE}


def advance_state(state: dict[str, Any], samples: int) -> dict[str, Any]:
    """``state`` (a :class:`PositionSampler` state) after each rank handed out ``samples`` more of
    the same epoch, stopping at its end; used where a state lags behind (torchdata's worker
    snapshots are taken every ``snapshot_every_n_steps`` batches)."""
    if samples <= 0:
        return state
    fingerprint, world = (
        state[PositionSampler.KEY_FINGERPRINT],
        state[PositionSampler.KEY_WORLD_SIZE],
    )
    total = num_samples_of(int(fingerprint["n"]), world, bool(fingerprint["drop_last"])) * world
    position = min(total, int(state[PositionSampler.KEY_POSITION]) + samples * world)
    return {**state, PositionSampler.KEY_POSITION: position}


@attrs.define(eq=False, on_setattr=_NO_HOOKS)
class SequentialSampler(PositionSampler):
    """``0, 1, ..., n-1`` every epoch (strided by rank), with resumable state.

    Example:
        >>> s = SequentialSampler(5)
        >>> list(s)
        [0, 1, 2, 3, 4]

    State keys: ``epoch``, ``position`` (global), ``world_size``, ``fingerprint`` (kind, n,
    drop_last). Resume guarantee: after ``load_state_dict(s.state_dict())`` the remaining indices
    equal the uninterrupted ones; under another rank or world size, the group goes on with the
    rest of the same global order.
    """

    KIND: ClassVar[str] = "sequential"

    def _order(self, positions: np.ndarray) -> np.ndarray:
        return positions


@attrs.define(eq=False, on_setattr=_NO_HOOKS)
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

    State keys: ``epoch``, ``position`` (global), ``world_size``, ``fingerprint`` (kind, n, seed,
    drop_last). Resume guarantee: the remaining indices after a restore equal the uninterrupted
    ones, exactly; under another rank, world size or worker count the group goes on with the rest
    of the same global order.
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
