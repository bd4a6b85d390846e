"""torch.distributed for the trainer: DDP wrapping, gradient sync per window, one schedule for all.

Under ``torchrun`` (a process group is initialised) the trainer wraps the model in
``DistributedDataParallel`` unless the user already wrapped it, skips the gradient all-reduce on the
non-final micro-steps of an accumulation window (``no_sync``), and checks that every rank built the
same epoch schedule before it trains (a mismatch raises on every rank instead of hanging).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

__all__ = [
    "average_gradients",
    "check_same_schedule",
    "is_wrapped",
    "unwrap",
    "wrap_model",
]


def is_wrapped(model: torch.nn.Module) -> bool:
    """Whether ``model`` is already a distributed wrapper (DDP, or any FSDP-like with ``module``)."""
    return isinstance(model, DistributedDataParallel) or type(model).__name__.startswith(
        ("FullyShardedDataParallel", "FSDP")
    )


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The module a DDP wrapper holds (checkpoints store it, so files move between world sizes)."""
    return model.module if isinstance(model, DistributedDataParallel) else model


def wrap_model(
    model: torch.nn.Module,
    device: torch.device,
    world_size: int,
    config: Any,
    process_group: Any = None,
) -> torch.nn.Module:
    """``model`` in DistributedDataParallel when there is more than one process; as is otherwise
    (and when it is wrapped already). ``config.ddp_find_unused_parameters`` goes to DDP."""
    if world_size <= 1 or is_wrapped(model):
        return model
    device_ids = (
        [device.index if device.index is not None else 0] if device.type == "cuda" else None
    )
    return DistributedDataParallel(
        model,
        device_ids=device_ids,
        process_group=process_group,
        find_unused_parameters=config.ddp_find_unused_parameters,
    )


def average_gradients(model: torch.nn.Module, group: Any = None) -> None:
    """All-reduce and average every gradient by hand (a window closed on a micro-step that ran
    under ``no_sync``, e.g. an epoch ending earlier than its schedule said)."""
    world = dist.get_world_size(group)
    for param in model.parameters():
        if param.grad is not None:
            dist.all_reduce(param.grad, group=group)
            param.grad.div_(world)


def _digest(schedule: Sequence[int], fingerprint: Any) -> str:
    text = repr((list(schedule), fingerprint)).encode()
    return hashlib.sha256(text).hexdigest()[:16]


def check_same_schedule(
    schedule: Sequence[int], fingerprint: Any, *, epoch: int, group: Any = None
) -> None:
    """Every rank holds the same epoch schedule and data configuration, or all of them raise.

    Raises:
        RuntimeError: On every rank, listing each rank's epoch length and digest.
    """
    mine = (len(schedule), _digest(schedule, fingerprint))
    gathered: list[Any] = [None] * dist.get_world_size(group)
    dist.all_gather_object(gathered, mine, group=group)
    if len(set(gathered)) > 1:
        ranks = "; ".join(f"rank {r}: {n} steps, digest {d}" for r, (n, d) in enumerate(gathered))
        raise RuntimeError(
            f"the train schedule of epoch {epoch} differs across ranks ({ranks}); every rank must "
            "build the same loaders (same datasets and lengths per rank, batch sizes, "
            "MultiDataLoaderConfig and seeds), or the ranks would step out of step and hang"
        )
