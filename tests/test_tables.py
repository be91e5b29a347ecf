"""Tables and plots from hand-built records: statistics, the paper's numbers beside ours, missing and failed cells,
stand-in rows, cited rows, and the files written."""

from __future__ import annotations

import csv
import hashlib
import json
import statistics
from pathlib import Path

import pytest

from repro import plots, records, tables
from repro.errors import ReproError
from repro.results import Record, cell_cost, load_records


def write_record(
    root: Path,
    model: str,
    method: str,
    task: str,
    seed: int,
    score: float | None = None,
    status: str = "ok",
    variant: str = "default",
    error: str | None = None,
    table: str = "glue",
    metric: str = "accuracy",
    adapter_params: int = 2048,
    provenance: dict | None = None,
) -> Path:
    method_dir = method if variant == "default" else f"{method}.{variant}"
    path = Path(root) / table / model / method_dir / task / f"seed{seed}.json"
    record = {
        "status": status,
        "error": error,
        "table": table,
        "model": model,
        "method": method,
        "variant": variant,
        "task": task,
        "seed": seed,
        "metrics": {metric: score} if score is not None else {},
        "history": {
            "train_loss": [{"step": s, "epoch": s / 10, "loss": 0.7 - 0.05 * s - 0.001 * seed} for s in (1, 2, 3, 4)],
            "eval": [],
        },
        "trainable_params": adapter_params + 1000,
        "adapter_params": adapter_params,
        "head_params": 1000,
        "config": {"task": {"name": task, "main_metric": metric}},
        "fingerprint": "x",
        "provenance": provenance if provenance is not None else {"git_commit": "c0ffee", "git_dirty": False},
    }
    records.write_json_atomic(path, record)
    return path


def write_records(root: Path) -> None:
    """tiny-roberta (stand-in for roberta-base) LoRA: rte 3 seeds, mrpc 2 seeds + 1 failed, cola 1 seed;
    FT: rte 2 seeds, mrpc only failed; and one record of no row (adhoc variant)."""
    for seed, s in enumerate((0.50, 0.60, 0.55)):
        write_record(root, "tiny-roberta", "lora", "rte", seed, s)
    write_record(root, "tiny-roberta", "lora", "mrpc", 0, 0.70)
    write_record(root, "tiny-roberta", "lora", "mrpc", 1, 0.68)
    write_record(
        root,
        "tiny-roberta",
        "lora",
        "mrpc",
        2,
        status="failed",
        error="Diverged: diverged: training loss is not finite at step 3",
    )
    write_record(root, "tiny-roberta", "lora", "cola", 0, 0.12, metric="matthews_correlation")
    write_record(root, "tiny-roberta", "ft", "rte", 0, 0.52, adapter_params=1_600_000)
    write_record(root, "tiny-roberta", "ft", "rte", 1, 0.56, adapter_params=1_600_000)
    for seed in (0, 1):
        write_record(
            root, "tiny-roberta", "ft", "mrpc", seed, status="failed", error="RuntimeError: CUDA out of memory"
        )
    write_record(root, "tiny-roberta", "lora", "rte", 0, 0.5, variant="r99")


@pytest.fixture
def built(tmp_path):
    write_records(tmp_path / "results")
    return tmp_path / "results"


def find(rows, model, method, variant="default"):
    return next(r for r in rows if (r.model, r.method, r.variant) == (model, method, variant))


