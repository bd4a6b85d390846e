"""Execute the notebooks top to bottom in a Jupyter kernel that runs this interpreter.

The notebooks are committed with their outputs cleared. Here nbclient runs each one in a kernel
started from a ``python3`` kernelspec written to a temporary folder (first on ``JUPYTER_PATH``) whose
command is ``sys.executable``, so the kernel imports the same torch and, through ``PYTHONPATH``, the
same checkout as the tests. A notebook fails its tests when a cell raises, when its printed verdict
is missing or false, or when its figure is not produced (an ``image/png`` output, and a PNG file in
the folder given by ``NOTEBOOK_FIGURES_DIR``).
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS = ROOT / "notebooks"
NAMES = ("mid_epoch_resume", "skip_vs_state")
CELL_TIMEOUT_S = 120
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
PROBE = "import sys\nprint('kernel sys.prefix:', sys.prefix)"
WIDGET_MIME = "application/vnd.jupyter.widget-view+json"


@attrs.frozen
class Executed:
    """A notebook after execution, and the folder its figures were saved to."""

    notebook: Any
    figures: Path

    def outputs(self) -> Iterator[Any]:
        for cell in self.notebook.cells:
            if cell.cell_type == "code":
                yield from cell.get("outputs", [])

    def stream(self, name: str) -> str:
        return "".join(
            o.text for o in self.outputs() if o.output_type == "stream" and o.name == name
        )

    def mime_count(self, mime: str) -> int:
        return sum(mime in o.get("data", {}) for o in self.outputs())


@pytest.fixture(scope="module")
def run_notebook(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Executed]:
    """Execute a notebook once per module (cached); the kernel is this interpreter."""
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    pytest.importorskip("matplotlib")
    jupyter = tmp_path_factory.mktemp("jupyter")
    spec = jupyter / "kernels" / "python3"
    spec.mkdir(parents=True)
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    kernel = {"argv": argv, "display_name": "Python 3 (tests)", "language": "python"}
    (spec / "kernel.json").write_text(json.dumps(kernel))
    cache: dict[str, Executed] = {}

    def run(name: str) -> Executed:
        if name not in cache:
            figures = tmp_path_factory.mktemp(f"figures_{name}")
            notebook = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
            notebook.cells.append(nbformat.v4.new_code_cell(PROBE))
            client = nbclient.NotebookClient(
                notebook,
                kernel_name="python3",
                timeout=CELL_TIMEOUT_S,
                resources={"metadata": {"path": str(NOTEBOOKS)}},
            )
            with pytest.MonkeyPatch.context() as env:
                env.setenv("NOTEBOOK_FIGURES_DIR", str(figures))
                # the kernel's own inline backend draws the figures as image/png outputs
                env.delenv("MPLBACKEND", raising=False)
                for var, first in (("JUPYTER_PATH", jupyter), ("PYTHONPATH", ROOT)):
                    env.setenv(
                        var, os.pathsep.join(filter(None, [str(first), os.environ.get(var)]))
                    )
                client.execute()  # raises CellExecutionError, with the traceback, if a cell raises
            cache[name] = Executed(notebook, figures)
        return cache[name]

    return run


@pytest.mark.notebook
@pytest.mark.parametrize("name", NAMES)
def test_committed_with_outputs_cleared(name: str) -> None:
    notebook = json.loads((NOTEBOOKS / f"{name}.ipynb").read_text())
    assert notebook["metadata"]["kernelspec"]["name"] == "python3"
    for index, cell in enumerate(notebook["cells"]):
        if cell["cell_type"] == "code":
            assert cell["outputs"] == [], f"cell {index} of {name}.ipynb has outputs"
            assert cell["execution_count"] is None, f"cell {index} of {name}.ipynb was executed"


@pytest.mark.notebook
def test_readme_links_both_notebooks() -> None:
    readme = (NOTEBOOKS / "README.md").read_text()
    for name in NAMES:
        assert f"]({name}.ipynb)" in readme, name


@pytest.mark.notebook
@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_runs_top_to_bottom_in_this_interpreter(
    run_notebook: Callable[[str], Executed], name: str
) -> None:
    executed = run_notebook(name)
    errors = [o for o in executed.outputs() if o.output_type == "error"]
    assert not errors, [f"{o.ename}: {o.evalue}" for o in errors]
    text = executed.stream("stdout") + executed.stream("stderr")
    assert "Traceback" not in text
    assert f"kernel sys.prefix: {sys.prefix}\n" in executed.stream("stdout")


@pytest.mark.notebook
@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_plot_is_produced(run_notebook: Callable[[str], Executed], name: str) -> None:
    executed = run_notebook(name)
    assert executed.mime_count("image/png") >= 1
    figure = executed.figures / f"{name}.png"
    assert figure.is_file(), sorted(p.name for p in executed.figures.iterdir())
    assert figure.read_bytes().startswith(PNG_MAGIC)


@pytest.mark.notebook
@pytest.mark.slow
def test_mid_epoch_resume_is_bit_exact(run_notebook: Callable[[str], Executed]) -> None:
    executed = run_notebook("mid_epoch_resume")
    stdout = executed.stream("stdout")
    assert "bit-exact resume: True" in stdout
    assert "bit-exact resume: False" not in stdout
    checks = re.findall(r"identical: (True|False)", stdout)
    assert len(checks) == 5 and set(checks) == {"True"}, checks
    assert stdout.count("stopped at epoch") == 2  # two KeyboardInterrupts, both mid-epoch
    assert "stopped at epoch 0, batch 35 of 60" in stdout
    assert "stopped at epoch 1, batch 35 of 60" in stdout
    assert "completed: resumed after step 90, finished at step 120" in stdout
    assert re.search(r"schedule position 30\b", stdout)  # the inspect summary of latest.ckpt


@pytest.mark.notebook
@pytest.mark.slow
def test_mid_epoch_resume_shows_the_fallback_warning(
    run_notebook: Callable[[str], Executed],
) -> None:
    stderr = run_notebook("mid_epoch_resume").stream("stderr")
    warnings = re.findall(r"Restoring 'MembraneStream' by skipping \d+ items.*", stderr)
    assert len(warnings) == 2, warnings  # the demonstration, and the resume after the "restart"
    assert all("load_state_dict()" in w for w in warnings)  # the warning names the fix


@pytest.mark.notebook
@pytest.mark.slow
def test_progress_bar_renders(run_notebook: Callable[[str], Executed]) -> None:
    executed = run_notebook("mid_epoch_resume")
    if importlib.util.find_spec("ipywidgets") is None:
        # tqdm.auto falls back to text bars (with one TqdmWarning) instead of raising
        assert re.search(r"epoch 0:\s+\d+%\|", executed.stream("stderr"))
    else:
        assert executed.mime_count(WIDGET_MIME) >= 1


@pytest.mark.notebook
@pytest.mark.slow
def test_skip_vs_state_runs_the_benchmark_and_its_own_measurement(
    run_notebook: Callable[[str], Executed],
) -> None:
    executed = run_notebook("skip_vs_state")
    stdout = executed.stream("stdout")
    assert "python -m benchmarks restore --quick: exit status 0" in stdout
    assert executed.mime_count("image/png") >= 2  # the benchmark's figure and the notebook's own
    assert executed.mime_count("text/markdown") >= 1  # the benchmark's tables
    rows = re.findall(r"^\s+([\d,]+) +[\d.]+ ms +[\d.]+ ms +[\d.]+×$", stdout, flags=re.MULTILINE)
    assert rows == ["10", "100", "1,000", "10,000"], stdout
    assert "every first batch after a restore equalled the uninterrupted pass's" in stdout
