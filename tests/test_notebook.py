"""notebooks/quickstart.ipynb runs from top to bottom in a Jupyter kernel (a few training steps)."""
from __future__ import annotations

import json

import nbformat
from nbclient import NotebookClient

from tests.helpers import REPO


def test_quickstart_notebook_runs_and_plots(tmp_path, monkeypatch):
    monkeypatch.setenv("QUICKSTART_STEPS", "4")
    monkeypatch.setenv("QUICKSTART_OUT", str(tmp_path))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    notebook = nbformat.read(REPO / "notebooks" / "quickstart.ipynb", as_version=4)
    NotebookClient(notebook, timeout=300, kernel_name="python3",
                   resources={"metadata": {"path": str(REPO / "notebooks")}}).execute()
    printed = "".join(output.get("text", "") for cell in notebook.cells if cell.cell_type == "code"
                      for output in cell.get("outputs", []))
    assert "Adam" in printed and "Balanced R-D" in printed and " bpp " in printed
    assert (tmp_path / "rd.png").stat().st_size > 10_000
    for run in ("adam", "balanced"):
        assert json.loads((tmp_path / run / "convergence.json").read_text())  # each run trained to its end
