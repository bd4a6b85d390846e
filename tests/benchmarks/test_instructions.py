"""The workloads ``python -m benchmarks.instructions`` runs under valgrind (here without it)."""

from __future__ import annotations

import pytest

from benchmarks import instructions


@pytest.mark.parametrize("name", [name for pair in instructions.PAIRS for name in pair[1:]])
def test_each_workload_runs_its_steps(name: str) -> None:
    assert instructions._run_workload(name, 1) == instructions.UNITS
