"""Deferred snapshot copies of an asynchronous save (``CheckpointConfig.defer_snapshot``).

The copy of the parameters and the optimizer state leaves the save: the writer thread makes it
while the next forward and backward run, and the trainer waits for it before the next optimizer
step and before callbacks. These tests hold the copy back on purpose (``Snapshot.copy_deferred``
wrapped) so that the order of events is forced, not left to the scheduler.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
import torch
from torch.optim.optimizer import register_optimizer_step_pre_hook

from tests.trainer.harness import SignalAt, assert_same, loaders, snapshot
from tests.trainer.test_async_save import EPOCHS, _payload, trainer_for
from trainer import Callback, CheckpointConfig, SnapshotChangedError
from trainer.checkpoints import read_checkpoint
from trainer.checkpoints.manager import CheckpointManager
from trainer.checkpoints.snapshot import Snapshot


class _HeldCopies:
    """Wraps ``Snapshot.copy_deferred``: the deferred copy of step ``hold`` waits for ``release``,
    every one waits ``delay`` seconds first; ``events`` gets ("copied", step) once it is made."""

    def __init__(
        self, monkeypatch: pytest.MonkeyPatch, events: list, hold: int | None, delay: float = 0.0
    ) -> None:
        self.release = threading.Event()
        self.events, self.hold = events, hold
        original = Snapshot.copy_deferred

        def copy_deferred(snap: Snapshot) -> None:
            if not snap.deferred_bytes:
                return original(snap)
            step = snap.payload["global_step"]
            if step == self.hold:
                assert self.release.wait(timeout=60), "the test never released the copy"
            time.sleep(delay)
            try:
                original(snap)
            finally:
                self.events.append(("copied", step))

        monkeypatch.setattr(Snapshot, "copy_deferred", copy_deferred)


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    model = torch.nn.Linear(64, 64)
    model.register_buffer("count", torch.zeros(8))
    return model


def _save(manager: CheckpointManager, model: torch.nn.Module, step: int, defer) -> Path:
    return manager.write_payload_async(
        _payload(step, model=model), epoch=0, global_step=step, metrics=None, defer=defer
    )


def test_a_deferred_copy_is_made_after_the_save_returns_and_holds_the_values_at_the_save(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    events: list = []
    held = _HeldCopies(monkeypatch, events, hold=1)
    manager = CheckpointManager(CheckpointConfig(root_dir=tmp_path, async_save=True))
    model = _model()
    weight = model.weight.detach().clone()
    path = _save(manager, model, 1, defer=model.parameters())
    events.append(("returned", 1))  # the save is back; its deferred copy is not made yet
    with torch.no_grad():
        model.count.add_(1.0)  # not deferred: copied inside the save, so this is not in the file
    threading.Timer(0.05, held.release.set).start()
    manager.wait_snapshot()
    events.append(("waited", 1))
    with torch.no_grad():
        model.weight.mul_(-1.0)  # "the optimizer step", after the wait: not in the file either
    manager.wait()
    assert events == [("returned", 1), ("copied", 1), ("waited", 1)]
    saved = read_checkpoint(path)["model_state_dict"]
    assert torch.equal(saved["weight"], weight) and torch.equal(saved["count"], torch.zeros(8))
    assert (tmp_path / "latest.ckpt").resolve() == path


def test_a_tensor_changed_before_its_deferred_copy_drops_that_save_with_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    held = _HeldCopies(monkeypatch, [], hold=2)
    manager = CheckpointManager(CheckpointConfig(root_dir=tmp_path, async_save=True))
    model = _model()
    first = _save(manager, model, 1, defer=model.parameters())
    manager.wait()
    second = _save(manager, model, 2, defer=model.parameters())
    with torch.no_grad():
        model.weight.add_(1.0)  # breaks the promise: changed before the copy was made
    held.release.set()
    with pytest.raises(
        SnapshotChangedError,
        match=r"payload\['model_state_dict'\]\['weight'\] changed in place after the save.*"
        r"defer_snapshot=False",
    ):
        manager.wait_snapshot()
    manager.wait()  # raised once: the folder is usable, as it was before the dropped save
    assert not second.exists() and (tmp_path / "latest.ckpt").resolve() == first
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    assert not manager.holds_lock
    third = _save(manager, model, 3, defer=model.parameters())
    manager.wait()
    assert torch.equal(read_checkpoint(third)["model_state_dict"]["weight"], model.weight)


class _Recorder(Callback):
    """Records the step saves (``on_checkpoint``, right after the save returned) and, with
    ``clamp``, changes the parameters in place (weights kept in a box) after every batch (recorded)
    and after every optimizer step."""

    def __init__(self, events: list, *, clamp: bool) -> None:
        self.events, self.clamp = events, clamp

    def on_checkpoint(self, trainer, path) -> None:
        self.events.append(("saved", trainer.state.global_step))

    def _clamp(self, trainer, bound: float) -> None:
        with torch.no_grad():
            for p in trainer.model.parameters():
                p.clamp_(-bound, bound)

    def on_train_batch_end(self, trainer, outputs, batch_idx, dataloader_idx, name) -> None:
        if self.clamp:
            self.events.append(("callback", trainer.state.global_step))
            self._clamp(trainer, 0.35)

    def on_optimizer_step(self, trainer) -> None:
        if self.clamp:
            self._clamp(trainer, 0.3)


def _step_events(events: list):
    return register_optimizer_step_pre_hook(
        lambda optimizer, args, kwargs: events.append(("step", None))
    )


def test_the_trainer_waits_for_a_deferred_copy_before_the_next_optimizer_step(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reference_log: list = []
    reference = trainer_for(tmp_path / "ref", log=reference_log, async_save=False)
    assert reference.fit(loaders(), max_epochs=EPOCHS).status == "completed"

    events: list = []
    _HeldCopies(monkeypatch, events, hold=None, delay=0.03)  # each copy comes 30 ms late
    run = trainer_for(tmp_path / "run", callbacks=(_Recorder(events, clamp=False),))
    hook = _step_events(events)
    try:
        assert run.fit(loaders(), max_epochs=1).status == "completed"
    finally:
        hook.remove()
    saves = [k for kind, k in events if kind == "saved"]
    assert saves[:3] == [5, 10, 15] and ("copied", 50) in events
    for k in saves[:-2]:  # step 50 ends the run: its saves are followed by no step
        after = events[events.index(("saved", k)) :]
        assert after.index(("copied", k)) < after.index(("step", None))

    deferred_save = run.checkpoints.path_for(0, 45)  # resumed from, it gives the same run
    resumed_log: list = []
    resumed = trainer_for(tmp_path / "run", log=resumed_log)
    result = resumed.fit(loaders(), max_epochs=EPOCHS, resume_from_checkpoint=deferred_save)
    assert result.status == "completed"
    assert resumed_log == [entry for entry in reference_log if entry[0] >= 45]
    assert_same(snapshot(resumed), snapshot(reference))


def _files(run, steps) -> list:
    return [read_checkpoint(run.checkpoints.path_for(0, step)) for step in steps]


def test_the_trainer_waits_for_deferred_copies_before_callbacks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    events: list = []
    _HeldCopies(monkeypatch, events, hold=None, delay=0.03)
    run = trainer_for(tmp_path, callbacks=(_Recorder(events, clamp=True), SignalAt(67)))
    assert run.fit(loaders(), max_epochs=EPOCHS).status == "preempted"  # at step 34
    copied = [k for kind, k in events if kind == "copied"]
    assert copied == [5, 10, 15, 20, 25, 30]  # the step saves were deferred (not the preemption's)
    for k in copied:  # each save's copy came before the next batch's callback clamped in place
        assert events.index(("saved", k)) < events.index(("copied", k))
        assert events.index(("copied", k)) < events.index(("callback", k))


@pytest.fixture(scope="module")
def clamped_reference(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, list]:
    """The uninterrupted run with the clamping callbacks, saving synchronously."""
    reference_log: list = []
    callbacks = (_Recorder([], clamp=True),)
    reference = trainer_for(
        tmp_path_factory.mktemp("ref"), log=reference_log, callbacks=callbacks, async_save=False
    )
    assert reference.fit(loaders(), max_epochs=EPOCHS).status == "completed"
    return snapshot(reference), reference_log


@pytest.mark.parametrize("async_save", [False, True], ids=["sync", "deferred"])
def test_callbacks_changing_parameters_resume_exactly_from_a_step_save(
    tmp_path: Path, clamped_reference: tuple[dict, list], async_save: bool
) -> None:
    """The step's callbacks run before its save, as the epoch's do: the file holds what they
    changed, and a resume from it runs none of them again."""
    expected, reference_log = clamped_reference

    callbacks = (_Recorder([], clamp=True), SignalAt(67))  # preempted at step 34
    run = trainer_for(tmp_path / "run", callbacks=callbacks, async_save=async_save)
    assert run.fit(loaders(), max_epochs=EPOCHS).status == "preempted"
    step_save = run.checkpoints.path_for(0, 30)  # deferred with async_save
    assert read_checkpoint(step_save)["resume_state"]["save_reason"] == "step"
    resumed_log: list = []
    resumed = trainer_for(
        tmp_path / "run",
        log=resumed_log,
        callbacks=(_Recorder([], clamp=True),),
        async_save=async_save,
    )
    result = resumed.fit(loaders(), max_epochs=EPOCHS, resume_from_checkpoint=step_save)
    assert result.status == "completed"
    assert resumed_log == [entry for entry in reference_log if entry[0] >= 30]
    assert_same(snapshot(resumed), expected)


@pytest.mark.parametrize("defer", [True, False])
def test_a_training_step_changing_parameters_in_place_fails_a_deferred_save(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, defer: bool
) -> None:
    events: list = []
    held = _HeldCopies(monkeypatch, events, hold=10)  # until the step below changed the bias
    before: list = []
    run = trainer_for(tmp_path, callbacks=(SignalAt(22),), defer_snapshot=defer)  # to step 11
    step = run._training_step

    def changing_step(t, batch, *args):
        if t.state.global_step == 10 and not before:  # the first batch after the step-10 save
            before.append(t.model.head.bias.detach().clone())
            with torch.no_grad():
                t.model.head.bias.add_(0.5)  # in place, outside the optimizer step
            held.release.set()
        return step(t, batch, *args)

    run.set_training_step(changing_step)
    if defer:
        with pytest.raises(SnapshotChangedError, match=r"\['head.bias'\] changed in place"):
            run.fit(loaders(), max_epochs=1)
        assert read_checkpoint(tmp_path / "latest.ckpt")["global_step"] == 5
        assert not run.checkpoints.path_for(0, 10).exists() and not run.checkpoints.holds_lock
    else:  # everything is copied inside the save: the file holds the bias of step 10
        assert run.fit(loaders(), max_epochs=1).status == "preempted"
        assert not events
        saved = read_checkpoint(run.checkpoints.path_for(0, 10))["model_state_dict"]
        assert torch.equal(saved["head.bias"], before[0])
