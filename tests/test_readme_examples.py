"""The README's "Where you train" examples run as they are written (code blocks keyed by heading)."""

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
