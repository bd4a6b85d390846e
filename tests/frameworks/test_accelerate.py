"""Through accelerate's Accelerator.prepare: every epoch sees each sample once; save/load_state exact,
on one process and on two (torchrun, gloo), where the resumes run in fresh processes."""

from __future__ import annotations

import collections
import functools
import tempfile
import warnings
from pathlib import Path

import pytest
import torch

accelerate = pytest.importorskip(
    "accelerate", reason="accelerate is an optional test dependency (extra 'frameworks')"
)

from accelerate.utils import DataLoaderConfiguration  # noqa: E402

from statefuldata import IncompatibleStateError, make_loader  # noqa: E402
from statefuldata.integrations.accelerate import ResumableLoader  # noqa: E402
from tests.data import CountingStream, Ids  # noqa: E402
from tests.frameworks import accelerate_run, torchrun  # noqa: E402

SAMPLES, BATCH, EPOCHS = 24, 4, 2
STEPS = SAMPLES // BATCH  # per epoch

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

# default: accelerate stores no data position, ResumableLoader does. stateful: accelerate stores the
# loader's state itself; with ResumableLoader, or with a plain loop that calls loader.set_epoch(epoch).
MODES = {
    "default+adapter": (False, True),
    "stateful+adapter": (True, True),
    "stateful": (True, False),
}
WORKERS = [0, pytest.param(2, marks=pytest.mark.slow)]


def _setup(mode: str, num_workers: int):
    stateful, adapter = MODES[mode]
    accelerator = accelerate.Accelerator(
        cpu=True, dataloader_config=DataLoaderConfiguration(use_stateful_dataloader=stateful)
    )
    torch.manual_seed(0)
    model = torch.nn.Linear(1, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-4)
    loader = make_loader(
        Ids(SAMPLES), batch_size=BATCH, shuffle=True, seed=3, num_workers=num_workers
    )
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    if adapter:
        loader = ResumableLoader(loader)
        accelerator.register_for_checkpointing(loader)
    return accelerator, model, optimizer, loader


def _train(mode: str, num_workers: int, root: str, *, stop: int = 0, resume: int | None = None):
    """Train; with ``stop``, save_state after that many steps and return. ``resume``: load_state,
    then start at that epoch (a plain loop records it; the adapter knows it)."""
    accelerator, model, optimizer, loader = _setup(mode, num_workers)
    adapter = isinstance(loader, ResumableLoader)
    start = 0
    if resume is not None:
        accelerator.load_state(root)
        start = loader.next_epoch if adapter else resume
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return accelerate_run.run_epochs(accelerator, model, optimizer, loader, start, stop, root)


@functools.cache
def _reference(mode: str, num_workers: int) -> list[list[int]]:
    with tempfile.TemporaryDirectory() as root:
        return _train(mode, num_workers, root)


@pytest.mark.parametrize("num_workers", WORKERS)
@pytest.mark.parametrize("mode", sorted(MODES))
def test_every_uninterrupted_epoch_sees_each_sample_once(mode, num_workers) -> None:
    seen = _reference(mode, num_workers)
    assert len(seen) == EPOCHS * STEPS
    for epoch in range(EPOCHS):
        ids = [i for batch in seen[epoch * STEPS : (epoch + 1) * STEPS] for i in batch]
        assert sorted(ids) == list(range(SAMPLES))
    assert seen[:STEPS] != seen[STEPS:]


