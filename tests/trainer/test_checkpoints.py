from __future__ import annotations

import logging
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from trainer.checkpoints import (
    FORMAT_VERSION,
    V1_KEYS,
    CheckpointError,
    apply_payload,
    build_payload,
    check_plain_types,
    load_checkpoint,
    read_checkpoint,
    save_checkpoint,
    write_checkpoint,
)
from trainer.config import PerformanceConfig
from trainer.precision import make_precision
from trainer.resume import ResumeState
from trainer.rng import capture_rng_states

FP16 = PerformanceConfig(use_amp=True, amp_dtype="float16")


def manager_state() -> dict:
    """A data-manager state shaped like statefuldata's DataLoaderManager.state_dict()."""
    loader = {
        "batch_idx": 4,
        "exhausted": False,
        "sampler_state": {"epoch": 1, "position": 8},
        "dataset_state": None,
    }
    return {
        "choice_rng_state": {"seed": 3, "draws": 5},
        "choice_rng": ("MT19937", torch.arange(624, dtype=torch.int64), 5, 0, 0.0),
        "train_iterator_state": {
            "schedule_position": 7,
            "loader_states": [loader, {**loader, "batch_idx": 3, "exhausted": True}],
            "total_batches": 7,
            "loader_cycles": {0: 0, 1: 1},
            "prefetched_batches": 0,
            "epoch": 1,
            "fingerprint": "f1ng3rpr1nt",
        },
        "val_iterator_state": None,
    }


class Run:
    """A model with 2 optimizers, 2 schedulers and an fp16 CPU precision (with GradScaler)."""

    def __init__(self, seed: int = 0) -> None:
        torch.manual_seed(seed)
        self.model = torch.nn.Sequential(
            torch.nn.Linear(6, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2)
        )
        self.optimizers = [
            torch.optim.SGD(self.model[0].parameters(), lr=0.1, momentum=0.9),
            torch.optim.Adam(self.model[2].parameters(), lr=0.01),
        ]
        self.schedulers = [
            torch.optim.lr_scheduler.StepLR(self.optimizers[0], step_size=2, gamma=0.5),
            torch.optim.lr_scheduler.ExponentialLR(self.optimizers[1], gamma=0.9),
        ]
        self.precision = make_precision(FP16, torch.device("cpu"))

    def train(self, steps: int) -> None:
        for _ in range(steps):
            with self.precision.autocast():
                loss = self.model(torch.randn(4, 6)).float().pow(2).mean()
            self.precision.backward(loss)
            for optimizer in self.optimizers:
                self.precision.unscale_(optimizer)
                self.precision.step(optimizer)
                optimizer.zero_grad()
            self.precision.update()
            for scheduler in self.schedulers:
                scheduler.step()

    def payload(self, **overrides) -> dict:
        kwargs = {
            "model": self.model,
            "optimizers": self.optimizers,
            "schedulers": self.schedulers,
            "scaler_state": self.precision.state_dict(),
            "rng_states": capture_rng_states(),
            "dataloader_manager_state": manager_state(),
            "resume_state": ResumeState(epoch=1, global_step=5, batch_in_epoch=7),
            "epoch": 1,
            "global_step": 5,
            "metrics_history": {"loss": [1.0, 0.5]},
            "config_snapshot": {"lr": 0.1},
        }
        return build_payload(**{**kwargs, **overrides})

    def apply(self, payload: dict, **kwargs) -> ResumeState:
        return apply_payload(
            payload,
            model=self.model,
            optimizers=self.optimizers,
            schedulers=self.schedulers,
            precision_or_scaler=self.precision,
            **kwargs,
        )