def test_statistics_and_paper_numbers(built):
    rows, unmatched, _ = tables.build("glue", built)
    lora = find(rows, "tiny-roberta", "lora")
    assert lora.stand_in and lora.paper_model == "roberta-base" and not lora.cited
    rte = lora.cells["rte"]
    assert rte.n == 3 and rte.seeds == [0, 1, 2]
    assert rte.mean == pytest.approx(55.0) and rte.std == pytest.approx(statistics.stdev([50, 60, 55]))
    assert rte.median == pytest.approx(55.0)
    assert rte.paper == 86.6 and rte.diff == pytest.approx(55.0 - 86.6)  # roberta-base LoRA RTE in Table 2
    assert lora.cells["cola"].median == pytest.approx(12.0) and lora.cells["cola"].paper == 63.4  # CoLA: MCC x100
    mrpc = lora.cells["mrpc"]
    assert mrpc.n == 2 and sum(mrpc.failed.values()) == 1
    assert lora.cells["sst2"].n == 0 and not lora.cells["sst2"].failed  # missing
    ft = find(rows, "tiny-roberta", "ft")
    assert ft.cited and ft.paper["params"] == "125.0M" and ft.cells["rte"].paper == 78.7
    assert ft.cells["mrpc"].n == 0 and ft.cells["mrpc"].failed["RuntimeError: CUDA out of memory"] == 2
    # every paper row is there (14), plus the two stand-in rows that have records
    assert len([r for r in rows if not r.stand_in]) == 14 and len([r for r in rows if r.stand_in]) == 2
    assert [r.variant for r in unmatched] == ["r99"]


def test_paper_row_mapping_by_label():
    paper = tables.load_paper(tables.load_table_config("glue"))
    table = tables.load_table_config("glue")
    mapped = {(r["model"], r["method"], r.get("variant", "default")): tables.paper_row(paper, r) for r in table["rows"]}
    assert all(mapped.values()), [k for k, v in mapped.items() if v is None]
    assert mapped[("roberta-large", "adapter_p", "r64")]["params"] == "3.0M"
    assert mapped[("roberta-large", "adapter_p", "r16")]["params"] == "0.8M"
    assert mapped[("roberta-large", "lora", "dagger")]["marker"] == "†"
    assert mapped[("roberta-large", "lora", "default")]["marker"] == ""
    assert mapped[("roberta-base", "adapter_d", "r48")]["params"] == "0.9M"
    assert len({id(v) for v in mapped.values()}) == 14  # one paper row each


def test_render_writes_md_csv_tex(built, tmp_path):
    md = tables.render("glue", built)
    out = built / "tables"
    assert (out / "glue.md").read_text() == md
    assert "| tiny-roberta (for roberta-base) | LoRA |" in md
    assert "55.0 ± 5.0 (n=3)" in md  # mean ± std (n)
    assert "69.0 ± 1.4 (n=2) +1 failed" in md  # partial cell with a failed seed
    assert "failed ×2" in md and "CUDA out of memory ×2" in md
    assert "| FT* |" in md and "paper (cited in the paper)" in md
    assert "-31.6" in md  # Δ median − paper for RTE: 55.0 − 86.6
    assert "(3/8 tasks)" in md  # partial average says so
    assert "r99" in md  # a record of no row is listed, not dropped
    rows = list(csv.DictReader(open(out / "glue.csv")))
    rte = next(r for r in rows if r["model"] == "tiny-roberta" and r["method"] == "lora" and r["task"] == "rte")
    assert rte["n"] == "3" and float(rte["median"]) == pytest.approx(55.0) and float(rte["paper"]) == 86.6
    tex = (out / "glue.tex").read_text()
    assert "\\begin{tabular}" in tex and "$\\pm$" in tex


def test_seeds_that_did_not_train_are_marked_and_listed(tmp_path):
    """A seed whose training loss did not move (repro.results.did_not_train) stays in the statistics (the table shows
    what ran) and is marked on its row, listed with why under the table and counted in the CSV."""
    root = tmp_path / "results"
    write_record(root, "tiny-roberta", "lora", "rte", 0, 0.60)
    flat = write_record(root, "tiny-roberta", "lora", "rte", 1, 0.50)
    data = json.loads(flat.read_text())
    data["history"]["train_loss"] = [{"step": s, "loss": 0.69} for s in (1, 2, 3, 4, 5)]
    records.write_json_atomic(flat, data)
    md = tables.render("glue", root)
    assert "55.0 ± 7.1 (n=2), did not train ×1 |" in md
    assert "- tiny-roberta (for roberta-base) LoRA / rte seed 1: training loss 0.69 -> 0.69" in md
    rows = list(csv.DictReader(open(root / "tables" / "glue.csv")))
    rte = next(r for r in rows if r["model"] == "tiny-roberta" and r["method"] == "lora" and r["task"] == "rte")
    assert rte["did_not_train_seeds"] == "1" and rte["n"] == "2"


