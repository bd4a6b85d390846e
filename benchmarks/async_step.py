"""A save inside a real training step: how long the step loop is blocked, and what the step costs.

The model is a stack of bias-free ``Linear(d, d)`` layers of about 4 MiB each, trained by SGD on a
batch of 8 rows (forward, backward, ``optimizer.step()``), as large as the checkpoint section's
payload. One round runs one step per variant:

* **no save**: the step alone (the baseline of the step time);
* **sync save**: ``write_payload`` of the state at the step boundary, then the next step;
* **async save, copy in the save**: ``write_payload_async`` copies every tensor before it returns;
* **async save, deferred copy** (what ``GenericTrainer`` does with ``async_save``): the parameters'
  copy is made on the writer thread while the next forward and backward run, and
  ``wait_snapshot()`` before ``optimizer.step()`` waits for what is left of it;
* **DCP** ``async_save`` of the model state, where installed (it stages a copy, then writes in
  the background; its future is waited for, untimed, before the next round).

Each variant reports the time the loop was blocked (the save call, plus the wait before the step)
and, as a second row, the whole step including the save; the write itself goes on in the
background and is waited for, untimed, before the next round. On 2 CPU cores the background copy
and write compete with the forward and backward for the cores (on a GPU they would not): the
step-time rows show that cost.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from functools import partial
from typing import Any

import torch

from benchmarks.checkpoint_peers import Peers
from benchmarks.harness import Stat
from trainer.checkpoints import build_payload
from trainer.resume import ResumeState
from trainer.rng import capture_rng_states

__all__ = ["NO_SAVE", "StepBench", "variants"]

NO_SAVE, SYNC, COPY_AT_ONCE, DEFERRED, DCP = (
    "training step, no save",
    "ours: sync save",
    "ours: async save, copy in the save, stall",
    "ours: async save, deferred copy (the trainer's), stall",
    "DCP async_save, stall",
)
BATCH = 8


def _stack(size: int) -> torch.nn.Sequential:
    width = min(1024, max(8, int((size / 4) ** 0.5)))
    layers = max(1, round(size / (4 * width * width)))
    torch.manual_seed(0)
    model = torch.nn.Sequential(*(torch.nn.Linear(width, width, bias=False) for _ in range(layers)))
    with torch.no_grad():
        for layer in model:
            layer.weight.normal_(0.0, width**-0.5)  # keeps the activations' scale over the stack
    return model


class StepBench:
    """One model, its optimizer and batch; :meth:`run` times one step with the given save."""

    def __init__(self, peers: Peers, size: int) -> None:
        self.model = _stack(size)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=1e-4)
        self.batch = torch.randn(BATCH, self.model[0].in_features)
        self.peers = peers
        self.step = 0
        #: Whole-step seconds of every round, per variant (the second row of each).
        self.totals: dict[str, list[float]] = {}
        self.nbytes = sum(p.nbytes for p in self.model.parameters())

    def _payload(self) -> dict[str, Any]:
        return build_payload(
            model=self.model,
            optimizers=[self.optimizer],
            schedulers=[],
            scaler_state=None,
            rng_states=capture_rng_states(),
            dataloader_manager_state=None,
            resume_state=ResumeState(global_step=self.step),
            epoch=0,
            global_step=self.step,
        )

    def _forward_backward(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        self.model(self.batch).square().mean().backward()

    def run(self, name: str) -> float:
        """One save (as ``name`` says) and the step after it; returns the seconds blocked."""
        self.step += 1
        sync = self.peers.manager("step-sync", writer=True)
        background = self.peers.manager("step-async", writer=True, async_save=True)
        start = time.perf_counter()
        if name == SYNC:
            sync.write_payload(self._payload(), epoch=0, global_step=self.step, metrics=None)
        elif name in (COPY_AT_ONCE, DEFERRED):
            defer = list(self.model.parameters()) if name == DEFERRED else ()
            background.write_payload_async(
                self._payload(), epoch=0, global_step=self.step, metrics=None, defer=defer
            )
        elif name == DCP:
            future = self.peers.dcp_async_start({"model": self.model.state_dict()})
        blocked = time.perf_counter() - start
        self._forward_backward()
        waited = time.perf_counter()
        background.wait_snapshot()  # what the trainer calls right before optimizer.step()
        blocked += time.perf_counter() - waited
        self.optimizer.step()
        total = time.perf_counter() - start
        self.totals.setdefault(name, []).append(total)
        sync.wait()
        background.wait()  # untimed: the write in the background ends before the next round
        if name == DCP:
            self.peers.dcp_async_end(future)
        return total if name == NO_SAVE else blocked

    def step_stats(self, warmup: int) -> dict[str, Stat]:
        """The whole-step :class:`Stat` of each variant over the kept rounds."""
        return {name: Stat.of(values[warmup:]) for name, values in self.totals.items()}


def variants(bench: StepBench) -> dict[str, Callable[[], float]]:
    """The variants, the sync save first (the baseline of the blocked times); DCP where
    installed."""
    names = (SYNC, NO_SAVE, COPY_AT_ONCE, DEFERRED) + ((DCP,) if bench.peers.dcp else ())
    return {name: partial(bench.run, name) for name in names}
