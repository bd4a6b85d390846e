"""accelerate: exact resumes through ``Accelerator.save_state``/``load_state``.

``Accelerator.prepare`` rebuilds a DataLoader from its parts (dataset, batch sampler, worker init
function, ...), so our sampler and dataset view travel into accelerate's ``DataLoaderShard``:

* With ``DataLoaderConfiguration(use_stateful_dataloader=True)`` accelerate stores the loader's
  state in ``save_state`` itself, taken at the batch you last received: resumes are exact. Call
  ``loader.set_epoch(epoch)`` at the start of each epoch (accelerate's own epoch counter restarts at 0
  after ``load_state``).
* By default accelerate stores no data position at all. :class:`ResumableLoader` is the adapter:
  it counts the batches you consume, is registered with ``accelerator.register_for_checkpointing``,
  and on ``load_state`` puts our sampler back at that position (O(1), no batch is loaded twice). It
  also keeps accelerate's epoch counter, our sampler and the workers' epoch in step, so it serves the
  stateful configuration as well.
* Under several processes, build the loader with ``make_loader(..., rank=0, world_size=1)``
  (accelerate shards the batches) and use :class:`ResumableLoader` in either configuration:
  accelerate's batch sampler shard has no state, so a stateful state saved at the last batch of an
  epoch would make torchdata replay it on a throwaway pass and resume one epoch too far.
  Where an epoch does not split evenly, accelerate (``even_batches=True``) fills its short tail with
  the pass's first batches; a pass restored mid-epoch hands them to accelerate again first (one
  batch per process is loaded and dropped), so the tail is the uninterrupted one.

Example::

    accelerator = Accelerator()
    loader = ResumableLoader(accelerator.prepare(make_loader(ds, batch_size=32, shuffle=True)))
    accelerator.register_for_checkpointing(loader)
    accelerator.load_state("ckpt")  # when resuming
    for epoch in range(loader.next_epoch, num_epochs):
        for batch in loader:
            ...
            accelerator.save_state("ckpt")  # whenever you like: the position is the batch you hold

State keys: ``epoch`` (of the pass the next batch comes from), ``batches`` (consumed in it; after a
pass's last batch the state points at the start of the next pass). Resume guarantee: the remaining
batches equal the uninterrupted ones, at any batch and across epochs.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, ClassVar

from statefuldata.errors import IncompatibleStateError
from statefuldata.samplers import PositionSampler
from statefuldata.torchdata_state import KEY_ITERATOR_FINISHED
from statefuldata.validators import check_epoch
from statefuldata.views import EpochView

__all__ = ["ResumableLoader"]


def _our_sampler(loader: Any) -> PositionSampler | None:
    """Our sampler inside a prepared loader (accelerate nests batch samplers), if any."""
    node = getattr(loader, "batch_sampler", None)
    for _ in range(4):
        if node is None:
            return None
        sampler = getattr(node, "sampler", None)
        if isinstance(sampler, PositionSampler):
            return sampler
        node = getattr(node, "batch_sampler", None)
    return None


def _check_sharded_once(loader: Any) -> None:
    """Refuse a loader sharded by rank twice: by our sampler and by accelerate's batch sampler."""
    sampler = _our_sampler(loader)
    node, processes = getattr(loader, "batch_sampler", None), 1
    for _ in range(4):
        if node is None:
            break
        processes = max(processes, int(getattr(node, "num_processes", 1) or 1))
        node = getattr(node, "batch_sampler", None)
    if sampler is not None and sampler.world_size > 1 and processes > 1:
        raise ValueError(
            f"this loader is sharded twice: its sampler already takes rank {sampler.rank} of "
            f"world_size={sampler.world_size} (make_loader shards by the process group), and "
            f"accelerate's prepare() splits its batches over {processes} processes again, so each "
            "process would see 1/world_size^2 of the data; build the loader with "
            "make_loader(..., rank=0, world_size=1) when accelerate prepares it"
        )