def assert_same_state(a, b) -> None:
    """Recursive equality with torch.equal on tensors."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys()
        for key in a:
            assert_same_state(a[key], b[key])
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            assert_same_state(x, y)
    else:
        assert a == b


def test_payload_has_exactly_the_spec_keys_and_types(tmp_path: Path) -> None:
    run = Run()
    run.train(2)
    path = write_checkpoint(tmp_path / "a.ckpt", run.payload())
    payload = torch.load(path, map_location="cpu", weights_only=True)
    assert list(payload) == list(V1_KEYS)
    assert payload["format_version"] == FORMAT_VERSION == 1
    assert payload["is_multi_dataloader_only"] is True
    assert isinstance(payload["save_timestamp"], float)
    assert (payload["epoch"], payload["global_step"]) == (1, 5)
    assert isinstance(payload["model_state_dict"], dict)
    assert [type(s) for s in payload["optimizer_state_dicts"]] == [dict, dict]
    assert [type(s) for s in payload["scheduler_state_dicts"]] == [dict, dict]
    assert payload["amp_scaler_state"]["scale"] == 65536.0
    rng = payload["rng_states"]
    assert list(rng) == ["python_random", "numpy_random", "torch_cpu", "torch_cuda"]
    assert isinstance(rng["python_random"], tuple) and isinstance(rng["numpy_random"], tuple)
    assert rng["torch_cpu"].dtype == torch.uint8
    assert rng["torch_cuda"] is None or isinstance(rng["torch_cuda"], list)
    data = payload["dataloader_manager_state"]
    assert list(data) == [
        "choice_rng_state",
        "choice_rng",
        "train_iterator_state",
        "val_iterator_state",
    ]
    assert isinstance(payload["choice_rng_state"], tuple)
    assert_same_state(payload["choice_rng_state"], data["choice_rng"])
    assert (
        payload["resume_state"] == ResumeState(epoch=1, global_step=5, batch_in_epoch=7).to_dict()
    )
    assert payload["metrics_history"] == {"loss": [1.0, 0.5]}
    assert payload["config_snapshot"] == {"lr": 0.1}
    assert read_checkpoint(path).keys() == payload.keys()


def test_choice_rng_state_comes_from_the_manager_state_only() -> None:
    state = manager_state()
    payload = Run().payload(dataloader_manager_state=state)
    assert payload["choice_rng_state"] is state["choice_rng"]
    assert Run().payload(dataloader_manager_state=None)["choice_rng_state"] is None


def test_round_trip_is_exact_and_training_continues_identically(tmp_path: Path) -> None:
    run = Run(seed=0)
    run.train(3)
    path = write_checkpoint(tmp_path / "a.ckpt", run.payload())
    saved = read_checkpoint(path)
    run.train(2)

    other = Run(seed=1)  # different weights, fresh optimizer/scheduler/scaler state
    resume = other.apply(read_checkpoint(path))
    assert resume == ResumeState(epoch=1, global_step=5, batch_in_epoch=7)
    assert_same_state(other.model.state_dict(), saved["model_state_dict"])
    for optimizer, state in zip(other.optimizers, saved["optimizer_state_dicts"], strict=True):
        assert_same_state(optimizer.state_dict(), state)
    for scheduler, state in zip(other.schedulers, saved["scheduler_state_dicts"], strict=True):
        assert_same_state(scheduler.state_dict(), state)
    assert other.precision.state_dict() == saved["amp_scaler_state"]

    other.train(2)  # rng_states were restored: the same batches are drawn
    assert_same_state(other.model.state_dict(), run.model.state_dict())
    for a, b in zip(other.optimizers, run.optimizers, strict=True):
        assert_same_state(a.state_dict(), b.state_dict())


def test_apply_checks_counts_before_changing_anything() -> None:
    run = Run()
    payload = run.payload()
    other = Run(seed=1)
    before = {k: v.clone() for k, v in other.model.state_dict().items()}
    with pytest.raises(
        ValueError,
        match=r"holds 2 optimizer state\(s\) but 1 optimizer\(s\) were given.*same order",
    ):
        apply_payload(
            payload, model=other.model, optimizers=other.optimizers[:1], schedulers=other.schedulers
        )
    with pytest.raises(ValueError, match=r"holds 2 scheduler state\(s\) but 0 scheduler\(s\)"):
        apply_payload(payload, model=other.model, optimizers=other.optimizers, schedulers=None)
    assert_same_state(other.model.state_dict(), before)


def test_apply_accepts_a_bare_grad_scaler_and_refuses_a_missing_one() -> None:
    run = Run()
    run.train(1)
    payload = run.payload()
    scaler = torch.amp.GradScaler("cpu")
    apply_payload(
        payload,
        model=run.model,
        optimizers=run.optimizers,
        schedulers=run.schedulers,
        precision_or_scaler=scaler,
    )
    assert scaler.state_dict() == payload["amp_scaler_state"]
    with pytest.raises(
        ValueError, match=r"holds a GradScaler state .* but the given scaler has no scaler"
    ):
        apply_payload(
            payload, model=run.model, optimizers=run.optimizers, schedulers=run.schedulers
        )
    apply_payload(
        payload, model=run.model, optimizers=run.optimizers, schedulers=run.schedulers, strict=False
    )


def test_apply_restores_the_data_manager_and_the_rngs() -> None:
    class FakeManager:
        state = None

        def load_state_dict(self, state: dict) -> None:
            self.state = state

    run = Run()
    payload = run.payload()
    expected = (random.random(), np.random.rand(), torch.rand(3))
    manager = FakeManager()
    run.apply(payload, dataloader_manager=manager)
    assert manager.state is payload["dataloader_manager_state"]
    got = (random.random(), np.random.rand(), torch.rand(3))
    assert got[:2] == expected[:2] and torch.equal(got[2], expected[2])
    with pytest.raises(
        ValueError, match=r"holds no dataloader_manager_state \(got None\).*dataloader_manager=None"
    ):
        run.apply(run.payload(dataloader_manager_state=None), dataloader_manager=manager)


def test_write_refuses_types_weights_only_cannot_load(tmp_path: Path) -> None:
    payload = Run().payload(metrics_history={"loss": np.zeros(3)})
    with pytest.raises(
        TypeError, match=r"payload\['metrics_history'\]\['loss'\] is a numpy.ndarray.*weights_only"
    ):
        write_checkpoint(tmp_path / "a.ckpt", payload)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(TypeError, match=r"numpy\.float64"):
        check_plain_types({"x": [1, (2, np.float64(3.0))]})
    check_plain_types({"a": [1, 2.0, "s", None, True, (torch.zeros(1),)], 3: {"b": torch.float16}})


def test_write_is_atomic_and_leaves_no_temp_files(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "a.ckpt"
    write_checkpoint(path, Run().payload(epoch=1))
    write_checkpoint(path, Run().payload(epoch=2))
    assert [p.name for p in path.parent.iterdir()] == ["a.ckpt"]
    assert read_checkpoint(path)["epoch"] == 2


def test_a_loaded_payload_owns_its_tensors_in_lists_and_tuples(tmp_path: Path) -> None:
    """Read memory-mapped, every walked tensor is copied out of the map: overwriting the file in
    place afterwards (its mapped pages would see the change) leaves the payload as it was."""
    payload = Run().payload()
    state = {"x": [torch.arange(4.0), (torch.full((3,), 7.0), 5)], "flat": (1, 2)}
    payload["scheduler_state_dicts"] = [state]
    path = write_checkpoint(tmp_path / "a.ckpt", payload)
    loaded = read_checkpoint(path)
    with path.open("r+b") as f:
        f.write(b"\0" * path.stat().st_size)
    data = loaded["scheduler_state_dicts"][0]
    assert torch.equal(data["x"][0], torch.arange(4.0))
    assert torch.equal(data["x"][1][0], torch.full((3,), 7.0)) and data["x"][1][1] == 5
    assert data["flat"] == (1, 2)
    assert torch.equal(loaded["rng_states"]["torch_cpu"], payload["rng_states"]["torch_cpu"])
    assert loaded["rng_states"]["python_random"] == payload["rng_states"]["python_random"]


@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty"])
def test_corrupt_files_raise_checkpoint_error_naming_the_path(tmp_path: Path, damage: str) -> None:
    path = write_checkpoint(tmp_path / "a.ckpt", Run().payload())
    data = path.read_bytes()
    path.write_bytes(
        {"garbage": b"not a checkpoint" * 10, "truncated": data[: len(data) // 2], "empty": b""}[
            damage
        ]
    )
    with pytest.raises(
        CheckpointError, match=rf"Cannot read checkpoint {path}.*corrupt or truncated"
    ):
        read_checkpoint(path)


def test_missing_file_and_non_v1_payloads(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="No checkpoint at"):
        read_checkpoint(tmp_path / "nope.ckpt")
    torch.save([1, 2], tmp_path / "list.ckpt")
    with pytest.raises(CheckpointError, match="holds a list, not a dict"):
        read_checkpoint(tmp_path / "list.ckpt")
    payload = Run().payload()
    del payload["rng_states"]
    payload["extra"] = 1
    torch.save(payload, tmp_path / "keys.ckpt")
    with pytest.raises(
        CheckpointError, match=r"missing keys \['rng_states'\], unknown keys \['extra'\]"
    ):
        read_checkpoint(tmp_path / "keys.ckpt")


def test_future_format_version_is_refused(tmp_path: Path) -> None:
    payload = Run().payload()
    payload["format_version"] = 2
    torch.save(payload, tmp_path / "future.ckpt")
    with pytest.raises(
        ValueError,
        match=r"format_version 2, but this library supports up to format_version 1; upgrade trainer",
    ):
        read_checkpoint(tmp_path / "future.ckpt")


def test_legacy_file_is_migrated_with_one_warning(tmp_path: Path, caplog) -> None:
    run = Run()
    run.train(2)
    legacy = {
        "epoch": 3,
        "global_step": 40,
        "model_state_dict": run.model.state_dict(),
        "optimizer_state_dict": run.optimizers[0].state_dict(),
        "scheduler_state_dict": run.schedulers[0].state_dict(),
        "scaler_state_dict": run.precision.state_dict(),
        "best_metric": 0.3,
    }
    torch.save(legacy, tmp_path / "old.ckpt")
    with caplog.at_level(logging.WARNING, logger="trainer.checkpoints"):
        payload = read_checkpoint(tmp_path / "old.ckpt")
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    message = warnings[0].getMessage()
    assert "old.ckpt is a legacy file" in message and "Re-save it" in message
    assert "optimizer_state_dict -> optimizer_state_dicts" in message and "best_metric" in message
    assert list(payload) == list(V1_KEYS)
    assert payload["format_version"] == 1
    assert len(payload["optimizer_state_dicts"]) == 1 and len(payload["scheduler_state_dicts"]) == 1
    assert payload["amp_scaler_state"] == run.precision.state_dict()
    assert (
        payload["resume_state"]
        == ResumeState(epoch=3, global_step=40, save_reason="legacy").to_dict()
    )
    assert payload["rng_states"] is None and payload["dataloader_manager_state"] is None

    other = Run(seed=1)
    apply_payload(
        payload,
        model=other.model,
        optimizers=other.optimizers[:1],
        schedulers=other.schedulers[:1],
        precision_or_scaler=other.precision,
    )
    assert_same_state(other.model.state_dict(), run.model.state_dict())
    write_checkpoint(tmp_path / "new.ckpt", payload)  # re-saving writes v1
    assert torch.load(tmp_path / "new.ckpt", weights_only=True)["format_version"] == 1


def test_legacy_file_without_a_model_is_refused(tmp_path: Path) -> None:
    torch.save({"weights": torch.zeros(2)}, tmp_path / "x.ckpt")
    with pytest.raises(
        CheckpointError,
        match=r"no format_version and no 'model_state_dict' \(keys: \['weights'\]\)",
    ):
        read_checkpoint(tmp_path / "x.ckpt")


class FakeTrainer:
    """The two methods save_checkpoint/load_checkpoint rely on."""

    def __init__(self, run: Run) -> None:
        self.run = run
        self.restored: ResumeState | None = None

    def checkpoint_payload(self) -> dict:
        return self.run.payload()

    def restore_from_payload(self, payload: dict) -> ResumeState:
        self.restored = self.run.apply(payload)
        return self.restored


def test_public_save_and_load_checkpoint_use_the_trainer_methods(tmp_path: Path) -> None:
    run = Run()
    run.train(2)
    path = save_checkpoint(tmp_path / "t.ckpt", FakeTrainer(run))
    assert path == tmp_path / "t.ckpt"
    other = FakeTrainer(Run(seed=1))
    assert load_checkpoint(path, other) == ResumeState(epoch=1, global_step=5, batch_in_epoch=7)
    assert_same_state(other.run.model.state_dict(), run.model.state_dict())


def test_checkpoint_manager_is_reachable_from_checkpoints() -> None:
    from trainer.checkpoints import CheckpointManager
    from trainer.checkpoints.manager import CheckpointManager as Direct

    assert CheckpointManager is Direct
