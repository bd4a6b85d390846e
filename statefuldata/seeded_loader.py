"""``SeededStatefulDataLoader``: a ``StatefulDataLoader`` that knows the epoch of each pass."""

from __future__ import annotations

import collections
import copy
import logging
import warnings
import weakref
from typing import Any

import attrs
from torch.utils.data import DistributedSampler, IterableDataset
from torchdata.stateful_dataloader import Stateful, StatefulDataLoader

from statefuldata.samplers import PositionSampler, advance_state
from statefuldata.torchdata_state import batch_with_islice, snapshot_now, start_passes_at_iter
from statefuldata.validators import check_epoch
from statefuldata.views import EpochView
from statefuldata.workers import _WorkerSeeder, close_at_exit, frozen_heap_for_fork

__all__ = ["SeededStatefulDataLoader"]

logger = logging.getLogger(__name__)


def quiet_stateful_dataloader(*args: Any, cls: type = StatefulDataLoader, **kwargs: Any) -> Any:
    """Build a StatefulDataLoader without torchdata 0.11's ``set_vital`` deprecation warning."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="'set_vital' is deprecated", category=UserWarning)
        return cls(*args, **kwargs)


class _RetiredIterator:
    def __next__(self) -> Any:
        raise RuntimeError(
            "this DataLoader iterator was superseded by load_state_dict() or a newer iter(); "
            "call iter(loader) again to continue from the loader's current state"
        )


_MIXED_CLASSES: dict[tuple[type, type], type] = {}


def _mix_in(obj: Any, mixin: type, prefix: str) -> None:
    """Give ``obj`` a subclass of its class with ``mixin`` first, in place (once per class)."""
    cls = type(obj)
    if issubclass(cls, mixin):
        return
    if (mixin, cls) not in _MIXED_CLASSES:
        _MIXED_CLASSES[mixin, cls] = type(f"{prefix}{cls.__name__}", (mixin, cls), {})
    obj.__class__ = _MIXED_CLASSES[mixin, cls]


class _RememberingIterator:
    """Records the loader's state before each batch it hands out (see ``remember_states``)."""

    _statefuldata_loader: Any

    def __next__(self) -> Any:
        loader = self._statefuldata_loader()
        before = None if loader is None else copy.deepcopy(loader.state_dict())
        batch = super().__next__()  # type: ignore[misc]
        if before is not None:
            loader._states_before.append(before)
        return batch


def _wrapped_position_sampler(sampler: Any) -> PositionSampler | None:
    """Our sampler inside a framework's ``DistributedSampler`` wrapper (Lightning's
    ``DistributedSamplerWrapper`` keeps it as ``sampler.dataset._sampler``), if any."""
    if not isinstance(sampler, DistributedSampler):
        return None
    inner = getattr(getattr(sampler, "dataset", None), "_sampler", None)
    return inner if isinstance(inner, PositionSampler) else None


def _unwrap_distributed_sampler(loader: Any) -> None:
    """Shard our own sampler where a framework wrapped it in a ``DistributedSampler``.

    Lightning's DDP rebuilds a train loader whose sampler is not a ``DistributedSampler`` around a
    ``DistributedSamplerWrapper`` of it (``use_distributed_sampler=True``, the default). Over our
    sampler that would shard a second time (when it already shards by the process group) and lose
    the O(1) state. Our sampler shards itself instead, over the wrapper's rank and world size.
    """
    batch_sampler: Any = getattr(loader, "batch_sampler", None)
    wrapper: Any = getattr(batch_sampler, "sampler", None)
    ours = _wrapped_position_sampler(wrapper)
    if ours is None:
        return
    sharded = attrs.evolve(ours, rank=wrapper.rank, world_size=wrapper.num_replicas)
    batch_sampler.sampler = sharded
    # DataLoader refuses to set ``sampler`` after __init__; the batch sampler above is what it
    # iterates, and set_epoch and the epoch of a pass read this attribute.
    object.__setattr__(loader, "sampler", sharded)
    logger.info(
        "%s: the DistributedSampler wrapped around statefuldata's %s was replaced by the sampler "
        "itself, sharded over rank %d of %d (it shards and keeps its position by itself)",
        type(loader).__name__,
        type(ours).__name__,
        wrapper.rank,
        wrapper.num_replicas,
    )


