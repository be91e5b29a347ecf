"""`python -m repro.tables <table> --stat S`: one number per cell, worked out by hand from hand-built records
(tests/test_tables.py's write_records); nothing written; an unknown statistic refused."""

from __future__ import annotations

import pytest

from repro import tables
from tests.test_tables import write_records


def line(md: str, start: str) -> list[str]:
    row = next(x for x in md.splitlines() if x.startswith(start))
    return [c.strip() for c in row.strip("|").split("|")]


@pytest.fixture
def results(tmp_path):
    write_records(tmp_path / "results")
    return tmp_path / "results"


def test_median_is_one_number_per_cell(results):
    """glue's columns: MNLI SST-2 MRPC CoLA QNLI QQP RTE STS-B. tiny-roberta LoRA: MRPC 70, 68 (+1 failed) -> 69.0;
    CoLA 12.0; RTE 50, 60, 55 -> 55.0. FT: MRPC both seeds failed; RTE 52, 56 -> 54.0. Avg: not every task."""
    md = tables.compact("glue", results, "median")
    head = line(md, "| Model")
    lora = dict(zip(head, line(md, "| tiny-roberta (for roberta-base) | LoRA |")))
    assert (lora["MRPC"], lora["CoLA"], lora["RTE"], lora["SST-2"], lora["Avg"]) == ("69.0", "12.0", "55.0", "-", "-")
    ft = dict(zip(head, line(md, "| tiny-roberta (for roberta-base) | FT")))
    assert (ft["MRPC"], ft["RTE"]) == ("failed ×2", "54.0")
    assert "±" not in md and "(n=" not in md


@pytest.mark.parametrize(
    "stat, rte",
    [("mean", "55.0"), ("std", "5.0"), ("n", "3"), ("paper", "86.6"), ("diff", f"{55.0 - 86.6:.1f}")],
)
def test_every_statistic(results, stat, rte):
    md = tables.compact("glue", results, stat)
    head = line(md, "| Model")
    lora = dict(zip(head, line(md, "| tiny-roberta (for roberta-base) | LoRA |")))
    assert lora["RTE"] == rte
    assert ("Avg" in head) == (stat not in ("std", "n"))


def test_the_paper_row_averages_over_the_tables_tasks(results):
    """The paper row (roberta-base LoRA, Table 2) has every task of glue: its Avg is the paper's printed Avg."""
    md = tables.compact("glue", results, "paper")
    head = line(md, "| Model")
    row = dict(zip(head, line(md, "| roberta-base | LoRA |")))
    paper = tables.load_paper(tables.load_table_config("glue"))
    lora = next(r for r in paper["rows"] if (r["model"], r["method"]) == ("roberta-base", "LoRA"))
    assert row["Avg"] == f"{lora['values'][-1]:.1f}"


def test_cli_prints_and_writes_nothing(results, capsys):
    tables.main(["glue", "--results-dir", str(results), "--stat", "median"])
    assert "# Table glue: median" in capsys.readouterr().out
    assert not (results / "tables").exists()
    code = tables.main(["glue", "--results-dir", str(results), "--stat", "best"])  # one line, exit 2 (repro.cli)
    assert code == 2 and "invalid choice: 'best'" in capsys.readouterr().err
