"""The per-epoch progress bar (tqdm, notebook-aware), shown on rank 0 unless turned off."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from tqdm.auto import tqdm

__all__ = ["epoch_bar"]


@contextlib.contextmanager
def epoch_bar(total: int, initial: int, epoch: int, *, enabled: bool) -> Iterator[tqdm]:
    """A bar over an epoch's ``total`` batches, starting at ``initial`` (a resumed epoch)."""
    with tqdm(
        total=total, initial=initial, desc=f"epoch {epoch}", disable=not enabled, leave=False
    ) as bar:
        yield bar
