"""Inside Lightning 2.x Trainer.fit: every epoch sees each sample once; checkpointed resumes are exact,
on one process and under DDP on two (torchrun, gloo, Lightning's defaults), resumed in fresh ones."""

from __future__ import annotations

import contextlib
import functools
import logging
import tempfile
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch

L = pytest.importorskip(
    "lightning.pytorch", reason="Lightning is an optional test dependency (extra 'frameworks')"
)

from lightning.pytorch.callbacks import ModelCheckpoint  # noqa: E402

from statefuldata import DataLoaderManager, make_loader  # noqa: E402
from statefuldata.integrations.lightning import ExactResume  # noqa: E402
from tests.data import Ids  # noqa: E402
from tests.frameworks import lightning_ddp_run, torchrun  # noqa: E402

SAMPLES, BATCH, EPOCHS = 24, 4, 2
STEPS = SAMPLES // BATCH  # per epoch

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning")


class Stop(Exception):
    """Raised after a checkpoint was written, like a job that gets killed."""


class Model(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(1, 1)
        self.seen: list[list[int]] = []

    def training_step(self, batch, batch_idx):
        if isinstance(batch, (tuple, list)):  # a manager phase yields (loader_idx, name, batch)
            batch = batch[2]
        if isinstance(batch, dict):  # a Hugging Face dataset's rows
            batch = batch["id"]
        self.seen.append(batch.tolist())
        x = batch.float().unsqueeze(1)
        return torch.nn.functional.mse_loss(self.layer(x), x)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=1e-4)


class StopAfter(L.Callback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, *args) -> None:
        if trainer.global_step == self.step:
            raise Stop


def _loader(num_workers: int):
    return make_loader(
        Ids(SAMPLES), batch_size=BATCH, shuffle=True, seed=3, num_workers=num_workers
    )


class Data(L.LightningDataModule):
    def __init__(self, num_workers: int) -> None:
        super().__init__()
        self.num_workers = num_workers

    def train_dataloader(self):
        return _loader(self.num_workers)


def _fit(kind: str, num_workers: int, root, callbacks=(), ckpt_path=None) -> list[list[int]]:
    model = Model()
    checkpointing = any(isinstance(c, ModelCheckpoint) for c in callbacks)
    trainer = L.Trainer(
        max_epochs=EPOCHS,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
        devices=1,
        num_sanity_val_steps=0,
        default_root_dir=root,
        enable_checkpointing=checkpointing,
        callbacks=list(callbacks),
    )
    manager: Any = contextlib.nullcontext()
    if kind == "datamodule":
        data = {"datamodule": Data(num_workers)}
    elif kind == "stream":  # a Hugging Face iterable: no length, so Lightning draws one ahead
        datasets = pytest.importorskip("datasets", reason="datasets is an optional test dependency")
        rows = datasets.Dataset.from_dict({"id": list(range(SAMPLES))}).with_format("torch")
        stream = rows.to_iterable_dataset(num_shards=4)
        data = {"train_dataloaders": make_loader(stream, batch_size=BATCH, num_workers=num_workers)}
    elif kind == "manager":
        manager = DataLoaderManager([_loader(num_workers)])
        data = {"train_dataloaders": manager.as_loader()}
    else:
        data = {"train_dataloaders": _loader(num_workers)}
    # Lightning stops the workers of the DataLoaders it is given; those behind a manager's pass
    # stop when the manager's with block ends.
    with manager, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with contextlib.suppress(Stop):
            trainer.fit(model, ckpt_path=ckpt_path, **data)
    return model.seen


@functools.cache
def _reference(kind: str, num_workers: int) -> list[list[int]]:
    with tempfile.TemporaryDirectory() as root:
        return _fit(kind, num_workers, root)


@pytest.fixture(autouse=True)
def _quiet():
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)


KINDS = ["loader", "manager", "datamodule", "stream"]
WORKERS = [0, pytest.param(2, marks=pytest.mark.slow)]


@pytest.mark.parametrize("num_workers", WORKERS)
@pytest.mark.parametrize("kind", KINDS)
def test_every_uninterrupted_epoch_sees_each_sample_once(kind, num_workers, tmp_path) -> None:
    seen = _reference(kind, num_workers)
    assert len(seen) == EPOCHS * STEPS
    for epoch in range(EPOCHS):
        ids = [i for batch in seen[epoch * STEPS : (epoch + 1) * STEPS] for i in batch]
        assert sorted(ids) == list(range(SAMPLES))
    if kind != "stream":  # the stream is not shuffled (its shuffle buffer does not resume)
        assert seen[:STEPS] != seen[STEPS:]  # a fresh order each epoch


# 3: mid-epoch 0 (the resume crosses the epoch boundary); 8: mid-epoch 1; 6: the last batch of
# epoch 0, where Lightning needs ExactResume (it resumes into epoch 1 without a new iter()).
@pytest.mark.parametrize("step", [3, 8, 6])
@pytest.mark.parametrize("num_workers", WORKERS)
@pytest.mark.parametrize("kind", KINDS)
def test_checkpointed_resume_equals_the_uninterrupted_run(kind, num_workers, step, tmp_path):
    reference = _reference(kind, num_workers)
    checkpoint = ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=step, save_top_k=-1)
    first = _fit(kind, num_workers, tmp_path, [checkpoint, StopAfter(step + 2), ExactResume()])
    path = tmp_path / f"epoch={(step - 1) // STEPS}-step={step}.ckpt"
    assert path.exists(), sorted(p.name for p in tmp_path.iterdir())
    resumed = _fit(kind, num_workers, tmp_path / "resumed", ckpt_path=str(path))
    assert first[:step] + resumed == reference
    assert len(resumed) == EPOCHS * STEPS - step


