"""Inputs that used to be accepted silently, or failed unclearly, get a clear error or warning."""

from __future__ import annotations

import logging

import pytest
import torch

from statefuldata import IncompatibleStateError, MultiDataLoaderConfig, make_loader
from tests.data import PlainStream
from tests.trainer.test_fit import eight_batches, linear_trainer
from trainer import (
    CheckpointConfig,
    GenericTrainer,
    GenericTrainerConfig,
    PerformanceConfig,
    PreemptionConfig,
)
from trainer.checkpoints import read_checkpoint, write_checkpoint


def test_infinite_loss_weight_is_refused() -> None:
    with pytest.raises(ValueError, match=r"'loss_weights_per_loader' must hold finite numbers"):
        GenericTrainerConfig(loss_weights_per_loader=[float("inf")])


def test_an_epoch_of_zero_steps_is_refused_at_fit(tmp_path) -> None:
    trainer = linear_trainer(
        tmp_path,
        train_loader_config=MultiDataLoaderConfig(
            epoch_length_policy="fixed_num_steps", steps_per_epoch=0
        ),
    )
    with pytest.raises(ValueError, match=r"the train epoch has 0 steps .*steps_per_epoch >= 1"):
        trainer.fit([eight_batches()], max_epochs=1)


@pytest.mark.parametrize(
    ("signals", "match"),
    [
        (("SIGTREM",), r"holds 'SIGTREM', which is not a signal name"),
        (("SIGKILL",), r"holds SIGKILL, which no process can catch"),
        (("SIGSTOP",), r"holds SIGSTOP, which no process can catch"),
    ],
)
def test_bad_preemption_signals_are_refused(signals, match) -> None:
    with pytest.raises(ValueError, match=match):
        PreemptionConfig(signals=signals)


def test_root_dir_none_says_what_to_pass() -> None:
    with pytest.raises(TypeError, match=r"'root_dir' must be a folder path.*\(got None\)"):
        CheckpointConfig(root_dir=None)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_device_without_cuda_is_a_clear_error(tmp_path) -> None:
    model = torch.nn.Linear(2, 1)
    config = GenericTrainerConfig(device="cuda", checkpoint=CheckpointConfig(root_dir=tmp_path))
    with pytest.raises(
        ValueError, match=r"device='cuda' but CUDA is not available .*device='auto'"
    ):
        GenericTrainer(config, model, torch.optim.SGD(model.parameters(), lr=0.1))


def test_unknown_device_string_is_a_clear_error(tmp_path) -> None:
    model = torch.nn.Linear(2, 1)
    config = GenericTrainerConfig(device="gpu", checkpoint=CheckpointConfig(root_dir=tmp_path))
    with pytest.raises(ValueError, match=r"'device' must be 'auto', 'cpu', 'cuda'.*got 'gpu'"):
        GenericTrainer(config, model, torch.optim.SGD(model.parameters(), lr=0.1))


def test_a_model_where_the_optimizer_goes_is_named(tmp_path) -> None:
    model = torch.nn.Linear(2, 1)
    config = GenericTrainerConfig(checkpoint=CheckpointConfig(root_dir=tmp_path))
    with pytest.raises(
        TypeError, match=r"optimizer 0 must be a torch.optim.Optimizer \(got Linear\)"
    ):
        GenericTrainer(config, model, model)
    with pytest.raises(TypeError, match=r"'model' must be a torch.nn.Module \(got SGD\)"):
        GenericTrainer(config, torch.optim.SGD(model.parameters(), lr=0.1), model)


@pytest.mark.parametrize(
    ("loss", "error", "match"),
    [
        (
            lambda t, b: 0.5,
            TypeError,
            r"returned 'loss' as a float \(0.5\); return the loss tensor",
        ),
        (
            lambda t, b: torch.tensor(0.5),
            ValueError,
            r"'loss' does not require grad \(loader 'train_0', batch 0\)",
        ),
        (
            lambda t, b: t.model(b["x"]).sum().detach(),
            ValueError,
            r"does not require grad .*detached",
        ),
    ],
)
def test_a_loss_that_cannot_be_backpropagated_is_named(tmp_path, loss, error, match) -> None:
    trainer = linear_trainer(tmp_path)
    trainer.set_training_step(lambda t, batch, i, di, name: {"loss": loss(t, batch)})
    with pytest.raises(error, match=match):
        trainer.fit([eight_batches()], max_epochs=1)