def test_records_whose_code_cannot_be_traced_are_marked(tmp_path):
    """§ on a cell with a record from uncommitted code that it does not carry (no seed<k>.diff, or one that is not
    the recorded one) or with no commit; a dirty record with its diff beside it is traceable."""
    root = tmp_path / "results"
    diff = "diff --git a/repro/x.py b/repro/x.py\n+changed\n"
    dirty = {"git_commit": "c0ffee", "git_dirty": True, "git_diff_sha256": hashlib.sha256(diff.encode()).hexdigest()}
    write_record(root, "tiny-roberta", "lora", "rte", 0, 0.5)  # clean
    records.write_diff(write_record(root, "tiny-roberta", "lora", "rte", 1, 0.6, provenance=dirty), diff)
    write_record(root, "tiny-roberta", "lora", "mrpc", 0, 0.7, provenance={"git_commit": "c0ffee", "git_dirty": True})
    records.write_diff(
        write_record(root, "tiny-roberta", "lora", "cola", 0, 0.1, metric="matthews_correlation", provenance=dirty),
        diff + "+edited after the run\n",
    )
    write_record(root, "tiny-roberta", "lora", "stsb", 0, 0.8, metric="pearson", provenance={})
    rows, _, _ = tables.build("glue", root)
    lora = find(rows, "tiny-roberta", "lora")
    assert [len(lora.cells[t].untraced) for t in ("rte", "mrpc", "cola", "stsb")] == [0, 1, 1, 1]
    md = tables.render("glue", root)
    assert "55.0 ± 7.1 (n=2) |" in md and "70.0 (n=1) § |" in md and "80.0 (n=1) § |" in md
    assert "§ Records whose code cannot be traced (3)" in md
    assert "mrpc/seed0.json: uncommitted changes, not recorded" in md
    assert "cola/seed0.json: uncommitted changes, seed0.diff does not match git_diff_sha256" in md
    assert "stsb/seed0.json: no git commit" in md and "rte/seed1.json" not in md
    rows = list(csv.DictReader(open(root / "tables" / "glue.csv")))
    assert {r["task"]: r["untraced"] for r in rows if r["method"] == "lora" and r["model"] == "tiny-roberta"}[
        "mrpc"
    ] == "1"
    assert "\\S{}" in (root / "tables" / "glue.tex").read_text()


def test_plots_written(built, tmp_path):
    paths = plots.render("glue", built, tmp_path / "plots")
    names = {p.name for p in paths}
    assert "glue_score_vs_params.png" in names
    assert "glue_curves.png" in names and "glue_lora_minus_ft.png" in names
    for p in paths:
        assert p.stat().st_size > 1000 and p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli(built, capsys):
    tables.main(["glue", "--results-dir", str(built)])
    assert "# Table glue" in capsys.readouterr().out


def test_explicit_paper_row_mapping():
    paper = tables.load_paper(tables.load_table_config("glue"))
    ft = tables.paper_row(
        paper,
        {"model": "minilm", "method": "ft", "label": "FT", "paper_row": {"model": "roberta-base", "method": "FT"}},
    )
    assert ft["model"] == "roberta-base" and ft["params"] == "125.0M"
    assert (
        tables.paper_row(paper, {"model": "minilm", "method": "adapter_h", "label": "AdptH", "paper_row": None}) is None
    )
    assert (
        tables.paper_row(paper, {"model": "minilm", "method": "lora", "label": "LoRA"}) is None
    )  # no minilm in the paper


