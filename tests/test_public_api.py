"""Every public module's names are re-exported by its package, and the packages stay layered."""

from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path

import pytest

import statefuldata
import trainer

PACKAGES = {"statefuldata": statefuldata, "trainer": trainer}
# Modules whose __all__ holds helpers for sibling modules or the CLI, not the user-facing surface.
INTERNAL = {
    "statefuldata.elastic",
    "statefuldata.ranks",
    "statefuldata.epoch",
    "statefuldata.state",
    "statefuldata.torchdata_state",
    "statefuldata.schedule",
    "trainer.batches",
    "trainer.checkpoints.atomic",
    "trainer.checkpoints.best",
    "trainer.checkpoints",
    "trainer.compat",
    "trainer.data",
    "trainer.distributed",
    "trainer.inflight",
    "trainer.metrics",
    "trainer.optim",
    "trainer.progress",
    "trainer.steps",
    "trainer.validators",
    "trainer.inspect",
    "trainer.checkpoints.integrity",
    "trainer.checkpoints.lock",
    "trainer.demo",
    "trainer.checkpoints.folder",
    "trainer.persistence",
    "trainer.plot",
    "trainer.validation",
    "trainer.__main__",
    "trainer.rng",
}


@pytest.mark.parametrize("name", sorted(PACKAGES))
def test_all_is_sorted_and_resolvable(name: str) -> None:
    package = PACKAGES[name]
    assert list(package.__all__) == sorted(package.__all__)
    assert all(hasattr(package, n) for n in package.__all__)


@pytest.mark.parametrize("name", sorted(PACKAGES))
def test_public_names_of_modules_are_exported(name: str) -> None:
    package = PACKAGES[name]
    for info in pkgutil.iter_modules(package.__path__):
        module_name = f"{name}.{info.name}"
        if module_name in INTERNAL or info.name.startswith("_"):
            continue
        module = importlib.import_module(module_name)
        missing = [n for n in getattr(module, "__all__", []) if n not in package.__all__]
        assert not missing, f"{module_name} exports {missing} that {name}.__all__ lacks"


def test_statefuldata_never_imports_trainer() -> None:
    root = Path(statefuldata.__file__).parent
    offenders = [
        p.name
        for p in root.glob("*.py")
        if "import trainer" in p.read_text() or "from trainer" in p.read_text()
    ]
    assert offenders == []
