"""Lightning: our loaders resume exactly through ``Trainer.fit(ckpt_path=...)``; one callback for the rest.

Lightning 2.x stores the state of every stateful train loader in its checkpoints by itself (the fit
loop's ``combined_loader`` entry) and loads it back before the first ``iter()``, so loaders from
:func:`statefuldata.make_loader`, ``DataLoaderManager.as_loader()`` and loaders returned by a
``LightningDataModule`` resume a mid-epoch checkpoint exactly with no adapter.

Under DDP Lightning rebuilds a train loader around a ``DistributedSamplerWrapper`` of its sampler
(``use_distributed_sampler=True``, the default). Our loaders unwrap it and shard their own sampler
over the wrapper's rank and world size instead, so an epoch is dealt out once and the state stays
O(1). Lightning writes rank 0's loader state, and every rank resumes from it: a sampler's position
is global, so that is exact for map-style data. A source whose position is per rank (an iterable
sharded by rank, a filtering stream) needs :class:`ExactResume`, which keeps every rank's states.

:class:`ExactResume` also covers two more cases:

* A loader without a length (over a Hugging Face ``IterableDataset``, say): Lightning draws one
  batch ahead of it to know which batch is the last, so the state it saves is one batch past the
  last one trained on, and a resume would skip that batch. The callback has our loaders remember
  their recent states and saves the one as of the batch trained on.
* A checkpoint written at the last batch of an epoch (an ``every_n_train_steps`` that divides the
  epoch, or the default end-of-epoch checkpoint). Lightning then resumes into the next epoch without
  calling ``iter()`` again, so it would draw from the resumed, already finished pass and train an
  empty epoch (torchdata's own loader has the same problem). The callback marks such a saved state
  "pass finished", so the resumed loader starts the next pass.

Example::

    trainer = L.Trainer(callbacks=[ModelCheckpoint(every_n_train_steps=100), ExactResume()])
    trainer.fit(model, train_dataloaders=make_loader(ds, batch_size=32, shuffle=True))
"""

from __future__ import annotations

import logging
from typing import Any

import torch.distributed as dist

try:
    from lightning.fabric.utilities.types import _Stateful
    from lightning.pytorch import Callback
except ImportError:  # the standalone package
    from lightning_fabric.utilities.types import (  # type: ignore[no-redef,unused-ignore]
        _Stateful,
    )
    from pytorch_lightning import Callback  # type: ignore[no-redef,assignment,unused-ignore]

from statefuldata.manager import PhaseLoader
from statefuldata.seeded_loader import SeededStatefulDataLoader

__all__ = ["ExactResume", "mark_pass_finished"]

_TORCHDATA_FINISHED = "_iterator_finished"
_COMBINED_LOADER = "combined_loader"
logger = logging.getLogger(__name__)


def mark_pass_finished(state: dict[str, Any]) -> None:
    """Mark a loader state taken at the last batch of its pass so that a resume starts the next one.

    Understands ``StatefulDataLoader`` states (ours and torchdata's) and ``PhaseLoader`` states.
    """
    if _TORCHDATA_FINISHED in state:
        state[_TORCHDATA_FINISHED] = True
    elif "train_iterator_state" in state:
        state[PhaseLoader.KEY_FINISHED] = True


def _loader_states(checkpoint: dict[str, Any]) -> dict[str, Any] | None:
    """The fit loop's state dict in a Lightning checkpoint, when it holds loader states."""
    fit_loop = checkpoint.get("loops", {}).get("fit_loop", {})
    state = fit_loop.get("state_dict", {})
    return state if isinstance(state.get(_COMBINED_LOADER), list) else None


def _fetcher(trainer: Any) -> Any:
    """The fit loop's data fetcher (it holds the batches drawn ahead)."""
    return getattr(trainer.fit_loop, "_data_fetcher", None)


