"""The notebooks run top to bottom at their default (small) sizes, and are committed clean."""

import pathlib
import time

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = sorted((pathlib.Path(__file__).parents[1] / "notebooks").glob("*.ipynb"))


def test_there_are_six_notebooks_committed_without_outputs():
    assert len(NOTEBOOKS) == 6
    for path in NOTEBOOKS:
        notebook = nbformat.read(path, as_version=4)
        nbformat.validate(notebook)
        first = notebook.cells[0]
        assert first.cell_type == "markdown" and "**Time:**" in first.source, path.name
        for cell in notebook.cells:
            if cell.cell_type == "code":
                assert not cell.outputs and cell.execution_count is None, path.name


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_top_to_bottom(path, tmp_path, monkeypatch):
    # The notebooks keep their data in tempfile.mkdtemp() directories (for the reader to
    # look at); under the test, the kernel's temporary directory is pytest's, cleaned up.
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    notebook = nbformat.read(path, as_version=4)
    client = NotebookClient(
        notebook,
        timeout=300,  # per cell
        kernel_name="python3",
        resources={"metadata": {"path": str(tmp_path)}},
    )
    start = time.perf_counter()
    client.execute()  # raises CellExecutionError with the cell and its traceback
    print(f"\n{path.name}: {time.perf_counter() - start:.1f}s")
    figures = sum(
        "image/png" in output.get("data", {})
        for cell in notebook.cells
        if cell.cell_type == "code"
        for output in cell.outputs
    )
    assert figures >= 2, f"{path.name} drew {figures} figures"  # matplotlib's inline backend
