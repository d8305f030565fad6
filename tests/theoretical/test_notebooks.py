"""The theory notebooks (Parts 2 and 3) run top to bottom, hold their numbered questions, and are committed
with their outputs.

Every notebook asserts its own results against the project's code (`shared/`), so executing it is the test:
nbclient raises `CellExecutionError` on the first cell that fails. The committed copy is never overwritten.
"""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOK_DIR = ROOT / "theoretical"
# notebook -> the least number of numbered questions ("## Q<n>. ..." markdown cells) it must hold
NOTEBOOKS = {"part2_diffusion.ipynb": 8, "part3_ebm.ipynb": 7}


def read(name: str) -> nbformat.NotebookNode:
    return nbformat.read(NOTEBOOK_DIR / name, as_version=4)


def questions(nb: nbformat.NotebookNode) -> list[str]:
    return [c.source.splitlines()[0] for c in nb.cells if c.cell_type == "markdown" and c.source.startswith("## Q")]


@pytest.mark.parametrize(("name", "minimum"), NOTEBOOKS.items())
def test_notebook_holds_its_numbered_questions(name: str, minimum: int) -> None:
    found = questions(read(name))
    assert len(found) >= minimum, found
    assert [q.split(".")[0] for q in found] == [f"## Q{i}" for i in range(1, len(found) + 1)]


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_committed_notebook_shows_its_outputs(name: str) -> None:
    """A reader on GitHub sees the tables and plots: every code cell ran, in order, and there are figures."""
    code_cells = [c for c in read(name).cells if c.cell_type == "code"]
    assert [c.execution_count for c in code_cells] == list(range(1, len(code_cells) + 1))
    outputs = [o for c in code_cells for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    assert sum("image/png" in o.get("data", {}) for o in outputs) >= 4


@pytest.mark.slow
@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs_top_to_bottom(name: str) -> None:
    nb = read(name)
    client = NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOK_DIR)}})
    client.execute()  # raises CellExecutionError, with the cell and its traceback, if any cell fails
    code_cells = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.execution_count is not None for c in code_cells)
