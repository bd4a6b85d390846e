"""SeededStatefulDataLoader.state_dict(): with workers, a restore loads no batch it does not yield.

torchdata's multi-process state is its last worker snapshot plus the batches since; a restore loads
those batches again. For map-style data without state, ours moves the snapshot to the current step
(statefuldata.torchdata_state.snapshot_now), so replay no longer depends on snapshot_every_n_steps.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.data import Dataset

from statefuldata import make_loader
from statefuldata.torchdata_state import (
    KEY_SNAPSHOT,
    KEY_STEPS_SINCE_SNAPSHOT,
    KEY_WORKER_SNAPSHOTS,
    snapshot_now,
)

N, BATCH, WORKERS, EVERY = 96, 4, 2, 10  # 24 batches per epoch
PREFETCH = 2 * WORKERS  # torchdata's default prefetch_factor (2) per worker


class Logged(Dataset):
    """Map-style ids that append every index they load to a file (workers are other processes)."""

    def __init__(self, log: Path) -> None:
        self.log = log

    def __len__(self) -> int:
        return N

    def __getitem__(self, index: int) -> int:
        with self.log.open("a") as f:
            f.write(f"{index}\n")
        return index

    def loaded(self) -> int:
        return len(self.log.read_text().split()) if self.log.exists() else 0


class LoggedWithState(Logged):
    """The same, with a (trivial) dataset state: its workers hold state, so torchdata replays."""

    def state_dict(self) -> dict[str, int]:
        return {"version": 1}

    def load_state_dict(self, state: dict[str, int]) -> None:
        assert state == {"version": 1}


def _loader(dataset: Dataset):
    loader = make_loader(dataset, batch_size=BATCH, shuffle=True, seed=3, num_workers=WORKERS)
    loader.snapshot_every_n_steps = EVERY
    return loader


def _ids(loader, epochs: int) -> list[int]:
    return [i for _ in range(epochs) for batch in loader for i in batch.tolist()]


# Interruption points (batches consumed in the first of two epochs): before the first snapshot,
# at one, just after one, mid-interval, the last batch of the epoch (the resume crosses into the
# next epoch).
@pytest.mark.slow
@pytest.mark.parametrize("stop", [1, 9, 10, 11, 17, 24])
def test_resume_is_exact_and_loads_only_what_it_yields(tmp_path, stop) -> None:
    reference = _ids(_loader(Logged(tmp_path / "ref.log")), epochs=2)
    first = Logged(tmp_path / "first.log")
    loader = _loader(first)
    it, seen = iter(loader), []
    for _ in range(stop):
        seen += next(it).tolist()
    state = loader.state_dict()
    assert state[KEY_STEPS_SINCE_SNAPSHOT] == 0  # the snapshot is as of this step
    del it
    resumed_data = Logged(tmp_path / "resumed.log")
    resumed = _loader(resumed_data)
    resumed.load_state_dict(torch.load(_saved(tmp_path, state), weights_only=True))
    it = iter(resumed)
    nxt = next(it, None)
    if stop < N // BATCH:
        # the first batch after the restore: its own items plus at most the prefetch depth
        assert resumed_data.loaded() <= BATCH * (1 + PREFETCH), resumed_data.loaded()
        seen += nxt.tolist()
        seen += [i for batch in it for i in batch.tolist()]
    else:
        assert nxt is None and resumed_data.loaded() == 0  # the resumed pass had nothing left
    seen += _ids(resumed, epochs=1)
    assert seen == reference


def _saved(tmp_path: Path, state: dict) -> Path:
    path = tmp_path / "state.pt"
    torch.save(state, path)
    return path


@pytest.mark.slow
def test_a_dataset_with_state_is_replayed_as_torchdata_does_and_stays_exact(tmp_path) -> None:
    reference = _ids(_loader(LoggedWithState(tmp_path / "ref.log")), epochs=1)
    loader = _loader(LoggedWithState(tmp_path / "first.log"))
    it = iter(loader)
    seen = [i for _ in range(15) for i in next(it).tolist()]
    state = loader.state_dict()
    assert state[KEY_STEPS_SINCE_SNAPSHOT] == 5  # its workers hold state: the snapshot stays
    del it
    data = LoggedWithState(tmp_path / "resumed.log")
    resumed = _loader(data)
    resumed.load_state_dict(state)
    seen += _ids(resumed, epochs=1)
    assert seen == reference
    assert data.loaded() >= BATCH * (5 + 9)  # replayed 5 batches, then the 9 left


def test_worker_snapshots_are_off_by_default_only_where_they_are_free(tmp_path) -> None:
    free = make_loader(Logged(tmp_path / "a.log"), batch_size=BATCH, num_workers=WORKERS)
    assert free.snapshots_free and free.snapshot_every_n_steps is None
    held = make_loader(LoggedWithState(tmp_path / "b.log"), batch_size=BATCH, num_workers=WORKERS)
    assert not held.snapshots_free and held.snapshot_every_n_steps == 1  # torchdata's default
    chosen = make_loader(
        Logged(tmp_path / "c.log"), batch_size=BATCH, num_workers=WORKERS, snapshot_every_n_steps=7
    )
    assert chosen.snapshot_every_n_steps == 7  # a value passed is kept


# With no worker snapshot after the pass start (the default), at: the first batch, mid-pass, the
# last batch drawn without asking for more, and after the pass raised StopIteration.
@pytest.mark.slow
@pytest.mark.parametrize("stop", [1, 13, 24, "ended"])
def test_default_loader_resumes_exactly_loading_only_the_prefetch(tmp_path, stop) -> None:
    def default(dataset: Dataset):
        return make_loader(dataset, batch_size=BATCH, shuffle=True, seed=3, num_workers=WORKERS)

    reference = _ids(default(Logged(tmp_path / "ref.log")), epochs=2)
    loader = default(Logged(tmp_path / "first.log"))
    if stop == "ended":
        seen = _ids(loader, epochs=1)
    else:
        it = iter(loader)
        seen = [i for _ in range(stop) for i in next(it).tolist()]
    state = loader.state_dict()
    assert state[KEY_STEPS_SINCE_SNAPSHOT] == 0
    resumed_data = Logged(tmp_path / "resumed.log")
    resumed = default(resumed_data)
    resumed.load_state_dict(torch.load(_saved(tmp_path, state), weights_only=True))
    assert resumed_data.loaded() == 0
    it = iter(resumed)
    first = next(it, None)
    # the first batch after the restore: its own items plus at most the prefetch depth
    assert resumed_data.loaded() <= BATCH * (1 + PREFETCH), resumed_data.loaded()
    if first is None:  # the resumed pass had nothing left (taken at its last batch)
        assert stop == N // BATCH and resumed_data.loaded() == 0
    else:
        seen += first.tolist() + [i for batch in it for i in batch.tolist()]
    if len(seen) < len(reference):
        seen += _ids(resumed, epochs=1)
    assert seen == reference


def test_snapshot_now_leaves_states_it_cannot_move_untouched() -> None:
    def never(state, samples):
        raise AssertionError("must not be asked")

    current = {KEY_STEPS_SINCE_SNAPSHOT: 0, KEY_SNAPSHOT: {}}
    assert snapshot_now(current, never, BATCH) is current
    single_process = {"_num_yielded": 3}
    assert snapshot_now(single_process, never, BATCH) is single_process
    stateful = {
        KEY_STEPS_SINCE_SNAPSHOT: 2,
        KEY_SNAPSHOT: {KEY_WORKER_SNAPSHOTS: {"worker_0": {"dataset_state": {"pos": 1}}}},
    }
    assert snapshot_now(stateful, never, BATCH) is stateful


def test_snapshot_now_keeps_the_state_when_the_sampler_cannot_advance() -> None:
    loader = make_loader(list(range(N)), batch_size=BATCH, shuffle=True, seed=0, num_workers=1)
    loader.snapshot_every_n_steps = 1000
    state = loader.state_dict()  # before iter(): nothing to move
    assert snapshot_now(state, lambda s, n: None, BATCH) is state
    fake = {**state, KEY_STEPS_SINCE_SNAPSHOT: 3}
    assert snapshot_now(fake, lambda s, n: None, BATCH) is fake


@pytest.mark.slow
def test_a_script_ending_with_an_open_iterator_exits(tmp_path) -> None:
    # Our workers ignore SIGTERM; multiprocessing's exit handler SIGTERMs and joins them: without
    # statefuldata's own exit handler running first, this script hung forever after its last line.
    script = tmp_path / "script.py"
    script.write_text(
        "from statefuldata import make_loader\n"
        "loader = make_loader(list(range(400)), batch_size=4, shuffle=True, num_workers=2)\n"
        "it = iter(loader)\n"
        "print(next(it).tolist())\n"
    )
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=90)
    assert done.returncode == 0, done.stderr[-3000:]
    assert len(eval(done.stdout.strip().splitlines()[-1])) == BATCH


@pytest.mark.parametrize("num_workers", [0, 2])
def test_state_dict_before_gives_the_state_of_batches_drawn_ahead(num_workers) -> None:
    from tests.data import CountingStream

    def loader():
        return make_loader(CountingStream(40), batch_size=4, num_workers=num_workers)

    everything = [b.tolist() for b in loader()]
    drawing = loader()
    drawing.remember_states(2)
    batches = iter(drawing)
    drawn = [next(batches).tolist() for _ in range(6)]  # a consumer that trained on 4 of them
    assert drawn == everything[:6]
    for ahead, trained in ((1, 5), (2, 4)):
        resumed = loader()
        resumed.load_state_dict(drawing.state_dict_before(ahead))
        assert [b.tolist() for b in resumed] == everything[trained:]
    with pytest.raises(ValueError, match=r"no state from 3 batch\(es\) back: 2 kept"):
        drawing.state_dict_before(3)
    assert drawing.state_dict_before(0) == drawing.state_dict()
    with pytest.raises(ValueError, match=r"'batches' must be an int >= 0 \(got -1\)"):
        drawing.remember_states(-1)
