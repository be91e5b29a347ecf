"""notebooks/results.py (a jupytext percent script) executes end to end on a small set of hand-built records."""

from __future__ import annotations

import pytest

from repro import PROJECT_ROOT
from tests.test_tables import write_records


def test_results_notebook_executes(tmp_path, monkeypatch):
    jupytext = pytest.importorskip("jupytext")
    nbclient = pytest.importorskip("nbclient")
    results = tmp_path / "results"
    write_records(results)
    monkeypatch.setenv("REPRO_RESULTS_DIR", str(results))
    monkeypatch.setenv("REPRO_OUT_DIR", str(tmp_path / "out"))
    monkeypatch.setenv("REPRO_TABLES", "glue")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    nb = jupytext.read(PROJECT_ROOT / "notebooks" / "results.py")
    client = nbclient.NotebookClient(
        nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(PROJECT_ROOT)}}
    )
    client.execute()
    errors = [
        o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.get("output_type") == "error"
    ]
    assert not errors
    assert (tmp_path / "out" / "tables" / "glue.md").exists()
    assert (tmp_path / "out" / "plots" / "glue_score_vs_params.png").exists()
    text = "".join(str(o.get("text", "")) for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert "records" in text