@pytest.mark.parametrize("kind", ["loader", "manager"])
def test_epoch_end_checkpoint_without_exact_resume(kind, tmp_path) -> None:
    """Why ExactResume exists: Lightning resumes into epoch 1 without a new iter() (torchdata's own
    StatefulDataLoader loses that epoch too); our sampler alone saves it when there are no workers."""
    checkpoint = ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=STEPS, save_top_k=-1)
    _fit(kind, 0, tmp_path, [checkpoint, StopAfter(STEPS + 1)])
    resumed = _fit(kind, 0, tmp_path / "resumed", ckpt_path=str(tmp_path / "epoch=0-step=6.ckpt"))
    if kind == "loader":
        assert len(resumed) == STEPS  # the sampler follows Lightning's set_epoch(1) (no workers)
    else:
        assert resumed == []


def test_lightning_s_distributed_sampler_is_replaced_by_ours_sharded_the_same_way() -> None:
    # What Lightning's DDP does to a train loader whose sampler is not a DistributedSampler
    # (use_distributed_sampler=True, the default): rebuild it around a DistributedSamplerWrapper.
    from lightning.fabric.utilities.data import _replace_dunder_methods
    from lightning.fabric.utilities.distributed import DistributedSamplerWrapper
    from lightning.pytorch.utilities.data import _update_dataloader

    with _replace_dunder_methods(torch.utils.data.DataLoader, "dataset"):
        loader = make_loader(Ids(SAMPLES), batch_size=BATCH, shuffle=True, seed=3)
    order = [i for batch in loader for i in batch.tolist()]
    for rank in range(2):
        wrapper = DistributedSamplerWrapper(loader.sampler, num_replicas=2, rank=rank, seed=0)
        rebuilt = _update_dataloader(loader, wrapper)
        assert (rebuilt.sampler.rank, rebuilt.sampler.world_size) == (rank, 2)
        ids = [i for batch in rebuilt for i in batch.tolist()]
        assert ids == order[rank::2]  # our strided shard of the same global order
        again = _update_dataloader(loader, wrapper)
        it = iter(again)
        next(it)
        state = again.state_dict()
        resumed = _update_dataloader(loader, wrapper)
        resumed.load_state_dict(state)
        assert [i for batch in resumed for i in batch.tolist()] == ids[BATCH:]


def _ranks(folder: Path) -> list[dict]:
    return torchrun.ranks(folder, lightning_ddp_run.PROCESSES)


@pytest.fixture(scope="module")
def ddp(tmp_path_factory) -> Path:
    """Every fit of lightning_ddp_run on two processes (strategy="ddp", Lightning's defaults): the
    first parts, then the resumes in fresh processes (a second torchrun launch)."""
    root = tmp_path_factory.mktemp("lightning-ddp")
    torchrun.launch(
        "tests.frameworks.lightning_ddp_run", lightning_ddp_run.PROCESSES, str(root), "first"
    )
    torchrun.launch(
        "tests.frameworks.lightning_ddp_run", lightning_ddp_run.PROCESSES, str(root), "resumed"
    )
    return root


@pytest.mark.slow
def test_ddp_deals_each_epoch_out_once(ddp) -> None:
    ranks = _ranks(ddp / "map" / "reference")
    steps = lightning_ddp_run.STEPS
    assert [len(r["seen"]) for r in ranks] == [lightning_ddp_run.EPOCHS * steps] * 2
    for epoch in range(lightning_ddp_run.EPOCHS):
        dealt = sorted(
            i
            for r in ranks
            for batch in r["seen"][epoch * steps : (epoch + 1) * steps]
            for i in batch
        )
        assert dealt == list(range(lightning_ddp_run.SAMPLES))  # sharded once, not twice
    assert ranks[0]["seen"][:steps] != ranks[0]["seen"][steps:]
    for mine, theirs in zip(ranks[0]["parameters"], ranks[1]["parameters"], strict=True):
        assert torch.equal(mine, theirs)


@pytest.mark.slow
def test_ddp_streams_each_rank_its_own_records(ddp) -> None:
    ranks = _ranks(ddp / "stream" / "reference")
    expected = [list(range(24)), [i for i in range(100, 132) if i % 4 != 3]]
    for rank, records in enumerate(expected):
        seen = ranks[rank]["seen"]
        assert len(seen) == lightning_ddp_run.EPOCHS * lightning_ddp_run.STEPS
        for epoch in range(lightning_ddp_run.EPOCHS):
            part = seen[epoch * lightning_ddp_run.STEPS : (epoch + 1) * lightning_ddp_run.STEPS]
            assert sorted(i for batch in part for i in batch) == records


@pytest.mark.slow
@pytest.mark.parametrize("stop", lightning_ddp_run.STOPS)
@pytest.mark.parametrize("kind", lightning_ddp_run.KINDS)
def test_ddp_resumed_in_fresh_processes_equals_the_uninterrupted_run(ddp, kind, stop) -> None:
    total = lightning_ddp_run.EPOCHS * lightning_ddp_run.STEPS
    torchrun.check_resumed(ddp / kind, stop, total, lightning_ddp_run.PROCESSES)