def _nan_at(trainer: GenericTrainer, batch: int) -> None:
    calls = [0]

    def step(t, b, i, di, name):
        calls[0] += 1
        loss = torch.nn.functional.mse_loss(t.model(b["x"]), b["y"])
        return {"loss": loss * float("nan") if calls[0] == batch else loss}

    trainer.set_training_step(step)


def test_a_non_finite_loss_raises_before_the_step(tmp_path) -> None:
    trainer = linear_trainer(tmp_path)
    _nan_at(trainer, 3)
    with pytest.raises(
        FloatingPointError,
        match=r"non-finite loss nan at epoch 0, batch 2 of loader 'train_0' \(optimizer step 3\); "
        r"the optimizer step was not taken.*nonfinite_loss='skip'",
    ):
        trainer.fit([eight_batches()], max_epochs=1)
    assert trainer.state.global_step == 2 and torch.isfinite(trainer.model.weight).all()


def test_skip_mode_skips_and_counts_non_finite_steps(tmp_path, caplog) -> None:
    trainer = linear_trainer(tmp_path, nonfinite_loss="skip")
    _nan_at(trainer, 3)
    with caplog.at_level(logging.WARNING, logger="trainer"):
        result = trainer.fit([eight_batches()], max_epochs=1)
    assert result.status == "completed" and trainer.state.global_step == 8
    assert torch.isfinite(trainer.model.weight).all()
    assert trainer.metrics_history["train/skipped_steps"] == [[3, 1.0]]
    assert "Skipped the optimizer step: non-finite loss nan" in caplog.text
    saved = read_checkpoint(tmp_path / "latest.ckpt")["metrics_history"]["train/skipped_steps"]
    assert saved == [[3, 1.0]]


def test_a_fresh_run_refuses_a_folder_holding_another_run(tmp_path) -> None:
    linear_trainer(tmp_path).fit([eight_batches()], max_epochs=1)
    no_resume = PreemptionConfig(auto_resume=False)
    with pytest.raises(FileExistsError, match=r"already holds checkpoints .*allow_overwrite=True"):
        linear_trainer(tmp_path, preemption=no_resume).fit([eight_batches()], max_epochs=1)
    overwrite = CheckpointConfig(root_dir=tmp_path, allow_overwrite=True)
    trainer = linear_trainer(tmp_path, preemption=no_resume, checkpoint=overwrite)
    assert trainer.fit([eight_batches()], max_epochs=1).status == "completed"


def test_a_changed_trainer_configuration_is_refused_with_every_field(tmp_path, caplog) -> None:
    first = linear_trainer(tmp_path, performance=PerformanceConfig(gradient_accumulation_steps=3))
    first.fit([eight_batches()], max_epochs=1)
    changed = PerformanceConfig(gradient_accumulation_steps=1, clip_grad_norm=1.0)
    with pytest.raises(
        IncompatibleStateError,
        match=r"performance.gradient_accumulation_steps: saved 3, current 1; "
        r"performance.clip_grad_norm: saved None, current 1.0\). .*strict_resume=False",
    ):
        linear_trainer(tmp_path, performance=changed).fit([eight_batches()], max_epochs=2)
    loose = PreemptionConfig(strict_resume=False)
    with caplog.at_level(logging.WARNING, logger="trainer"):
        trainer = linear_trainer(tmp_path, performance=changed, preemption=loose)
        assert trainer.fit([eight_batches()], max_epochs=2).status == "completed"
    assert "no longer exact" in caplog.text


def test_a_harmless_configuration_change_resumes(tmp_path) -> None:
    linear_trainer(tmp_path).fit([eight_batches()], max_epochs=1)
    harmless = CheckpointConfig(root_dir=tmp_path, max_checkpoints=2, save_every_n_steps=5)
    trainer = linear_trainer(tmp_path, seed=99, checkpoint=harmless)
    assert trainer.fit([eight_batches()], max_epochs=2).status == "completed"
    assert trainer.state.global_step == 16