class SeededStatefulDataLoader(StatefulDataLoader):  # type: ignore[misc]
    """A ``StatefulDataLoader`` that knows the epoch of each pass and tells its workers.

    The epoch of a new pass is, in this order: the one recorded in a loaded state (a resumed pass
    keeps its epoch); else the epoch its sampler resolves for the pass (for the samplers of this
    package, which follow ``sampler.set_epoch``); else the one given to :meth:`set_epoch`; else the
    previous pass's plus one. Before the pass starts it is published to the workers (fresh or
    persistent), which seed their RNGs from it, report it from :func:`statefuldata.current_epoch`
    and forward it to ``dataset.set_epoch``. It travels in the state under ``KEY_EPOCH``.

    With ``persistent_workers=True`` a pass that ran to its end is followed by the next one on the
    same workers; a pass abandoned midway is followed by fresh workers (its prefetched work must not
    leak into the next pass).

    When :attr:`snapshots_free` (a map-style dataset without state, one of our samplers), the state
    is exact as of the current step without worker snapshots, so ``snapshot_every_n_steps`` defaults
    to None (torchdata takes none after a pass start) unless one is passed.
    """

    KEY_EPOCH = "statefuldata_epoch"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        _unwrap_distributed_sampler(self)
        start_passes_at_iter(self)  # torchdata < 0.11: a pass starts at iter(), as from 0.11 on
        batch_with_islice(self)  # torchdata 0.11: a batch in one islice, not index by index
        if "snapshot_every_n_steps" not in kwargs and self.snapshots_free:
            self.snapshot_every_n_steps = None  # no per-step snapshot work in steady state
        self._epoch = -1
        self._restored_epoch: int | None = None
        self._requested: int | None = None
        self._states_before: collections.deque[dict[str, Any]] = collections.deque(maxlen=0)

    def remember_states(self, batches: int) -> None:
        """Keep the state from before each of the last ``batches`` batches handed out (0: stop).

        For a consumer that draws ahead of what it trains on (Lightning prefetches one batch of a
        loader without a length): :meth:`state_dict_before` then gives the state as of the batch
        it trained on last. Costs a copy of the state per batch while on.
        """
        if not isinstance(batches, int) or batches < 0:
            raise ValueError(f"'batches' must be an int >= 0 (got {batches!r})")
        self._states_before = collections.deque(self._states_before, maxlen=batches)
        iterator = self._iterator
        if batches and iterator is not None and not isinstance(iterator, _RetiredIterator):
            self._remembering(iterator)

    def state_dict_before(self, batches: int) -> dict[str, Any]:
        """The state as of ``batches`` batches before the last one handed out (0: the state now).

        Raises:
            ValueError: Fewer states are kept; call :meth:`remember_states` with at least
                ``batches`` before the batches are drawn.
        """
        if batches == 0:
            return self.state_dict()
        kept = self._states_before
        if not 0 < batches <= len(kept):
            raise ValueError(
                f"no state from {batches} batch(es) back: {len(kept)} kept of the current pass "
                f"(remember_states({kept.maxlen}) was called); call remember_states(n) with "
                f"n >= {batches} before those batches are drawn"
            )
        return copy.deepcopy(kept[-batches])

    def _remembering(self, iterator: Any) -> Any:
        """Give ``iterator`` the class that records states before each batch, in place."""
        _mix_in(iterator, _RememberingIterator, "Remembering")
        iterator._statefuldata_loader = weakref.ref(self)
        return iterator

    @property
    def epoch(self) -> int:
        """Pass index of the current (or last) iterator; -1 before the first."""
        return self._epoch

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch of the next pass (torch's convention); a pass in flight is not touched.

        Forwarded to the sampler when it has ``set_epoch``. A loaded state still resumes its own
        epoch (see :meth:`ShuffledSampler.set_epoch <statefuldata.ShuffledSampler.set_epoch>`).
        """
        check_epoch(epoch)
        set_sampler_epoch = getattr(self.sampler, "set_epoch", None)
        if callable(set_sampler_epoch):
            set_sampler_epoch(epoch)
        self._requested = epoch

    def _next_epoch(self) -> int:
        requested, self._requested = self._requested, None
        if self.next_iter_state is not None and self._restored_epoch is not None:
            epoch, self._restored_epoch = self._restored_epoch, None
            return epoch
        if isinstance(self.sampler, PositionSampler):
            return self.sampler.next_epoch
        return requested if requested is not None else self._epoch + 1

    def _start_pass(self, epoch: int) -> None:
        self._epoch = epoch
        if isinstance(self.worker_init_fn, _WorkerSeeder):
            self.worker_init_fn.epoch = epoch
        if isinstance(self.dataset, EpochView):
            self.dataset.begin_pass(epoch)

    def _shutdown_current(self) -> None:
        """Retire the current iterator: stop its workers and make it raise if used again.

        torchdata drops replaced iterators without stopping their workers (they would linger until
        collected), and an iterator kept by the caller would go on from its old position after
        ``load_state_dict``; a retired one raises instead.
        """
        iterator = self._iterator
        if iterator is None:
            return
        shutdown = getattr(iterator, "_shutdown_workers", None)
        if callable(shutdown):
            shutdown()
        _mix_in(iterator, _RetiredIterator, "Retired")

    def _reusable(self) -> bool:
        """Persistent workers whose last pass ran to its end can start the next pass.

        A pass has ended when it raised StopIteration, or when it yielded all ``len(self)`` batches
        (a scheduler that draws exactly a loader's length never asks for one more).
        """
        iterator = self._iterator
        if not (
            self.persistent_workers
            and self.num_workers > 0
            and iterator is not None
            and not isinstance(iterator, _RetiredIterator)
        ):
            return False
        if iterator._finished:
            return True
        try:
            return int(iterator._num_yielded) >= len(self)
        except TypeError:  # an iterable without a length
            return False

    def _next_pass(self) -> Any:
        if self._reusable():
            self._start_pass(self._next_epoch())
            iterator: Any = self._iterator  # type: ignore[has-type]
            iterator._reset(self)
        else:
            self._iterator = self._get_iterator()
        return self._iterator

    def __iter__(self) -> Any:
        # torchdata's own __iter__ resets persistent iterators without passing through
        # _get_iterator, so the epoch would never move; every pass start goes through _next_pass.
        state_dict_iterator: bool = self._initial_iter_for_state_dict  # type: ignore[has-type]
        if state_dict_iterator:  # made by state_dict() before the first iter(): it is this pass
            self._initial_iter_for_state_dict = False
        else:
            self._next_pass()
        iterator: Any = self._iterator
        if iterator._finished:  # restored from a state taken after its pass ended
            iterator = self._next_pass()
        self._states_before.clear()  # a new pass: no batch of it handed out yet
        if self._states_before.maxlen:
            self._remembering(iterator)
        return iterator

    def _get_iterator(self) -> Any:
        self._shutdown_current()
        self._start_pass(self._next_epoch())
        if self.num_workers == 0:
            return super()._get_iterator()
        with frozen_heap_for_fork():
            return close_at_exit(super()._get_iterator())

    @property
    def snapshots_free(self) -> bool:
        """Whether the state is current at every step whatever ``snapshot_every_n_steps`` is.

        True for a map-style dataset without ``state_dict`` under one of our samplers with
        ``batch_size``: its workers hold no state, so :meth:`state_dict` moves torchdata's worker
        snapshot to the current step on the sampler side, in O(1), and a restore loads no batch it
        does not yield. Worker snapshots are then pure overhead.
        """
        return (
            self.batch_size is not None
            and isinstance(self.sampler, PositionSampler)
            and not isinstance(self.dataset, IterableDataset)
            and not isinstance(self.dataset, Stateful)
        )

    def state_dict(self) -> dict[str, Any]:
        """torchdata's state, taken at the last batch consumed, with the epoch of the pass.

        With workers over a map-style dataset and one of our samplers, the state is always as of
        this step (see :func:`~statefuldata.torchdata_state.snapshot_now`): a restore then loads no
        batch it does not yield, whatever ``snapshot_every_n_steps`` is.
        """
        state = super().state_dict()
        if (
            self.num_workers > 0
            and self.batch_size is not None
            and isinstance(self.sampler, PositionSampler)
            and not isinstance(self.dataset, IterableDataset)
        ):
            state = snapshot_now(state, self._advance_sampler, self.batch_size)
        return {**state, self.KEY_EPOCH: self._epoch}

    def _advance_sampler(self, state: Any, samples: int | None) -> tuple[Any, int] | None:
        """Our sampler's state ``samples`` indices after ``state`` (None: at the end of its pass)
        and the indices moved; None when the pass ends before. O(1): positions, not indices."""
        if not isinstance(state, dict) or PositionSampler.KEY_WORLD_SIZE not in state:
            return None
        scratch = attrs.evolve(self.sampler)  # same configuration, none of the live iteration
        scratch.load_state_dict(state)  # validates the state (fingerprint, position)
        left = scratch.num_samples - scratch.position
        if samples is None:
            samples = left
        if samples > left:
            return None  # the pass ends before: leave it to torchdata's replay
        return advance_state(state, samples), samples

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state = dict(state_dict)
        epoch = state.pop(self.KEY_EPOCH, None)
        self._shutdown_current()
        super().load_state_dict(state)
        self._restored_epoch = None if epoch is None or not state else int(epoch)
