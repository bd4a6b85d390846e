"""Lightning: our loaders resume exactly through ``Trainer.fit(ckpt_path=...)``; one callback for epoch ends.

Lightning 2.x stores the state of every stateful train loader in its checkpoints by itself (the fit
loop's ``combined_loader`` entry) and loads it back before the first ``iter()``, so loaders from
:func:`statefuldata.make_loader`, ``DataLoaderManager.as_loader()`` and loaders returned by a
``LightningDataModule`` resume a mid-epoch checkpoint exactly with no adapter.

Under DDP Lightning rebuilds a train loader around a ``DistributedSamplerWrapper`` of its sampler
(``use_distributed_sampler=True``, the default). Our loaders unwrap it and shard their own sampler
over the wrapper's rank and world size instead, so an epoch is dealt out once and the state stays
O(1). Lightning writes rank 0's loader state, and every rank resumes from it: a sampler's position
is global.

One case needs :class:`ExactResume`: a checkpoint written at the last batch of an epoch (an
``every_n_train_steps`` that divides the epoch, or the default end-of-epoch checkpoint). Lightning
then resumes into the next epoch without calling ``iter()`` again, so it would draw from the resumed,
already finished pass and train an empty epoch (torchdata's own loader has the same problem). The
callback marks such a saved state "pass finished", so the resumed loader starts the next pass.

Example::

    trainer = L.Trainer(callbacks=[ModelCheckpoint(every_n_train_steps=100), ExactResume()])
    trainer.fit(model, train_dataloaders=make_loader(ds, batch_size=32, shuffle=True))
"""

from __future__ import annotations

from typing import Any

try:
    from lightning.pytorch import Callback
except ImportError:  # the standalone package
    from pytorch_lightning import Callback  # type: ignore[no-redef,assignment,unused-ignore]

from statefuldata.manager import PhaseLoader

__all__ = ["ExactResume", "mark_pass_finished"]

_TORCHDATA_FINISHED = "_iterator_finished"


def mark_pass_finished(state: dict[str, Any]) -> None:
    """Mark a loader state taken at the last batch of its pass so that a resume starts the next one.

    Understands ``StatefulDataLoader`` states (ours and torchdata's) and ``PhaseLoader`` states.
    """
    if _TORCHDATA_FINISHED in state:
        state[_TORCHDATA_FINISHED] = True
    elif "train_iterator_state" in state:
        state[PhaseLoader.KEY_FINISHED] = True


class ExactResume(Callback):
    """Makes checkpoints taken at the last batch of an epoch resume into a full next epoch."""

    def on_save_checkpoint(self, trainer: Any, pl_module: Any, checkpoint: dict[str, Any]) -> None:
        if not trainer.is_last_batch:
            return
        fit_loop = checkpoint.get("loops", {}).get("fit_loop", {})
        for state in fit_loop.get("state_dict", {}).get("combined_loader", []):
            if isinstance(state, dict):
                mark_pass_finished(state)
