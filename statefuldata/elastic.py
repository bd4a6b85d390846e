"""Elastic resume: a multi-loader state loaded under another world size or worker count.

Each loader's *layout* is its world size (its sampler's, else the job's under torch.distributed,
else 1) and its ``num_workers``; the scheduler's fingerprint records both. When a loader's layout
changed since the state was taken:

* an *elastic* loader (its whole position is a :class:`~statefuldata.samplers.PositionSampler`
  state: a map-style loader built by :func:`~statefuldata.make_loader`, no dataset state of its own)
  is restored through its sampler alone. The sampler's position is global, so every rank goes on with
  the rest of the same global order (see :mod:`statefuldata.samplers`); torchdata's worker layout
  is rebuilt fresh. The scheduler's own position (schedule position, WEIGHTED choices, per-loader
  batch counts) is the same on every rank, so it carries over as is.
* any other loader (iterables, wrapped iterables, :class:`~statefuldata.SkipBatchesLoader`) keeps a
  position per rank or per worker that cannot be moved: loading raises
  :class:`~statefuldata.IncompatibleStateError` naming the saved and current layouts, unless
  ``restart_incompatible_sources=True``, which restarts those loaders' current pass (same epoch)
  and says so in a WARNING.

A changed layout keeps the schedule only if the global batch size (per-rank batch size x world
size) and the per-rank epoch lengths are unchanged; otherwise the fingerprint check refuses.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Sequence
from typing import Any, cast

import attrs
from torchdata.stateful_dataloader import StatefulDataLoader

from statefuldata.errors import IncompatibleStateError
from statefuldata.ranks import process_group_rank_and_world
from statefuldata.samplers import PositionSampler, advance_state
from statefuldata.seeded_loader import SeededStatefulDataLoader
from statefuldata.state import DataLoaderState
from statefuldata.torchdata_state import KEY_ITERATOR_FINISHED, KEY_STEPS_SINCE_SNAPSHOT

__all__ = [
    "KEY_WORLD_SIZES",
    "RESTART_OPTION",
    "Restore",
    "compare_fingerprints",
    "cursor_entry",
    "finish_restore",
    "is_elastic",
    "job_world_size",
    "plan_restore",
    "restart_pass",
    "restore_elastic",
    "world_size_of",
]

logger = logging.getLogger(__name__)

#: Fingerprint key: each loader's world size (the saved layout, next to ``num_workers``).
KEY_WORLD_SIZES = "world_sizes"
#: The option that restarts the current pass of loaders whose position cannot move.
RESTART_OPTION = "restart_incompatible_sources"
_LAYOUT_KEYS_ORDER = (KEY_WORLD_SIZES, "batch_sizes", "num_workers")
_LAYOUT_KEYS = frozenset(_LAYOUT_KEYS_ORDER)


def job_world_size() -> int:
    """The world size of the default process group, 1 without torch.distributed."""
    return process_group_rank_and_world()[1]


def world_size_of(loader: Any) -> int:
    """The world size a loader's position is relative to: its sampler's, else the job's."""
    sampler = getattr(loader, "sampler", None)
    if isinstance(sampler, PositionSampler):
        return sampler.world_size
    return job_world_size()


def is_elastic(loader: Any, entry: DataLoaderState) -> bool:
    """Whether ``entry`` (this loader's saved position) lives entirely in a global sampler state."""
    return (
        isinstance(getattr(loader, "sampler", None), PositionSampler)
        and isinstance(entry.sampler_state, dict)
        and PositionSampler.KEY_WORLD_SIZE in entry.sampler_state
        and entry.dataset_state is None
    )


def _global(batch: Any, world: Any) -> Any:
    return batch * world if isinstance(batch, int) and isinstance(world, int) else batch


def compare_fingerprints(
    saved: dict[str, Any], current: dict[str, Any]
) -> tuple[dict[str, Any], list[int]]:
    """What differs between two scheduler fingerprints, and which loaders changed layout.

    Under another world size, batch sizes are compared as global batch sizes (batch size x world
    size); world sizes and worker counts are not differences but layout changes. A saved fingerprint without world sizes
    (written before elastic resume) is taken to have the current ones.

    Returns:
        ``(differences, changed)``: ``{key: {"saved", "current"}}`` of what breaks the schedule,
        and the indices of loaders whose world size or ``num_workers`` changed.
    """
    diff = {
        key: {"saved": saved.get(key), "current": value}
        for key, value in current.items()
        if key not in _LAYOUT_KEYS and saved.get(key) != value
    }
    diff.update(
        {
            key: {"saved": saved.get(key), "current": None}
            for key in saved
            if key not in current and key not in _LAYOUT_KEYS
        }
    )
    worlds, batches, workers = (current[key] for key in _LAYOUT_KEYS_ORDER)
    found = [
        saved.get(key, worlds if key == KEY_WORLD_SIZES else None) for key in _LAYOUT_KEYS_ORDER
    ]
    if not all(isinstance(x, list) and len(x) == len(worlds) for x in found):
        diff["layout"] = {
            "saved": {key: saved.get(key) for key in _LAYOUT_KEYS_ORDER},
            "current": {key: current[key] for key in _LAYOUT_KEYS_ORDER},
        }
        return diff, []
    saved_worlds, saved_batches, saved_workers = cast("list[list[Any]]", found)
    if saved_worlds == worlds:
        if saved_batches != batches:
            diff["batch_sizes"] = {"saved": saved_batches, "current": batches}
    else:
        saved_global = [_global(b, w) for b, w in zip(saved_batches, saved_worlds)]
        now_global = [_global(b, w) for b, w in zip(batches, worlds)]
        if saved_global != now_global:
            diff["global_batch_sizes"] = {"saved": saved_global, "current": now_global}
    changed = [
        i
        for i in range(len(worlds))
        if saved_worlds[i] != worlds[i] or saved_workers[i] != workers[i]
    ]
    return diff, changed


