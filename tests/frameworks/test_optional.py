"""The frameworks stay optional: statefuldata imports, and works, without any of them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BLOCK = "import sys\nfor name in ('lightning', 'pytorch_lightning', 'accelerate', 'datasets', 'webdataset'):\n    sys.modules[name] = None  # makes `import name` fail\n"


@pytest.mark.slow  # a fresh interpreter
def test_statefuldata_imports_and_runs_without_the_frameworks() -> None:
    code = BLOCK + (
        "import statefuldata, statefuldata.integrations\n"
        "from statefuldata import make_loader, verify_resume\n"
        "assert verify_resume(lambda: make_loader(list(range(8)), batch_size=3, shuffle=True)).ok\n"
        "try:\n"
        "    import statefuldata.integrations.lightning\n"
        "except ImportError:\n"
        "    print('adapter needs its framework')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=240
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "adapter needs its framework"
