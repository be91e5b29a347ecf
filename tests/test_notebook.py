"""notebooks/results.py (a jupytext percent script) executes end to end on a small set of hand-built records, the way
the documented command runs it (a kernel through nbclient): figures inline, every output in a scratch folder, none
in the results tree."""

from __future__ import annotations

import pytest

from repro import PROJECT_ROOT
from tests.test_tables import write_records


def test_results_notebook_executes(tmp_path, monkeypatch):
    jupytext = pytest.importorskip("jupytext")
    nbclient = pytest.importorskip("nbclient")
    results = tmp_path / "results"
    write_records(results)
    before = sorted(p.relative_to(results) for p in results.rglob("*"))
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setenv("REPRO_RESULTS_DIR", str(results))
    monkeypatch.delenv("REPRO_OUT_DIR", raising=False)  # the default: a new scratch folder
    monkeypatch.setenv("TMPDIR", str(scratch))  # ... under here (tempfile.mkdtemp in the kernel)
    monkeypatch.setenv("REPRO_TABLES", "glue")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    nb = jupytext.read(PROJECT_ROOT / "notebooks" / "results.py")
    client = nbclient.NotebookClient(
        nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(PROJECT_ROOT / "notebooks")}}
    )
    client.execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    assert sorted(p.relative_to(results) for p in results.rglob("*")) == before  # nothing written into results/
    (out,) = scratch.glob("repro-notebook-*")
    assert (out / "tables" / "glue.md").exists()
    assert {p.name for p in (out / "plots").iterdir()} == {
        "glue_score_vs_params.png",
        "glue_lora_minus_ft.png",
        "glue_curves.png",
    }
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) == 3  # the figures drawn inline, not an object's repr printed
    text = "".join(str(o.get("text", "")) for o in outputs)  # what the cells printed
    assert "IPython.core.display.Image object" not in text  # (an image's own output keeps that as its plain fallback)
    assert "records" in text and "no records of table rank" in text and "no LoRA factors" in text
