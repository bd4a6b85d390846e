"""``make_loader``: a torchdata ``StatefulDataLoader`` wired for exact, O(1) resumes."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch
from torchdata.stateful_dataloader import StatefulDataLoader

from statefuldata.persample import PER_SAMPLE_SEED_DEFAULT, per_sample_seeded
from statefuldata.protocols import StatefulSampler
from statefuldata.ranks import process_group_rank_and_world
from statefuldata.samplers import SequentialSampler, ShuffledSampler
from statefuldata.seeded_loader import SeededStatefulDataLoader
from statefuldata.seeded_loader import _RetiredIterator as _RetiredIterator
from statefuldata.seeded_loader import quiet_stateful_dataloader as quiet_stateful_dataloader
from statefuldata.seeding import derive_seed
from statefuldata.shuffle import ShuffleBuffer, check_shuffle_request
from statefuldata.validators import check_int
from statefuldata.views import epoch_aware
from statefuldata.workers import WORKER_IGNORED_SIGNALS as WORKER_IGNORED_SIGNALS
from statefuldata.workers import _SignalShield as _SignalShield
from statefuldata.workers import _WorkerSeeder, close_loader
from statefuldata.workers import frozen_heap_for_fork as frozen_heap_for_fork
from statefuldata.workers import ignore_signals_in_workers as ignore_signals_in_workers
from statefuldata.wrapping import checkpointable, is_map_style

__all__ = ["SeededStatefulDataLoader", "close_loader", "make_loader"]

logger = logging.getLogger(__name__)


def _check(name: str, value: Any, *, minimum: int, hint: str) -> None:
    if isinstance(value, np.integer):  # make_loader's integers are Python ints
        raise TypeError(f"'{name}' must be an int (got {value!r})")
    check_int(name, value, minimum=minimum, hint=hint)


def make_loader(
    dataset: Any,
    *,
    batch_size: int = 1,
    shuffle: bool = False,
    seed: int = 0,
    num_workers: int = 0,
    drop_last: bool = False,
    rank: int | None = None,
    world_size: int | None = None,
    per_sample_seed: bool = PER_SAMPLE_SEED_DEFAULT,
    shuffle_buffer_size: int | None = None,
    **dataloader_kwargs: Any,
) -> StatefulDataLoader:
    """Build a ``StatefulDataLoader`` whose state is exact at every batch and O(1) to restore.

    Map-style datasets get a :class:`ShuffledSampler` (``shuffle=True``) or :class:`SequentialSampler`,
    strided over ``rank``/``world_size`` (by default the torch.distributed process group's when one
    is initialised, else 0 and 1; values you pass win: pass ``rank=0, world_size=1`` where a
    framework shards batches itself, e.g. ``accelerate``'s ``prepare``); iterables go through
    :func:`checkpointable` (their own state, or the skip fallback). Workers are seeded from
    ``(seed, epoch, rank, worker_id)`` and the loader's generator from ``(seed, rank)``. A
    ``sampler=`` you pass is used as is (``shuffle`` must stay False).

    An iterable is shuffled with ``shuffle=True, shuffle_buffer_size=N``: a :class:`ShuffleBuffer`
    of N items, exactly resumable. ``per_sample_seed=True`` seeds the Python, numpy and torch global
    RNGs from the sample around each read (``derive_seed(seed, epoch, index)`` for map-style data),
    so augmentations drawn from them survive resumes and worker counts (see
    :mod:`statefuldata.persample`; off by default for its cost). Inside a worker,
    :func:`statefuldata.current_epoch` gives the epoch, e.g. for ``sample_rng(seed, epoch, index)``.

    Example:
        >>> loader = make_loader(list(range(10)), batch_size=4, shuffle=True, seed=1)
        >>> state = loader.state_dict()  # works before the first batch
    """
    _check("batch_size", batch_size, minimum=1, hint="use batch_size=1 or more")
    _check("seed", seed, minimum=0, hint="seeds are non-negative, e.g. seed=0")
    _check("num_workers", num_workers, minimum=0, hint="use 0 for no worker processes")
    group_rank, group_world = process_group_rank_and_world()
    rank = group_rank if rank is None else rank
    world_size = group_world if world_size is None else world_size
    _check("world_size", world_size, minimum=1, hint="use 1 without distributed training")
    _check("rank", rank, minimum=0, hint="ranks are numbered 0..world_size-1")
    if rank >= world_size:
        raise ValueError(
            f"'rank' must be < world_size (got rank={rank}, world_size={world_size}); "
            "ranks are numbered 0..world_size-1"
        )
    if "batch_sampler" in dataloader_kwargs:
        raise ValueError(
            "make_loader builds its own batching; got batch_sampler=... "
            "Pass sampler=... with batch_size instead, or build a StatefulDataLoader yourself"
        )
    sampler = dataloader_kwargs.pop("sampler", None)
    if sampler is not None and shuffle:
        raise ValueError(
            f"pass either shuffle=True or sampler=..., not both (got shuffle=True and sampler="
            f"{type(sampler).__name__}); make_loader shuffles with ShuffledSampler, so drop shuffle "
            "to use your own sampler"
        )
    data = checkpointable(dataset)
    map_style = is_map_style(data)
    check_shuffle_request(
        dataset, map_style=map_style, shuffle=shuffle, shuffle_buffer_size=shuffle_buffer_size
    )
    if not isinstance(per_sample_seed, bool):
        raise TypeError(f"'per_sample_seed' must be True or False (got {per_sample_seed!r})")
    if map_style:
        if sampler is None:
            if shuffle:
                sampler = ShuffledSampler(
                    len(data), seed=seed, rank=rank, world_size=world_size, drop_last=drop_last
                )
            else:
                sampler = SequentialSampler(
                    len(data), rank=rank, world_size=world_size, drop_last=drop_last
                )
        elif not isinstance(sampler, StatefulSampler):
            logger.warning(
                "sampler %s has no state_dict/load_state_dict: restores will replay it from the "
                "start of the epoch (cost grows with the position). Use ShuffledSampler or "
                "SequentialSampler, or implement the two methods.",
                type(sampler).__name__,
            )
    elif sampler is not None:
        raise ValueError(
            f"sampler applies to map-style datasets; {type(dataset).__name__} is iterable "
            "and orders its own items. Shuffle it with shuffle=True, shuffle_buffer_size=N instead"
        )
    if per_sample_seed:
        data = per_sample_seeded(data, seed=seed, rank=rank, map_style=map_style)
    if shuffle_buffer_size is not None:
        data = ShuffleBuffer(data, shuffle_buffer_size, seed=seed, rank=rank)
    seeder = _WorkerSeeder(
        seed=seed, rank=rank, user_fn=dataloader_kwargs.pop("worker_init_fn", None)
    )
    generator = dataloader_kwargs.pop("generator", None)
    if generator is None:
        generator = torch.Generator().manual_seed(derive_seed(seed, rank))
    return quiet_stateful_dataloader(
        epoch_aware(data, seed=seed, rank=rank, map_style=map_style),
        cls=SeededStatefulDataLoader,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        drop_last=drop_last,
        worker_init_fn=seeder,
        generator=generator,
        **dataloader_kwargs,
    )
