"""SkipBatchesLoader: a seeded plain DataLoader resumes exactly in any pass; an unseeded one is refused."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader, RandomSampler

from statefuldata import DataLoaderManager, MultiDataLoaderConfig, SkipBatchesLoader
from statefuldata.testing import _round_trip
from tests.data import Ids


def plain(num_workers: int = 0, seed: int = 7) -> DataLoader:
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(
        Ids(22), batch_size=4, shuffle=True, generator=generator, num_workers=num_workers
    )


def flat(manager: DataLoaderManager, epochs: range) -> list[list[int]]:
    out = []
    for epoch in epochs:
        out += [b.tolist() for _, _, b in manager.create_epoch_iterator("train", epoch)]
    return out


FIXED = MultiDataLoaderConfig(epoch_length_policy="fixed_num_steps", steps_per_epoch=8)


@pytest.mark.parametrize("num_workers", [0, 2])
@pytest.mark.parametrize("k", [3, 9, 14, 23])  # pass 0, pass 1 (mid and at a pass start), pass 3
def test_seeded_plain_loader_resumes_exactly_in_any_pass(num_workers, k) -> None:
    reference_manager = DataLoaderManager([plain(num_workers)], train_config=FIXED)
    reference = flat(reference_manager, range(4))  # 32 batches: passes of 6 batches each
    reference_manager.close()
    passes = [reference[i : i + 6] for i in range(0, 30, 6)]
    assert len({str(p) for p in passes}) == len(passes)  # every pass has its own order
    first = DataLoaderManager([plain(num_workers)], train_config=FIXED)
    epoch, taken = divmod(k, 8)
    seen = flat(first, range(epoch))
    iterator = first.create_epoch_iterator("train", epoch)
    seen += [next(iterator)[2].tolist() for _ in range(taken)]
    state = _round_trip(first.state_dict())
    first.close()
    resumed = DataLoaderManager([plain(num_workers)], train_config=FIXED)
    resumed.load_state_dict(state)
    rest = flat(resumed, range(epoch, 4))
    resumed.close()
    assert seen + rest == reference


def test_an_unseeded_shuffled_plain_loader_is_refused_naming_make_loader() -> None:
    with pytest.raises(ValueError, match=r"RandomSampler draws a new random order .*make_loader"):
        SkipBatchesLoader(DataLoader(Ids(8), batch_size=2, shuffle=True), name="plain")
    sampler = RandomSampler(Ids(8))  # a generator on the loader does not reach this sampler
    loader = DataLoader(Ids(8), batch_size=2, sampler=sampler, generator=torch.Generator())
    with pytest.raises(ValueError, match=r"loader 'train_0' is a plain DataLoader"):
        DataLoaderManager([loader])


def test_unshuffled_plain_loader_needs_no_generator_and_old_states_load() -> None:
    loader = SkipBatchesLoader(DataLoader(Ids(10), batch_size=3), name="plain")
    assert [b.tolist() for b in loader][:2] == [[0, 1, 2], [3, 4, 5]]
    loader.load_state_dict({"batches_yielded": 2})  # written before pass generator states existed
    assert [b.tolist() for b in loader] == [[6, 7, 8], [9]]