def test_glue_cpu_marks_cited_rows_and_averages_the_paper_over_its_own_tasks(tmp_path):
    """glue_cpu maps its rows to the paper's RoBERTa-base rows with `paper_row:`; those the paper copied from prior work
    (marker *) are cited there too, and with 5 of the paper's 8 tasks the paper's Avg is the mean over those 5."""
    root = tmp_path / "results"
    for task, metric in (
        ("rte", "accuracy"),
        ("mrpc", "accuracy"),
        ("stsb", "pearson"),
        ("cola", "matthews_correlation"),
        ("sst2", "accuracy"),
    ):
        write_record(root, "minilm", "ft", task, 0, 0.5, table="glue_cpu", metric=metric)
    write_record(root, "minilm", "lora", "rte", 0, 0.6, table="glue_cpu")
    rows, _, _ = tables.build("glue_cpu", root)
    ft, bitfit, lora = find(rows, "minilm", "ft"), find(rows, "minilm", "bitfit"), find(rows, "minilm", "lora")
    assert ft.cited and bitfit.cited and not lora.cited  # Table 2: FT* and BitFit* are cited
    assert tables.paper_average(ft, 5) == pytest.approx(statistics.fmean([78.7, 90.2, 91.2, 63.6, 94.8]))
    md = tables.render("glue_cpu", root)
    assert "| 50.0 |" in md  # FT's own 5-task average
    assert "-33.7 |" in md  # FT Avg Δ: 50.0 − 83.7
    assert "60.0 (n=1)" in md and "± 0.0" not in md  # one seed: no std is printed
    assert "(1/5 tasks)" in md


def test_glue_cpu_plot_puts_each_paper_point_in_its_task_panel(tmp_path, monkeypatch):
    """glue_cpu's columns are 5 of the paper's 9 in another order: the paper's RTE number goes in the RTE panel."""
    root = tmp_path / "results"
    write_record(root, "minilm", "ft", "rte", 0, 0.5, table="glue_cpu")
    from matplotlib.collections import PathCollection

    figs = []
    monkeypatch.setattr(plots.plt, "close", figs.append)
    plots.score_vs_params("glue_cpu", root, tmp_path / "plots")
    panels = {ax.get_title(): ax for ax in figs[0].axes}

    def paper_ys(title):  # the hollow paper markers
        return sorted(
            float(y) for c in panels[title].collections if isinstance(c, PathCollection) for _, y in c.get_offsets()
        )

    assert 78.7 in paper_ys("RTE") and 87.6 not in paper_ys("RTE")  # roberta-base FT: RTE 78.7, MNLI 87.6
    assert paper_ys("Avg") == pytest.approx(
        sorted(
            [
                statistics.fmean([78.7, 90.2, 91.2, 63.6, 94.8]),
                statistics.fmean([81.5, 92.7, 90.8, 62.0, 93.7]),
                statistics.fmean([86.6, 89.7, 91.5, 63.4, 95.1]),
            ]
        )
    )
    labels = {t for ax in figs[0].axes for t in ax.get_legend_handles_labels()[1]}
    assert "FT (paper, roberta-base)" in labels and "FT (minilm)" in labels


def test_cell_cost_counts_memory_only_for_a_fresh_process():
    """A cell's peak RSS is its own only when it was its process's first cell; s/step leaves out dev evaluation."""

    def cost(record: dict) -> dict:
        return cell_cost(Record.from_dict(record))

    base = {
        "steps": 100,
        "wall_s": 60.0,
        "train_runtime_s": 50.0,
        "peak_rss_mb": 1100.0,
        "peak_rss_scope": "cell",
        "history": {"eval": [{"dev_runtime": 4.0}, {"dev_runtime": 6.0}]},
    }
    assert cost({**base, "process_cell_index": 0}) == {"peak_rss_mb": 1100.0, "wall_s": 60.0, "s_per_step": 0.4}
    assert cost({**base, "process_cell_index": 3})["peak_rss_mb"] is None  # after other cells in-process
    assert cost(base)["peak_rss_mb"] is None  # older record: unknown
    assert cost({**base, "process_cell_index": 0, "peak_rss_scope": "process"})["peak_rss_mb"] is None
    no_runtime = {k: v for k, v in base.items() if k != "train_runtime_s"}
    assert cost(no_runtime)["s_per_step"] == pytest.approx(0.5)  # older record: wall time
    assert cost({**base, "train_runtime_s": None})["s_per_step"] is None  # the Trainer logged none


