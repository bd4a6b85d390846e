"""The README's examples run as they are written (code blocks keyed by heading); its links resolve."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
PARENT = "## Where you train"
SECTIONS = {  # heading -> the optional package it needs
    "In your own loop": None,
    "With Lightning": "lightning",
    "With accelerate": "accelerate",
    "With Hugging Face datasets": "datasets",
}


def code_of(heading: str) -> str:
    """The python code blocks of one ``### heading`` inside the parent section, joined."""
    text = README.read_text()
    start = text.index(PARENT)
    end = text.find("\n## ", start + len(PARENT))
    parent = text[start : end if end != -1 else len(text)]
    match = re.search(rf"^### {re.escape(heading)}\n(.*?)(?=^### |\Z)", parent, re.S | re.M)
    assert match, f"README has no '### {heading}' under '{PARENT}'"
    blocks = re.findall(r"```python\n(.*?)```", match.group(1), re.S)
    assert blocks, f"README section '{heading}' has no python example"
    return "\n".join(blocks)


def test_the_section_lists_every_example() -> None:
    text = README.read_text()
    headings = re.findall(r"^### (.+)$", text[text.index(PARENT) :], re.M)
    assert headings[: len(SECTIONS)] == list(SECTIONS)


@pytest.mark.slow  # the examples start DataLoader workers
@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("heading", list(SECTIONS))
def test_example_runs_as_written(heading: str, tmp_path, monkeypatch) -> None:
    if SECTIONS[heading]:
        pytest.importorskip(
            SECTIONS[heading], reason=f"{SECTIONS[heading]} is in the optional 'frameworks' extra"
        )
    monkeypatch.chdir(tmp_path)  # examples write their checkpoints in the working directory
    code = compile(code_of(heading), f"README.md: {heading}", "exec")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        exec(code, {"__name__": "readme_example"})


def _section(heading: str) -> str:
    text = README.read_text()
    start = text.index(heading)
    end = text.find("\n## ", start + len(heading))
    return text[start : end if end != -1 else len(text)]


@pytest.mark.slow  # trains three short runs with a DataLoader worker pool
@pytest.mark.filterwarnings("ignore")
def test_quick_start_runs_as_written(tmp_path, monkeypatch, capsys) -> None:
    blocks = re.findall(r"```python\n(.*?)```", _section("## Quick start"), re.S)
    assert len(blocks) == 1, "the quick start is one complete program"
    monkeypatch.chdir(tmp_path)  # it writes runs/ in the working directory
    exec(compile(blocks[0], "README.md: Quick start", "exec"), {"__name__": "readme_quick_start"})
    assert "resumed run equals the uninterrupted one" in capsys.readouterr().out
    assert (tmp_path / "runs" / "preempted" / "epoch=0001-step=000057.ckpt").is_file()


def test_every_python_block_is_run_by_a_test() -> None:
    run = _section("## Quick start") + "".join(code_of(heading) for heading in SECTIONS)
    every = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    missing = [block[:60] for block in every if block.strip() not in run]
    assert every and not missing, f"README python blocks that no test runs: {missing}"


@pytest.mark.parametrize(
    "document", ["README.md", "benchmarks/README.md", "notebooks/README.md", "CONTRIBUTING.md"]
)
def test_links_inside_the_repo_resolve(document: str) -> None:
    path = README.parent / document
    targets = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", path.read_text())
    local = [t for t in targets if not re.match(r"[a-z]+://|mailto:", t)]
    broken = [t for t in local if not (path.parent / t).exists()]
    assert not broken, f"{document} links to files that are not in the repo: {broken}"