# 3: mid-epoch 0 (the resume crosses the epoch boundary); 8: mid-epoch 1; 6: the last batch of epoch 0
@pytest.mark.parametrize("step", [3, 8, 6])
@pytest.mark.parametrize("num_workers", WORKERS)
@pytest.mark.parametrize("mode", sorted(MODES))
def test_save_state_then_load_state_equals_the_uninterrupted_run(mode, num_workers, step, tmp_path):
    first = _train(mode, num_workers, str(tmp_path), stop=step)
    rest = _train(mode, num_workers, str(tmp_path), resume=step // STEPS)
    assert len(first) == step and len(rest) == EPOCHS * STEPS - step
    assert first + rest == _reference(mode, num_workers)


def test_resumable_loader_errors_say_what_to_do() -> None:
    accelerator = accelerate.Accelerator(cpu=True)
    stream = ResumableLoader(accelerator.prepare(make_loader(CountingStream(8), batch_size=2)))
    with pytest.raises(IncompatibleStateError, match=r"prepare it with DataLoaderConfiguration\("):
        stream.load_state_dict({"epoch": 0, "batches": 1})
    loader = ResumableLoader(accelerator.prepare(make_loader(Ids(8), batch_size=2)))
    with pytest.raises(IncompatibleStateError, match=r"must have keys \['batches', 'epoch'\]"):
        loader.load_state_dict({"epoch": 0})
    with pytest.raises(ValueError, match=r"'epoch' must be an int >= 0 \(got -1\)"):
        loader.set_epoch(-1)
    assert len(loader) == 4 and loader.state_dict() == {"epoch": 0, "batches": 0}


def test_a_loader_sharded_by_rank_and_by_accelerate_is_refused() -> None:
    from accelerate.data_loader import BatchSamplerShard, DataLoaderShard

    ours = make_loader(Ids(16), batch_size=2, shuffle=True, seed=0, rank=1, world_size=2)
    twice = DataLoaderShard(ours.dataset, batch_sampler=BatchSamplerShard(ours.batch_sampler, 2, 1))
    with pytest.raises(ValueError, match=r"sharded twice.*rank 1 of world_size=2.*over 2 proc"):
        ResumableLoader(twice)
    once = make_loader(Ids(16), batch_size=2, shuffle=True, seed=0, rank=0, world_size=1)
    shard = DataLoaderShard(once.dataset, batch_sampler=BatchSamplerShard(once.batch_sampler, 2, 1))
    loader = ResumableLoader(shard)  # sharded by accelerate only: accepted, half the samples
    ids = [i for batch in loader for i in batch.tolist()]
    assert len(ids) == len(set(ids)) == 8


def _ranks(folder: Path) -> list[dict]:
    return torchrun.ranks(folder, accelerate_run.PROCESSES)


@pytest.fixture(scope="module")
def processes(tmp_path_factory) -> Path:
    """Every run of accelerate_run on two processes: the first parts, then the resumes in fresh
    processes (a second torchrun launch)."""
    root = tmp_path_factory.mktemp("accelerate-processes")
    torchrun.launch("tests.frameworks.accelerate_run", accelerate_run.PROCESSES, str(root), "first")
    torchrun.launch(
        "tests.frameworks.accelerate_run", accelerate_run.PROCESSES, str(root), "resumed"
    )
    return root


@pytest.mark.slow
@pytest.mark.parametrize("mode", sorted(accelerate_run.MODES))
def test_two_processes_deal_each_epoch_out_once(processes, mode) -> None:
    ranks = _ranks(processes / mode / "reference")
    steps = accelerate_run.steps_per_epoch(mode)
    for epoch in range(accelerate_run.EPOCHS):
        batches = [r["seen"][epoch * steps : (epoch + 1) * steps] for r in ranks]
        dealt = collections.Counter(i for b in batches for batch in b for i in batch)
        assert sorted(dealt) == list(range(accelerate_run.SAMPLES))  # every sample of the epoch
        head = {i for b in batches for i in b[0]}
        extra = dealt - collections.Counter(range(accelerate_run.SAMPLES))
        assert extra and set(extra) <= head  # and the short tail filled from the epoch's head
    assert ranks[0]["seen"][:steps] != ranks[0]["seen"][steps:]  # a new order each epoch
    for mine, theirs in zip(ranks[0]["parameters"], ranks[1]["parameters"], strict=True):
        assert torch.equal(mine, theirs)  # gradients were averaged over the two processes


@pytest.mark.slow
@pytest.mark.parametrize(
    ("mode", "stop"),
    [(mode, stop) for mode in sorted(accelerate_run.MODES) for stop in accelerate_run.STOPS[mode]],
)
def test_two_processes_resumed_in_fresh_processes_equal_the_uninterrupted_run(
    processes, mode, stop
) -> None:
    total = accelerate_run.EPOCHS * accelerate_run.steps_per_epoch(mode)
    torchrun.check_resumed(processes / mode, stop, total, accelerate_run.PROCESSES)


@pytest.mark.parametrize("split", [False, True])
@pytest.mark.parametrize("process", [0, 1])
def test_a_shard_resumed_mid_epoch_fills_its_short_tail_from_the_epoch_head(process, split):
    # One process of two, as accelerate's prepare() builds it: 50 samples in batches of 4 leave a
    # short last batch, which even_batches fills with the first samples of the epoch.
    from accelerate.data_loader import BatchSamplerShard, DataLoaderShard

    def shard():
        ours = make_loader(Ids(50), batch_size=4, shuffle=True, seed=0, rank=0, world_size=1)
        batches = BatchSamplerShard(ours.batch_sampler, 2, process, split_batches=split)
        return ResumableLoader(DataLoaderShard(ours.dataset, batch_sampler=batches))

    everything = [batch.tolist() for batch in shard()]
    assert len(everything) == (13 if split else 7)
    order = [batch.tolist() for batch in make_loader(Ids(50), batch_size=4, shuffle=True, seed=0)]
    head = set(order[0] + order[1])  # what accelerate wraps around to
    if process == 1 or not split:  # with split_batches process 0's last slice is the short batch
        assert set(everything[-1]) & head
    for done in (1, 3, len(everything) - 1):
        resumed = shard()
        resumed.load_state_dict({"epoch": 0, "batches": done})
        assert [batch.tolist() for batch in resumed] == everything[done:]
