"""docs/inspect.ipynb runs from top to bottom, and what it shows holds no secret and no raw bytes."""

from __future__ import annotations

import os

import pytest

from conftest import ROOT, SHARED


def test_inspect_notebook_executes(fixtures):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    notebook = nbformat.read(ROOT / "docs" / "inspect.ipynb", as_version=4)
    os.environ.setdefault("RAFS_SHARED", str(SHARED))
    os.environ["RAFS_ROOT"] = str(ROOT)
    nbclient.NotebookClient(notebook, timeout=120, kernel_name="python3",
                            resources={"metadata": {"path": str(ROOT / "docs")}}).execute()
    html = [output["data"]["text/html"] for cell in notebook.cells if cell.cell_type == "code"
            for output in cell.get("outputs", []) if "text/html" in output.get("data", {})]
    images = [output for cell in notebook.cells if cell.cell_type == "code"
              for output in cell.get("outputs", []) if "image/png" in output.get("data", {})]
    assert len(html) >= 6 and images, "the notebook shows tables, images and a chart"
    for page in html:
        assert "b'" not in page and 'b"' not in page and "cipher_key" not in page
