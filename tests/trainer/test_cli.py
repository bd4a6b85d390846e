"""The command lines: help texts, a closed pipe, plot, and benchmarks without matplotlib."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.trainer.harness import SignalAt
from tests.trainer.test_loggers import acc_trainer, data
from trainer.plot import load_curves, plot_run, resume_steps

ROOT = Path(__file__).resolve().parents[2]


def _run(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=120, **kwargs
    )


@pytest.mark.parametrize("command", [(), ("demo",), ("inspect",), ("plot",)])
def test_help_texts_are_plain(command) -> None:
    done = _run("-m", "trainer", *command, "--help")
    assert done.returncode == 0 and "usage: python -m trainer" in done.stdout
    assert "``" not in done.stdout


def test_a_closed_pipe_ends_inspect_quietly(tmp_path) -> None:
    acc_trainer(tmp_path).fit(*data(), max_epochs=1)
    child = subprocess.Popen(
        [sys.executable, "-m", "trainer", "inspect", str(tmp_path / "latest.ckpt")],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    child.stdout.close()  # like `| head` exiting before the summary is written
    stderr = child.stderr.read()
    assert child.wait(timeout=60) == 0
    assert "Traceback" not in stderr and "BrokenPipeError" not in stderr


def test_benchmarks_help_without_matplotlib() -> None:
    hide = (
        "import sys, runpy\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] == 'matplotlib':\n"
        "            raise ImportError('matplotlib hidden')\n"
        "sys.meta_path.insert(0, Block())\n"
        "sys.argv = ['python -m benchmarks', '--help']\n"
        "runpy.run_module('benchmarks', run_name='__main__')\n"
    )
    done = _run("-c", hide)
    assert done.returncode == 0, done.stderr
    assert "usage:" in done.stdout and "--quick" in done.stdout


def test_plot_draws_the_curves_of_a_resumed_run(tmp_path) -> None:
    pytest.importorskip("matplotlib", reason="plot needs the optional matplotlib")
    first = acc_trainer(tmp_path, callbacks=(SignalAt(13),))
    assert first.fit(*data(), max_epochs=2).status == "preempted"
    acc_trainer(tmp_path).fit(*data(), max_epochs=2)
    assert resume_steps(tmp_path) == [13]
    curves = load_curves(tmp_path)
    assert [s for s, _ in curves["val/loss"]] == [10, 20]
    done = _run("-m", "trainer", "plot", str(tmp_path), "--out", str(tmp_path / "c.png"))
    assert done.returncode == 0, done.stderr
    assert f"wrote {tmp_path / 'c.png'}" in done.stdout
    png = (tmp_path / "c.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and 10_000 < len(png) < 2_000_000
    width, height = int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")
    assert (width, height) == (800, 720)  # 8 x 7.2 inches at 100 dpi: losses and other scalars
    (tmp_path / "metrics.csv").unlink()  # falls back to the checkpoint's metrics_history
    assert load_curves(tmp_path)["val/loss"] == curves["val/loss"]
    assert plot_run(tmp_path).name == "curves.png"


def test_plot_of_a_folder_without_a_run_says_so(tmp_path) -> None:
    done = _run("-m", "trainer", "plot", str(tmp_path))
    assert done.returncode == 1
    assert re.search(r"error: .* holds neither metrics.csv nor a checkpoint", done.stderr)