def _shard_of(loader: Any) -> Any:
    """accelerate's ``BatchSamplerShard`` inside a prepared loader, if any."""
    node = getattr(loader, "batch_sampler", None)
    for _ in range(4):
        if node is None or hasattr(node, "even_batches"):
            return node
        node = getattr(node, "batch_sampler", None)
    return None


class _HeadFirst:
    """One pass of a batch sampler that first hands out the epoch's head batches again.

    accelerate's ``BatchSamplerShard`` (``even_batches=True``, the default) fills the short tail of
    an epoch with the first batches of the pass. A pass restored mid-epoch in O(1) would fill it
    with the batches it resumed at; given the head first, the shard fills it as the uninterrupted
    pass did. Each process is handed one head batch (its slice of one, with ``split_batches``),
    which :class:`ResumableLoader` drops. After the pass the shard iterates its own batch sampler.
    """

    def __init__(self, shard: Any, head: list[list[int]]) -> None:
        self.shard, self.head, self.inner = shard, head, shard.batch_sampler

    def __len__(self) -> int:
        return len(self.inner)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or "inner" not in self.__dict__:
            raise AttributeError(name)
        return getattr(self.inner, name)

    def __iter__(self) -> Iterator[list[int]]:
        self.shard.batch_sampler = self.inner  # this pass only
        yield from self.head
        yield from self.inner


def _give_head_first(loader: Any, sampler: PositionSampler, position: int) -> bool:
    """Give the shard the epoch's head when accelerate will wrap around to it; whether it did."""
    shard = _shard_of(loader)
    if isinstance(getattr(shard, "batch_sampler", None), _HeadFirst):
        shard.batch_sampler = shard.batch_sampler.inner  # from a resumed pass never drawn from
    processes = int(getattr(shard, "num_processes", 1) or 1)
    batch_size = getattr(shard, "batch_size", None)
    if (
        shard is None
        or processes == 1
        or not shard.even_batches
        or shard.drop_last
        or not batch_size
        or sampler.world_size != 1
    ):
        return False
    count = 1 if shard.split_batches else processes  # the batches accelerate wraps around to
    size = count * batch_size
    if not 0 < position < sampler.num_samples or sampler.num_samples % size == 0:
        return False  # a pass from its start, or an epoch with no short tail
    if sampler.num_samples < size:
        return False  # fewer samples than one round of batches: the tail is the epoch itself
    indices = sampler.indices_at(0, size)
    head = [indices[i : i + batch_size] for i in range(0, size, batch_size)]
    shard.batch_sampler = _HeadFirst(shard, head)
    return True


def _start_fresh(loader: Any) -> None:
    """Drop a stateful loader's pending state taken at the end of its pass: the resumed pass is
    then a new one, of the epoch ``set_epoch`` gives.

    Under several processes accelerate's batch sampler shard has no state, so torchdata restores
    such a state by replaying the batch count on a throwaway pass (which starts our sampler's epoch,
    with its workers' prefetch) before it begins the next pass: one epoch too far.
    """
    base = getattr(loader, "base_dataloader", loader)
    pending = getattr(base, "next_iter_state", None)
    if isinstance(pending, dict) and pending.get(KEY_ITERATOR_FINISHED):
        base.next_iter_state = None


