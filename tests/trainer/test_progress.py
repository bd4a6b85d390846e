"""EpochProgress: samples are read from the epoch iterator's counts, from where the bar started."""

from __future__ import annotations

from statefuldata import DataLoaderManager, make_loader
from trainer.progress import EpochProgress


def test_samples_count_from_the_bar_start_including_a_partial_last_batch() -> None:
    manager = DataLoaderManager([make_loader(list(range(10)), batch_size=4)])
    iterator = manager.create_epoch_iterator("train", 0)
    next(iterator)  # a resumed epoch: the bar starts after the first batch
    with EpochProgress(len(iterator), iterator, 0, enabled=False) as bar:
        assert bar.samples == 0 and bar.bar.n == 1
        for _ in iterator:
            bar.batch()
        assert bar.samples == 4 + 2  # batches of 4 and 2, not the running totals added up
