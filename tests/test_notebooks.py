"""The notebooks in notebooks/ are committed without outputs and run end to end.

The slow test executes each one in a fresh Jupyter kernel with
``GENMNIST_NOTEBOOK_SMALL=1`` (the notebooks' tiny settings), importing genmnist from this
checkout, and fails on the first cell that raises or runs past `CELL_TIMEOUT`. The
training notebook reads real MNIST, so it needs ``GENMNIST_DATA`` (skipped without it).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = ROOT / "notebooks"
NOTEBOOKS = {
    "tour.ipynb": {"needs_data": False, "min_figures": 6},
    "train-vae-gan.ipynb": {"needs_data": True, "min_figures": 5},
    "diffusion-internals.ipynb": {"needs_data": False, "min_figures": 10},
}
#: Seconds one cell may run with the small settings (the slowest takes about 15 s on a
#: busy 2-core CPU).
CELL_TIMEOUT = 300


def read(name: str) -> dict:
    return json.loads((NOTEBOOK_DIR / name).read_text(encoding="utf-8"))


def test_every_notebook_is_listed_here():
    assert {p.name for p in NOTEBOOK_DIR.glob("*.ipynb")} == set(NOTEBOOKS)


@pytest.mark.parametrize("name", sorted(NOTEBOOKS))
def test_notebook_is_committed_without_outputs(name):
    cells = read(name)["cells"]
    code = [cell for cell in cells if cell["cell_type"] == "code"]
    assert code, f"{name} has no code cells"
    for i, cell in enumerate(code):
        assert cell["outputs"] == [], f"{name}: code cell {i} has outputs; strip them"
        assert cell["execution_count"] is None, f"{name}: code cell {i} has an execution count"


@pytest.mark.parametrize("name", sorted(NOTEBOOKS))
def test_notebook_reads_the_small_setting(name):
    # CI shrinks the notebooks through this variable; a notebook ignoring it would run for
    # minutes in the slow test
    source = "".join("".join(cell["source"]) for cell in read(name)["cells"])
    assert 'os.environ.get("GENMNIST_NOTEBOOK_SMALL") == "1"' in source


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(NOTEBOOKS))
def test_notebook_runs(name, tmp_path, monkeypatch, request):
    import nbformat
    from nbclient import NotebookClient

    if NOTEBOOKS[name]["needs_data"]:
        request.getfixturevalue("real_data")  # skips when GENMNIST_DATA is unset
    # the kernel inherits the environment: this checkout's genmnist, tiny settings, one
    # thread per process on a shared CPU
    path = os.environ.get("PYTHONPATH")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(ROOT / "src"), path])))
    monkeypatch.setenv("GENMNIST_NOTEBOOK_SMALL", "1")
    monkeypatch.setenv("OMP_NUM_THREADS", os.environ.get("OMP_NUM_THREADS", "1"))
    monkeypatch.setenv("MPLCONFIGDIR", str(tmp_path / "mpl"))
    notebook = nbformat.read(NOTEBOOK_DIR / name, as_version=4)
    notebook.cells.append(nbformat.v4.new_code_cell("import genmnist\nprint(genmnist.__file__)"))
    client = NotebookClient(
        notebook,
        timeout=CELL_TIMEOUT,
        kernel_name="python3",
        resources={"metadata": {"path": str(tmp_path)}},  # runs/ etc. land in tmp_path
    )
    client.execute()  # raises CellExecutionError, with the cell's traceback, on an error

    outputs = [out for cell in notebook.cells for out in cell.get("outputs", [])]
    warnings = [out["text"] for out in outputs if out.get("name") == "stderr"]
    assert not warnings, f"{name} wrote to stderr:\n" + "\n".join(warnings)
    figures = sum("image/png" in out.get("data", {}) for out in outputs)
    assert figures >= NOTEBOOKS[name]["min_figures"], f"{name} drew only {figures} figures"
    imported_from = Path(notebook.cells[-1].outputs[0]["text"].strip())
    assert imported_from.is_relative_to(ROOT / "src"), f"the kernel imported {imported_from}"