def test_another_optimizer_type_is_refused_on_resume(tmp_path) -> None:
    linear_trainer(tmp_path).fit([eight_batches()], max_epochs=1)
    torch.manual_seed(0)
    model = torch.nn.Linear(8, 1)
    config = GenericTrainerConfig(
        progress_bar=False, checkpoint=CheckpointConfig(root_dir=tmp_path)
    )
    trainer = GenericTrainer(config, model, torch.optim.Adam(model.parameters()))
    trainer.set_training_step(
        lambda t, b, i, di, n: {"loss": torch.nn.functional.mse_loss(t.model(b["x"]), b["y"])}
    )
    with pytest.raises(
        IncompatibleStateError,
        match=r"optimizers: saved \['torch.optim.sgd.SGD'\], current \['torch.optim.adam.Adam'\]",
    ):
        trainer.fit([eight_batches()], max_epochs=2)


def test_a_world_size_change_names_both_sizes(tmp_path) -> None:
    """A file from before elastic resume (per-rank positions) resumes only at its own world size;
    elastic resume itself is tested in tests/trainer/test_elastic.py."""
    linear_trainer(tmp_path).fit([eight_batches()], max_epochs=1)
    path = (tmp_path / "latest.ckpt").resolve()
    payload = read_checkpoint(path)
    payload["config_snapshot"]["world_size"] = 2
    del payload["dataloader_manager_state"]["train_iterator_state"]["fingerprint"]["world_sizes"]
    write_checkpoint(path, payload)
    with pytest.raises(
        IncompatibleStateError,
        match=r"written at world size 2 by a version without elastic resume .* this run has world "
        r"size 1; resume it with 2 processes",
    ):
        linear_trainer(tmp_path).fit([eight_batches()], max_epochs=2)


def test_a_loader_whose_len_lies_gets_one_warning(tmp_path, caplog) -> None:
    class Lying(PlainStream):
        def __len__(self) -> int:
            return 20

    trainer = linear_trainer(
        tmp_path,
        train_loader_config=MultiDataLoaderConfig(
            epoch_length_policy="fixed_num_steps", steps_per_epoch=12
        ),
    )
    trainer.set_training_step(
        lambda t, b, i, di, n: {"loss": (t.model.weight.sum() * b.float().mean()) ** 2}
    )
    with caplog.at_level(logging.WARNING, logger="statefuldata"):
        trainer.fit([make_loader(Lying(5), batch_size=1)], max_epochs=1)
    warnings = [r for r in caplog.records if "declares" in r.getMessage()]
    assert len(warnings) == 1
    assert (
        "loader 'train_0' declares 20 batches (len) but its pass yielded 5"
        in warnings[0].getMessage()
    )


def test_a_sharded_iterable_with_workers_that_under_reports_is_warned(caplog) -> None:
    from statefuldata import DataLoaderManager

    loader = make_loader(PlainStream(26), batch_size=4, num_workers=2)  # 7 declared, 8 yielded
    manager = DataLoaderManager([loader])
    with caplog.at_level(logging.WARNING, logger="statefuldata"):
        batches = list(manager.create_epoch_iterator("train", 0))
        batches += list(manager.create_epoch_iterator("train", 1))
    manager.close()
    assert len(batches) == 14
    assert "declares 7 batches (len) but its pass yielded 8" in caplog.text


def test_a_second_fit_on_the_same_folder_is_refused_while_the_first_runs(tmp_path) -> None:
    from trainer import Callback, CheckpointLockedError

    refusals: list[str] = []

    class SecondWriter(Callback):
        def on_optimizer_step(self, trainer) -> None:
            if trainer.state.global_step == 2:
                other = linear_trainer(tmp_path)
                with pytest.raises(CheckpointLockedError) as caught:
                    other.fit([eight_batches()], max_epochs=1)
                refusals.append(str(caught.value))

    first = linear_trainer(tmp_path, callbacks=(SecondWriter(),))
    assert first.fit([eight_batches()], max_epochs=1).status == "completed"
    assert len(refusals) == 1 and str(tmp_path) in refusals[0]
    assert "pid" in refusals[0]
    again = linear_trainer(tmp_path)  # released when the first fit() returned
    assert again.fit([eight_batches()], max_epochs=2).status == "completed"