class Restore(enum.Enum):
    """How one loader comes back from its saved entry."""

    EXACT = "exact"  # same layout: the loader's own torchdata state, as saved
    ELASTIC = "elastic"  # another layout, global sampler position: through the sampler alone
    RESTART = "restart"  # another layout, per-rank or per-worker position: its pass starts over


def _layout(fingerprint: dict[str, Any], index: int, default_world: int) -> str:
    worlds = fingerprint.get(KEY_WORLD_SIZES) or [default_world] * (index + 1)
    return f"world size {worlds[index]}, num_workers {fingerprint['num_workers'][index]}"


def plan_restore(
    phase: str,
    names: Sequence[str],
    loaders: Sequence[Any],
    entries: Sequence[DataLoaderState],
    saved: dict[str, Any],
    current: dict[str, Any],
    *,
    strict: bool,
    restart: bool,
) -> list[Restore]:
    """How each loader of a phase is restored from ``entries`` (saved under fingerprint ``saved``).

    Raises:
        IncompatibleStateError: ``strict`` and the configuration differs beyond the layout (names,
            lengths, global batch sizes, seeds, schedule config), both values printed; or a loader
            whose position cannot move changed layout and ``restart`` is off, naming each such
            loader with its saved and current layout and the option that restarts its pass.
    """
    diff, changed = compare_fingerprints(saved, current)
    if strict and diff:
        raise IncompatibleStateError(
            f"{phase} state was taken under another configuration: {diff}. Rebuild the "
            "pipeline with the saved configuration, or pass strict=False to load it anyway"
        )
    plan = [Restore.EXACT] * len(loaders)
    for i in changed:
        plan[i] = Restore.ELASTIC if is_elastic(loaders[i], entries[i]) else Restore.RESTART
    fixed = [i for i in changed if plan[i] is Restore.RESTART]
    if not fixed:
        return plan
    worlds = current[KEY_WORLD_SIZES]
    text = "; ".join(
        f"{names[i]!r}: saved {_layout(saved, i, worlds[i])}, current {_layout(current, i, worlds[i])}"
        for i in fixed
    )
    if not restart:
        raise IncompatibleStateError(
            f"cannot resume the {phase} loaders {[names[i] for i in fixed]} under another layout "
            f"({text}): their position is kept per rank or per worker (an iterable, a wrapped "
            "iterable or a skip-based loader), so it cannot move to other ranks or workers. "
            "Resume with the saved world size and num_workers; or pass "
            f"{RESTART_OPTION}=True (DataLoaderManager.load_state_dict, or "
            f"PreemptionConfig({RESTART_OPTION}=True) for GenericTrainer) to restart the current "
            "pass of those loaders (the samples of that pass they had handed out come again); "
            "map-style loaders built by make_loader resume exactly under any layout"
        )
    logger.warning(
        "Restarting the current pass of the %s loaders %s (%s=True): their position is kept per "
        "rank or per worker and the layout changed (%s). The samples of that pass they had handed "
        "out come again; every other loader resumes exactly",
        phase,
        [names[i] for i in fixed],
        RESTART_OPTION,
        text,
    )
    return plan


def cursor_entry(action: Restore, entry: DataLoaderState) -> DataLoaderState:
    """The entry a cursor loads for ``action``: as saved, or without the loader's own state."""
    if action is Restore.EXACT:
        return entry
    if action is Restore.ELASTIC:
        return attrs.evolve(entry, loader_state=None, sampler_state=None, dataset_state=None)
    return DataLoaderState(batch_idx=0, exhausted=entry.exhausted)


def finish_restore(
    action: Restore, loader: Any, entry: DataLoaderState, saved_batch_size: Any
) -> None:
    """After the cursor loaded :func:`cursor_entry`: put the position back the elastic way."""
    if action is Restore.ELASTIC:
        restore_elastic(loader, entry, saved_batch_size)
    elif action is Restore.RESTART:
        restart_pass(loader, entry)


def restore_elastic(loader: Any, entry: DataLoaderState, saved_batch_size: Any) -> None:
    """Restore a loader (see :func:`is_elastic`) from its sampler's global position alone.

    A state taken with workers holds the sampler as of torchdata's last snapshot; the batches
    handed out since (``_steps_since_snapshot``) are added, and a pass that ended stays ended.
    """
    state: dict[str, Any] = dict(entry.sampler_state or {})
    rest = entry.loader_state or {}
    if rest.get(KEY_ITERATOR_FINISHED):
        state = advance_state(state, 1 << 62)
    elif isinstance(saved_batch_size, int):
        steps = int(rest.get(KEY_STEPS_SINCE_SNAPSHOT) or 0)
        state = advance_state(state, steps * saved_batch_size)
    loader.load_state_dict({})  # forget torchdata's layout: the next iter() starts a fresh one
    loader.sampler.load_state_dict(state)


def restart_pass(loader: Any, entry: DataLoaderState) -> None:
    """Start the loader's current pass over (same epoch) instead of restoring its position."""
    rest = entry.loader_state or {}
    epoch = rest.get(SeededStatefulDataLoader.KEY_EPOCH)
    if isinstance(loader, StatefulDataLoader):
        loader.load_state_dict({})  # a fresh pass, whatever the loader held before
    set_epoch = getattr(loader, "set_epoch", None)
    if isinstance(epoch, int) and epoch >= 0 and callable(set_epoch):
        set_epoch(epoch)