class ResumableLoader:
    """A prepared accelerate loader whose position ``save_state``/``load_state`` carry exactly."""

    KEY_EPOCH: ClassVar[str] = "epoch"
    KEY_BATCHES: ClassVar[str] = "batches"

    def __init__(self, loader: Any) -> None:
        _check_sharded_once(loader)
        self.loader = loader
        self._epoch = -1  # epoch of the current (or last) pass
        self._batches = 0  # batches consumed in it
        self._resume: tuple[int, int] | None = None
        self._requested: int | None = None

    def __len__(self) -> int:
        return len(self.loader)

    def __getattr__(self, name: str) -> Any:
        loader = self.__dict__.get("loader")
        if loader is None or name.startswith("__"):
            raise AttributeError(name)
        return getattr(loader, name)

    @property
    def epoch(self) -> int:
        """Epoch of the current (or last) pass; -1 before the first."""
        return self._epoch

    @property
    def next_epoch(self) -> int:
        """Epoch the next ``iter()`` produces: the resumed one after ``load_state``."""
        if self._resume is not None:
            return self._resume[0]
        return self._epoch + 1 if self._requested is None else self._requested

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch of the next pass (a resumed pass keeps its own)."""
        check_epoch(epoch)
        self._requested = epoch

    def __iter__(self) -> Iterator[Any]:
        epoch = self.next_epoch
        resume, self._resume, self._requested = self._resume, None, None
        if resume is not None and resume[1] == 0:
            _start_fresh(self.loader)
        self._epoch, self._batches = epoch, 0 if resume is None else resume[1]
        self.loader.set_epoch(epoch)  # accelerate's counter and our sampler's next pass
        worker_init_fn: Any = getattr(self.loader, "worker_init_fn", None)
        if hasattr(worker_init_fn, "epoch"):  # statefuldata's worker seeder
            worker_init_fn.epoch = epoch
        dataset = getattr(self.loader, "dataset", None)
        if isinstance(dataset, EpochView):
            dataset.begin_pass(epoch)
        head = False  # a pass restored mid-epoch through our sampler (the default configuration)
        sampler = _our_sampler(self.loader)
        if sampler is not None and not getattr(self.loader, "use_stateful_dataloader", False):
            position = sampler.position if resume is not None else 0
            head = _give_head_first(self.loader, sampler, position)
        return self._count(iter(self.loader), drop=int(head))

    def _count(self, batches: Iterator[Any], *, drop: int = 0) -> Iterator[Any]:
        for batch in batches:
            if drop:  # this process's head batch (see _HeadFirst)
                drop -= 1
                continue
            self._batches += 1
            yield batch

    def state_dict(self) -> dict[str, int]:
        """Where the next batch comes from; after a pass's last batch that is the next pass.

        (accelerate marks its own stateful state "finished" at the last batch, as it looks ahead.)
        """
        if self._epoch >= 0 and getattr(self.loader, "end_of_dataloader", False):
            return {self.KEY_EPOCH: self._epoch + 1, self.KEY_BATCHES: 0}
        return {self.KEY_EPOCH: max(self._epoch, 0), self.KEY_BATCHES: self._batches}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume the saved pass at the saved batch (takes effect at the next ``iter()``)."""
        expected = {self.KEY_EPOCH, self.KEY_BATCHES}
        if not isinstance(state, dict) or set(state) != expected:
            got = sorted(state) if isinstance(state, dict) else type(state).__name__
            raise IncompatibleStateError(
                f"ResumableLoader state must have keys {sorted(expected)} (got {got}); pass the "
                "dict returned by state_dict()"
            )
        epoch, batches = int(state[self.KEY_EPOCH]), int(state[self.KEY_BATCHES])
        self._resume = (epoch, batches)
        if getattr(self.loader, "use_stateful_dataloader", False):
            return  # accelerate restores the loader's own state (sampler included) itself
        sampler = _our_sampler(self.loader)
        if sampler is None:
            raise IncompatibleStateError(
                "ResumableLoader restores a default (not stateful) prepared loader through its "
                f"sampler, and this one has none of statefuldata's (dataset "
                f"{type(getattr(self.loader, 'dataset', None)).__name__}). Build the loader with "
                "statefuldata.make_loader over a map-style dataset, or prepare it with "
                "DataLoaderConfiguration(use_stateful_dataloader=True)"
            )
        batch_size = self.loader.total_batch_size
        # A sampler state's position is global: the samples the whole group has handed out.
        position = min(batches * batch_size, sampler.num_samples * sampler.world_size)
        sampler.load_state_dict({**sampler.state_dict(), "epoch": epoch, "position": position})