def _stateful_train_loaders(trainer: Any) -> list[Any]:
    """The train loaders whose states the checkpoint's ``combined_loader`` lists, in its order."""
    combined = getattr(trainer.fit_loop, "_combined_loader", None)
    flattened = getattr(combined, "flattened", [])
    return [loader for loader in flattened if isinstance(loader, _Stateful)]


def _sized(loader: Any) -> bool:
    try:
        len(loader)
    except TypeError:
        return False
    return True


class ExactResume(Callback):
    """Exact resumes where Lightning alone is not: loaders without a length (it draws one batch
    ahead), checkpoints at the last batch of an epoch, and per-rank sources under several processes.

    Lightning writes rank 0's checkpoint, so every rank would resume from rank 0's loader states.
    That is exact for map-style data under our samplers (their position is global) but not for
    sources whose position is per rank (an iterable dataset sharded by rank, a filtered stream):
    the callback gathers every rank's loader states into the checkpoint
    (``statefuldata_loader_states_by_rank``) and gives each rank its own back on resume, at the same
    world size. Gathering is a collective: call ``Trainer.save_checkpoint`` on every rank, as
    Lightning asks (its ``ModelCheckpoint`` does).
    """

    KEY_RANK_STATES = "statefuldata_loader_states_by_rank"

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        self._remember_states(trainer)

    def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        self._remember_states(trainer)  # loaders Lightning reloaded for this epoch, too

    def _remember_states(self, trainer: Any) -> None:
        lookahead = int(getattr(_fetcher(trainer), "prefetch_batches", 0) or 0)
        for loader in _stateful_train_loaders(trainer):
            if isinstance(loader, SeededStatefulDataLoader) and not _sized(loader):
                loader.remember_states(lookahead)

    def on_save_checkpoint(self, trainer: Any, pl_module: Any, checkpoint: dict[str, Any]) -> None:
        state = _loader_states(checkpoint)
        if state is None:
            return
        # Lightning draws a loader without a length ahead, to know the last batch; its state is
        # then that of batches not trained on yet. Ours give the state of the last one trained on.
        ahead = len(getattr(_fetcher(trainer), "batches", ()) or ())
        loaders = _stateful_train_loaders(trainer)
        if ahead and len(loaders) == len(state[_COMBINED_LOADER]):
            for index, loader in enumerate(loaders):
                if isinstance(loader, SeededStatefulDataLoader) and not _sized(loader):
                    try:
                        state[_COMBINED_LOADER][index] = loader.state_dict_before(ahead)
                    except ValueError as exc:
                        logger.warning(
                            "ExactResume: a resume from this checkpoint will skip %d batch(es) of "
                            "train loader %d, which Lightning drew ahead: %s",
                            ahead,
                            index,
                            exc,
                        )
        if trainer.is_last_batch:
            for loader_state in state[_COMBINED_LOADER]:
                if isinstance(loader_state, dict):
                    mark_pass_finished(loader_state)
        world_size = int(trainer.world_size)
        if world_size > 1 and dist.is_available() and dist.is_initialized():
            by_rank: list[Any] = [None] * world_size
            dist.all_gather_object(by_rank, state[_COMBINED_LOADER])
            checkpoint[self.KEY_RANK_STATES] = by_rank

    def on_load_checkpoint(self, trainer: Any, pl_module: Any, checkpoint: dict[str, Any]) -> None:
        by_rank = checkpoint.get(self.KEY_RANK_STATES)
        state = _loader_states(checkpoint)
        if by_rank is None or state is None:
            return
        if len(by_rank) != int(trainer.world_size):
            logger.warning(
                "ExactResume: the checkpoint holds the loader states of %d ranks and this run has "
                "%d; every rank resumes from rank 0's (exact for map-style data under "
                "statefuldata's samplers, whose position is global)",
                len(by_rank),
                trainer.world_size,
            )
            return
        state[_COMBINED_LOADER] = by_rank[int(trainer.global_rank)]