def write_nlg_record(
    root: Path,
    table: str,
    method: str,
    task: str,
    seed: int,
    metrics: dict | None,
    status: str = "ok",
    error: str | None = None,
    variant: str = "default",
    precision: str = "bf16",
) -> Path:
    path = write_record(
        root,
        "smollm2-135m",
        method,
        task,
        seed,
        table=table,
        status=status,
        error=error,
        metric="BLEU" if task == "e2e" else "BLEU_all",
        variant=variant,
    )
    record = records.read_json(path) if hasattr(records, "read_json") else __import__("json").loads(path.read_text())
    record["metrics"] = metrics or {}
    record["config"] = {**record.get("config", {}), "train": {"precision": precision}}
    records.write_json_atomic(path, record)
    return path


def test_e2e_cpu_prints_tables_3_metrics_at_the_papers_scale(tmp_path):
    """render.columns: one column per E2E metric (BLEU, MET, ROUGE-L x100; NIST, CIDEr as measured, 2 decimals),
    the paper's GPT-2 M numbers beside them, no Avg, each record counted once, the Cost section's headline = BLEU."""
    root = tmp_path / "results"
    e2e = {"BLEU": 0.65, "NIST": 8.1, "METEOR": 0.44, "ROUGE_L": 0.69, "CIDEr": 2.2}
    write_nlg_record(root, "e2e_cpu", "lora", "e2e", 0, e2e)
    write_nlg_record(root, "e2e_cpu", "lora", "e2e", 1, {k: v * 1.02 for k, v in e2e.items()})
    write_nlg_record(root, "e2e_cpu", "ft", "e2e", 0, None, status="failed", error="Diverged: loss not finite")
    rows, unmatched, _ = tables.build("e2e_cpu", root)
    lora = find(rows, "smollm2-135m", "lora")
    assert list(lora.cells) == ["BLEU", "NIST", "MET", "ROUGE-L", "CIDEr"] and not unmatched
    assert lora.cells["BLEU"].scores == pytest.approx([65.0, 66.3]) and lora.cells["NIST"].scores == pytest.approx(
        [8.1, 8.262]
    )
    assert (lora.cells["BLEU"].paper, lora.cells["NIST"].paper, lora.cells["CIDEr"].paper) == (70.4, 8.85, 2.53)
    assert lora.trainable == [2048, 2048]  # once per record, not once per metric column
    assert lora.headline("mean") == (pytest.approx(65.65), 1)
    md = tables.render("e2e_cpu", root, tmp_path / "out")
    header = next(line for line in md.splitlines() if line.startswith("| Model"))
    assert header.endswith("| BLEU | NIST | MET | ROUGE-L | CIDEr |") and "Avg" not in header
    assert "| 65.7 ± 0.9 (n=2) | 8.18 ± 0.11 (n=2) |" in md and "| 70.4 | 8.85 | 46.8 | 71.8 | 2.53 |" in md
    assert "Records: 3 under" in md and md.count("Diverged: loss not finite") == 1
    assert "| BLEU (mean) | Δ BLEU vs FT |" in md
    assert plots.score_vs_params("e2e_cpu", root, tmp_path / "plots").exists()  # one panel per metric


