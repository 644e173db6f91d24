"""The walkthrough notebook runs top to bottom (quick settings), so it cannot rot."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

NOTEBOOK = Path(__file__).resolve().parents[1] / "analysis" / "walkthrough.ipynb"


@pytest.mark.slow
def test_walkthrough_notebook_runs(tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat", reason="nbformat is a test extra")
    nbclient = pytest.importorskip("nbclient", reason="nbclient is a test extra")
    monkeypatch.setenv("FREQLENS_NOTEBOOK_QUICK", "1")
    monkeypatch.setenv("FREQLENS_NOTEBOOK_OUT", str(tmp_path / "out"))
    monkeypatch.delenv("MPLBACKEND", raising=False)  # the kernel draws inline
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(notebook, timeout=600, kernel_name="python3",
                                     resources={"metadata": {"path": str(NOTEBOOK.parent)}})
    client.execute()
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    text = "".join(o.get("text", "") for o in outputs)
    assert "CACC" in text or "cacc" in text
    assert any("image/png" in o.get("data", {}) for o in outputs)  # the plots drew inline
    assert any("text/html" in o.get("data", {}) for o in outputs)  # the analysis showed its summary
    assert (tmp_path / "out" / "demo" / "results.json").is_file()
    if (tmp_path / "out" / "sst2-vanilla").exists():
        assert (tmp_path / "out" / "report" / "report.html").is_file()
