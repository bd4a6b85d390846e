from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from trainer.__main__ import COMMANDS, main
from trainer.checkpoints import V1_KEYS, build_payload, write_checkpoint
from trainer.resume import ResumeState

REPO = Path(__file__).resolve().parents[2]


def _manager_state(train_iterator_state: dict | None) -> dict:
    return {
        "choice_rng_state": {"seed": 1},
        "choice_rng": ("MT19937", torch.zeros(624, dtype=torch.int64), 0, 0, 0.0),
        "train_iterator_state": train_iterator_state,
        "val_iterator_state": None,
    }


ITERATOR_STATE = {
    "schedule_position": 12,
    "loader_states": [
        {"batch_idx": 5, "exhausted": False, "sampler_state": None, "dataset_state": None},
        {"batch_idx": 7, "exhausted": True, "sampler_state": None, "dataset_state": None},
    ],
    "total_batches": 12,
    "loader_cycles": {0: 0, 1: 2},
    "prefetched_batches": 0,
    "epoch": 3,
    "fingerprint": "9f2c01ab",
}


@pytest.fixture
def checkpoint(tmp_path: Path) -> Path:
    return _write(tmp_path / "c.ckpt", _manager_state(ITERATOR_STATE))


def _write(path: Path, manager_state: dict | None) -> Path:
    model = torch.nn.Linear(10, 10)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    payload = build_payload(
        model=model,
        optimizers=[optimizer],
        schedulers=[],
        scaler_state={
            "scale": 1024.0,
            "growth_factor": 2.0,
            "backoff_factor": 0.5,
            "growth_interval": 2000,
            "_growth_tracker": 3,
        },
        rng_states=None,
        dataloader_manager_state=manager_state,
        resume_state=ResumeState(epoch=3, global_step=42, batch_in_epoch=12, save_reason="step"),
        epoch=3,
        global_step=42,
    )
    return write_checkpoint(path, payload)


def test_text_summary(checkpoint: Path, capsys) -> None:
    assert main(["inspect", str(checkpoint)]) == 0
    out = capsys.readouterr().out
    assert "format version  1" in out
    assert "epoch           3" in out and "global step     42" in out
    assert "batch_in_epoch" in out and "save_reason" in out and "step" in out
    assert "data position   epoch 3, schedule position 12, total batches 12" in out
    assert "loader 0   batch_idx 5, exhausted False, cycles 0" in out
    assert "loader 1   batch_idx 7, exhausted True, cycles 2" in out
    assert "fingerprint     9f2c01ab" in out
    assert "model_state_dict" in out and "amp scale 1024.0" in out


def test_json_summary(checkpoint: Path, capsys) -> None:
    assert main(["inspect", str(checkpoint), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["format_version"] == 1 and summary["global_step"] == 42
    assert summary["resume_state"]["batch_in_epoch"] == 12
    data = summary["data"]
    assert data["fingerprint"] == "9f2c01ab" and data["schedule_position"] == 12
    assert [(x["batch_idx"], x["exhausted"], x["cycles"]) for x in data["loaders"]] == [
        (5, False, 0),
        (7, True, 2),
    ]
    assert set(summary["field_bytes"]) == set(V1_KEYS)
    assert all(isinstance(v, int) and v >= 0 for v in summary["field_bytes"].values())
    assert summary["field_bytes"]["model_state_dict"] > 4 * 110  # 110 float32 parameters
    assert summary["field_bytes"]["model_state_dict"] > summary["field_bytes"]["epoch"]
    assert summary["file_bytes"] == checkpoint.stat().st_size


@pytest.mark.parametrize(
    "manager_state", [None, _manager_state(None), _manager_state({"schedule_position": 0})]
)
def test_missing_data_state_is_shown_not_fatal(tmp_path: Path, manager_state, capsys) -> None:
    path = _write(tmp_path / "c.ckpt", manager_state)
    assert main(["inspect", str(path)]) == 0
    assert "data position" in capsys.readouterr().out
    assert main(["inspect", str(path), "--json"]) == 0
    json.loads(capsys.readouterr().out)


def test_unreadable_file_exits_1_with_the_reason(tmp_path: Path, capsys) -> None:
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(b"nope")
    assert main(["inspect", str(bad)]) == 1
    assert f"Cannot read checkpoint {bad}" in capsys.readouterr().err


def test_commands_registry_and_usage(capsys) -> None:
    assert "inspect" in COMMANDS
    with pytest.raises(SystemExit) as excinfo:
        main([])
    assert excinfo.value.code == 2
    assert "inspect" in capsys.readouterr().err


def test_python_dash_m_trainer_inspect(checkpoint: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "trainer", "inspect", str(checkpoint), "--json"],
        capture_output=True,
        text=True,
        cwd=REPO,
        check=True,
    )
    assert json.loads(result.stdout)["global_step"] == 42
