"""The cookbook notebooks and the LangChain long-context example, run on the real default model.

Each notebook runs top to bottom in a fresh ``python3`` kernel (the kernel of
the interpreter running pytest), with ``cookbook/`` as its working directory.
The notebook is executed from an in-memory copy, so the committed file and
its saved outputs stay as they are.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[2]
COOKBOOK = ROOT / "cookbook"
NOTEBOOKS = sorted(COOKBOOK.glob("*.ipynb"))
EXAMPLE = "langchain_promptdistill.examples.long_context_rag"

# The slowest cell, the needle benchmark, took about two minutes on a shared two-core CPU.
CELL_TIMEOUT_SECONDS = 600


def test_cookbook_lists_five_notebooks():
    names = [path.name for path in NOTEBOOKS]
    assert len(names) == 5, names
    for name in names:
        assert name in (COOKBOOK / "README.md").read_text(encoding="utf-8"), f"{name} is missing from cookbook/README.md"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.stem)
def test_notebook_saved_with_outputs(path: Path):
    notebook = nbformat.read(path, as_version=4)
    first = notebook.cells[0]
    assert first.cell_type == "markdown"
    assert first.source.startswith("# ")
    for index, cell in enumerate(notebook.cells):
        if cell.cell_type != "code":
            continue
        assert cell.execution_count is not None, f"code cell {index} was not executed before saving"
        errors = [output for output in cell.outputs if output.output_type == "error"]
        assert errors == [], f"code cell {index} saved an error"


@pytest.mark.real_model
@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.stem)
def test_notebook_runs(path: Path):
    committed = path.read_bytes()
    notebook = nbformat.read(path, as_version=4)
    client = NotebookClient(
        notebook,
        timeout=CELL_TIMEOUT_SECONDS,
        kernel_name="python3",
        resources={"metadata": {"path": str(COOKBOOK)}},
    )
    # A failing cell raises CellExecutionError with the cell's traceback.
    client.execute()
    assert path.read_bytes() == committed


def run_example(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", EXAMPLE, *args], capture_output=True, text=True, timeout=600, cwd=ROOT
    )


@pytest.mark.real_model
@pytest.mark.slow
def test_example_prints_answer_and_speed():
    completed = run_example("--chunks", "8")
    assert completed.returncode == 0, completed.stderr
    lines = dict(line.split(":", 1) for line in completed.stdout.splitlines() if ":" in line)
    assert lines["question"].strip() == "What does the break statement do?"
    assert re.fullmatch(r"8 of [\d,]+ chunks of Python's documentation", lines["retrieved"].strip())
    assert lines["answer"].strip()
    assert lines["full model's answer"].strip()
    assert re.fullmatch(
        r"[\d.]+ s with PromptDistill, [\d.]+ s with the full model \([\d.]+x faster\)",
        lines["time to first token"].strip(),
    )
    assert re.fullmatch(
        r"kept [\d,]+ of [\d,]+ prompt tokens \(\d+%\) at layer [\d, ]+", lines["tokens"].strip()
    )


@pytest.mark.real_model
def test_example_rejects_too_many_chunks():
    completed = run_example("--chunks", "120")
    assert completed.returncode != 0
    assert "pass a smaller --chunks" in completed.stderr
