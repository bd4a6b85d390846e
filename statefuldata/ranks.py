"""How a global order is shared among ranks: the process group's rank and world size, per-rank
sample counts, and where a rank stands once the group has handed out a global position."""

from __future__ import annotations

import torch.distributed as dist

__all__ = ["local_position", "num_samples_of", "process_group_rank_and_world"]


def process_group_rank_and_world() -> tuple[int, int]:
    """``(rank, world_size)`` of torch.distributed's default process group; ``(0, 1)`` without one."""
    if dist.is_available() and dist.is_initialized():
        return int(dist.get_rank()), int(dist.get_world_size())
    return 0, 1


def num_samples_of(n: int, world_size: int, drop_last: bool) -> int:
    """Samples each rank yields per epoch: ``n`` over ``world_size``, padded or truncated."""
    return n // world_size if drop_last else -(-n // world_size)


def local_position(
    global_position: int, global_total: int, rank: int, world_size: int, num_samples: int
) -> int:
    """Position of ``rank`` (of ``world_size``) once the group has handed out ``global_position``
    samples of a global order of ``global_total`` (padded or truncated by the saved world size).

    A complete pass stays complete (the padding of another world size is not replayed);
    otherwise it is the number of global positions below ``global_position`` that are the rank's.

    Example:
        >>> local_position(6, 10, rank=1, world_size=4, num_samples=3)  # positions 1 and 5
        2
    """
    if global_position >= global_total:
        return num_samples
    return min(num_samples, max(0, -(-(global_position - rank) // world_size)))
