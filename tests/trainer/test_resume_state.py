from __future__ import annotations

import io

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from trainer.resume import ResumePhase, ResumeState


def test_defaults_and_plain_dict() -> None:
    state = ResumeState()
    assert state.to_dict() == {
        "phase": "train",
        "epoch": 0,
        "global_step": 0,
        "batch_in_epoch": 0,
        "micro_step": 0,
        "optimizer_steps_in_epoch": 0,
        "preempted": False,
        "completed": False,
        "save_reason": "",
    }
    assert tuple(state.to_dict()) == ResumeState.keys()


@given(
    phase=st.sampled_from(["train", "val", "done"]),
    counts=st.lists(st.integers(0, 10**9), min_size=5, max_size=5),
    flags=st.tuples(st.booleans(), st.booleans()),
    reason=st.text(max_size=10),
)
def test_round_trip(phase, counts, flags, reason) -> None:
    epoch, step, batch, micro, opt_steps = counts
    state = ResumeState(
        phase=phase,
        epoch=epoch,
        global_step=step,
        batch_in_epoch=batch,
        micro_step=micro,
        optimizer_steps_in_epoch=opt_steps,
        preempted=flags[0],
        completed=flags[1],
        save_reason=reason,
    )
    assert ResumeState.from_dict(state.to_dict()) == state


def test_survives_weights_only_load() -> None:
    state = ResumeState(phase=ResumePhase.VAL, epoch=3, global_step=120, save_reason="preemption")
    buffer = io.BytesIO()
    torch.save(state.to_dict(), buffer)
    buffer.seek(0)
    assert ResumeState.from_dict(torch.load(buffer, weights_only=True)) == state


def test_from_dict_is_strict() -> None:
    data = ResumeState().to_dict()
    del data["micro_step"]
    data["rank"] = 0
    with pytest.raises(
        ValueError, match=r"missing keys \['micro_step'\], unknown keys \['rank'\].*another version"
    ):
        ResumeState.from_dict(data)
    with pytest.raises(
        TypeError, match=r"must be a dict made by ResumeState.to_dict\(\) \(got list\)"
    ):
        ResumeState.from_dict([1, 2])  # type: ignore[arg-type]


def test_validation_on_init_and_load() -> None:
    with pytest.raises(
        ValueError, match=r"'phase' must be one of 'train', 'val', 'done' \(got 'test'\)"
    ):
        ResumeState(phase="test")
    state = ResumeState()
    # the loop bumps counters every batch, so assignments only convert; loading validates
    with pytest.raises(ValueError, match=r"'global_step' must be >= 0 \(got -1\)"):
        ResumeState.from_dict({**state.to_dict(), "global_step": -1})
    with pytest.raises(TypeError, match=r"'epoch' must be an int \(got 1.5\)"):
        ResumeState(epoch=1.5)  # type: ignore[arg-type]
    state.phase = "done"  # type: ignore[assignment]
    assert state.phase is ResumePhase.DONE


def test_save_reason_is_an_enum_saved_as_its_plain_value() -> None:
    from trainer.resume import SaveReason

    state = ResumeState(save_reason="preempted")
    assert state.save_reason is SaveReason.PREEMPTED and state.save_reason == "preempted"
    assert state == ResumeState(save_reason=SaveReason.PREEMPTED)
    assert ResumeState().save_reason is SaveReason.UNSET
    state.save_reason = "epoch_end"  # converted on assignment too
    assert state.save_reason is SaveReason.EPOCH_END
    plain = state.to_dict()["save_reason"]
    assert type(plain) is str and plain == "epoch_end"
    # a reason no member has (another trainer version) is kept, not refused
    assert ResumeState(save_reason="resharded").to_dict()["save_reason"] == "resharded"
    with pytest.raises(TypeError, match=r"'save_reason' must be <class 'str'> \(got 3"):
        ResumeState(save_reason=3)


def test_the_trainer_writes_each_save_reason_as_a_plain_string(tmp_path) -> None:
    from statefuldata import make_loader
    from tests.data import Features
    from trainer import CheckpointConfig, GenericTrainer, GenericTrainerConfig
    from trainer.checkpoints import read_checkpoint

    model = torch.nn.Linear(8, 1)
    config = GenericTrainerConfig(
        progress_bar=False,
        checkpoint=CheckpointConfig(root_dir=tmp_path, save_every_n_steps=2, max_checkpoints=None),
    )
    trainer = GenericTrainer(config, model, torch.optim.SGD(model.parameters(), lr=0.1))
    trainer.set_training_step(
        lambda t, batch, *_: {"loss": torch.nn.functional.mse_loss(t.model(batch["x"]), batch["y"])}
    )
    trainer.fit([make_loader(Features(20), batch_size=4)], max_epochs=1)  # 5 steps
    reasons = {}
    for path in sorted(tmp_path.glob("*.ckpt")):
        if path.name != "latest.ckpt":
            saved = read_checkpoint(path)
            reasons[saved["global_step"]] = saved["resume_state"]["save_reason"]
    assert reasons == {2: "step", 4: "step", 5: "epoch_end"}
    assert all(type(r) is str for r in reasons.values())
