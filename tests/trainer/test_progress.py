"""EpochProgress: samples are read from the epoch iterator's counts, from where the bar started."""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from statefuldata import DataLoaderManager, make_loader
from trainer.progress import EpochProgress


def test_samples_count_from_the_bar_start_including_a_partial_last_batch() -> None:
    manager = DataLoaderManager([make_loader(list(range(10)), batch_size=4)])
    iterator = manager.create_epoch_iterator("train", 0)
    next(iterator)  # a resumed epoch: the bar starts after the first batch
    with EpochProgress(len(iterator), iterator, 0, enabled=True) as bar:
        assert bar.samples == 0 and bar.bar.n == 1
        for _ in iterator:
            bar.batch()
        assert bar.samples == 4 + 2  # batches of 4 and 2, not the running totals added up
        assert bar.bar.n == 3


def test_a_bar_that_is_off_makes_no_tqdm_and_still_counts_samples() -> None:
    manager = DataLoaderManager([make_loader(list(range(10)), batch_size=4)])
    iterator = manager.create_epoch_iterator("train", 0)
    before = len(tqdm._instances)
    with EpochProgress(len(iterator), iterator, 0, enabled=False) as bar:
        assert bar.bar is None and len(tqdm._instances) == before
        for _ in iterator:
            bar.batch()
        bar.step([(torch.tensor(1.0), "a", 0)], None, 1)
        assert bar.samples == 10 and bar.loss is None