def test_webnlg_cpu_columns_come_from_table_14s_per_metric_splits(tmp_path):
    root = tmp_path / "results"
    m = {f"{k}_{s}": v for k, v in (("BLEU", 0.5), ("METEOR", 0.4), ("TER", 0.45)) for s in ("seen", "unseen", "all")}
    m["BLEU_unseen"] = 0.3
    write_nlg_record(root, "webnlg_cpu", "lora", "webnlg", 0, m)
    rows, _, _ = tables.build("webnlg_cpu", root)
    lora = find(rows, "smollm2-135m", "lora")
    assert [c.paper for c in lora.cells.values()] == [46.7, 62.1, 55.3, 0.38, 0.44, 0.41, 0.46, 0.33, 0.39]
    assert lora.cells["BLEU-U"].scores == [30.0] and lora.cells["TER-A"].scores == [0.45]
    assert lora.headline("mean") == (50.0, 1)  # webnlg's main metric: BLEU on all inputs
    md = tables.render("webnlg_cpu", root, tmp_path / "out")
    assert "| 30.0 (n=1) | 50.0 (n=1) | 50.0 (n=1) | 0.40 (n=1) |" in md


def test_a_render_column_the_paper_does_not_have_is_refused(tmp_path):
    table = tables.load_table_config("webnlg_cpu")
    table["render"]["columns"][0]["paper"] = "BLEU.X"
    with pytest.raises(ReproError, match=r"paper='BLEU.X' is not a column .* allowed: BLEU.U, BLEU.S, BLEU.A, MET.U"):
        tables.build("webnlg_cpu", tmp_path, table)


def test_the_header_sums_every_records_cell_time(tmp_path):
    """What a table cost to run: the sum of wall_s over every record under it (rows, failed cells, records of no
    row), and records without wall_s are not counted as zero."""
    import json

    root = tmp_path / "results"
    paths = [
        write_record(root, "tiny-roberta", "lora", "rte", 0, 0.5),
        write_record(root, "tiny-roberta", "ft", "rte", 0, status="failed", error="Diverged: loss not finite"),
        write_record(root, "tiny-roberta", "lora", "rte", 0, 0.5, variant="r99"),
        write_record(root, "tiny-roberta", "lora", "rte", 1, 0.6),
    ]
    assert "cell time" not in tables.render("glue", root, tmp_path / "out0")
    for path, wall in zip(paths, (3000.0, 1500.0, 2700.0)):
        records.write_json_atomic(path, {**json.loads(path.read_text()), "wall_s": wall})
    md = tables.render("glue", root, tmp_path / "out1")
    assert "Records: 4 under" in md and "cell time in all 2.0 h (the sum of `wall_s` over 3 records" in md


@pytest.mark.parametrize(
    "fp32_factor, verdict",
    [
        ({}, "**bf16 stands**: the effect is within the noise on 5 of 5 columns, BLEU among them."),
        (
            {"BLEU": 1.03},
            "**bf16 does not stand**: the effect is within the noise on 4 of 5 columns, not on BLEU; every row re-runs in fp32.",
        ),
        (
            {"NIST": 0.95, "CIDEr": 1.05},
            "**bf16 does not stand**: the effect is within the noise on 3 of 5 columns; every row re-runs in fp32.",
        ),
        ({"NIST": 0.95}, "**bf16 stands**: the effect is within the noise on 4 of 5 columns, BLEU among them."),
        (None, "**Undecided**: no score yet for BLEU, NIST, MET, ROUGE-L, CIDEr"),
    ],
)
def test_e2e_cpu_precision_check_applies_its_rule(tmp_path, fp32_factor, verdict):
    """render.precision_check: LoRA seed 0 in fp32 against bf16 (the effect) beside bf16 seeds 0 and 1 (the noise, 2%
    here); bf16 stands with the effect within the noise on BLEU and on at least 4 of the 5 columns. Each side's
    precision is the one its records ran in."""
    root = tmp_path / "results"
    e2e = {"BLEU": 0.65, "NIST": 8.1, "METEOR": 0.44, "ROUGE_L": 0.69, "CIDEr": 2.2}
    write_nlg_record(root, "e2e_cpu", "lora", "e2e", 0, e2e)
    write_nlg_record(root, "e2e_cpu", "lora", "e2e", 1, {k: v * 1.02 for k, v in e2e.items()})
    if fp32_factor is not None:
        write_nlg_record(
            root,
            "e2e_cpu",
            "lora",
            "e2e",
            0,
            {
                k: v * fp32_factor.get(k.replace("METEOR", "MET").replace("ROUGE_L", "ROUGE-L"), 1.01)
                for k, v in e2e.items()
            },
            variant="fp32",
            precision="fp32",
        )
    md = tables.render("e2e_cpu", root, tmp_path / "out")
    section = md.split("## Precision check", 1)[1]
    if fp32_factor is not None:
        assert (
            "The LoRA row ran in bf16; LoRA (fp32 check) re-ran its seed 0 in fp32. bf16 stands if the effect is no larger than the noise on BLEU and on at least 4 of 5 columns"
            in section
        )
    assert verdict in section
    if fp32_factor == {}:
        assert "| BLEU | 65.0 | 66.3 | 65.7 | 0.7 | 1.3 | yes |" in section


@pytest.mark.parametrize(
    "precisions, says",
    [
        (("bf16", "bf16", "bf16"), "the LoRA row's seeds 0 and 1 ran in bf16 and LoRA (fp32 check)'s seed 0 in bf16"),
        (
            ("bf16", "fp32", "fp32"),
            "the LoRA row's seeds 0 and 1 ran in bf16, fp32 and LoRA (fp32 check)'s seed 0 in fp32",
        ),
    ],
)
def test_the_precision_check_reads_the_records_precision_not_the_config(tmp_path, precisions, says):
    """The check compares what the records ran in: a check record that ran in the row's own precision (a config
    edited after the run, or an override on the command line), or a row whose seeds ran in different precisions,
    gives no verdict."""
    root = tmp_path / "results"
    e2e = {"BLEU": 0.65, "NIST": 8.1, "METEOR": 0.44, "ROUGE_L": 0.69, "CIDEr": 2.2}
    write_nlg_record(root, "e2e_cpu", "lora", "e2e", 0, e2e, precision=precisions[0])
    write_nlg_record(root, "e2e_cpu", "lora", "e2e", 1, {k: v * 1.02 for k, v in e2e.items()}, precision=precisions[1])
    write_nlg_record(root, "e2e_cpu", "lora", "e2e", 0, e2e, variant="fp32", precision=precisions[2])
    section = tables.render("e2e_cpu", root, tmp_path / "out").split("## Precision check", 1)[1]
    assert f"Undecided: {says}" in section and "stands" not in section


def test_the_loader_returns_what_it_could_not_read(tmp_path):
    """load_records reads every seed*.json into a Record and lists, with the reason, the files it could not read
    (not JSON, not a record); the renderers read the same records and leave those out."""
    root = tmp_path / "results"
    good = write_record(root, "tiny-roberta", "lora", "rte", 0, 0.5)
    broken = root / "glue" / "tiny-roberta" / "lora" / "rte" / "seed1.json"
    broken.write_text('{"status": "ok", ')
    listed = root / "glue" / "tiny-roberta" / "lora" / "rte" / "seed2.json"
    listed.write_text("[1, 2]")
    records, unreadable = load_records(root, "glue")
    assert [r.path for r in records] == [good]
    r = records[0]
    assert (r.key, r.seed, r.ok, r.precision) == (("tiny-roberta", "lora", "default", "rte"), 0, True, None)
    assert r.metrics == {"accuracy": 0.5} and r.raw["fingerprint"] == "x" and r.adapter_params == 2048
    assert [p for p, _ in unreadable] == [broken, listed]
    assert unreadable[0][1].startswith("JSONDecodeError") and unreadable[1][1] == "not a record: a JSON list"
    rows, unmatched, _ = tables.build("glue", root)
    assert find(rows, "tiny-roberta", "lora").cells["rte"].n == 1 and not unmatched
