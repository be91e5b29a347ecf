"""The tuned NLG tables (issue 28): e2e_cpu_tuned and webnlg_cpu_tuned's configs, selection on the dev loss (the
lowest wins; the records' BLEU is a test score and must not choose), and the convergence test printed per row."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from repro import CONF_DIR, records, tables, tune
from repro.cell import resolve_cell
from repro.results import Record, Tuning, convergence, dev_loss_curve, load_records, selection_score
from repro.schema import TableConfig
from tests.conftest import compose_cfg


def table_config(name: str) -> dict:
    return OmegaConf.to_container(OmegaConf.load(CONF_DIR / "table" / f"{name}.yaml"))["table"]


# ---------------------------------------------------------------- the configs
@pytest.mark.parametrize("name", ["e2e_cpu_tuned", "webnlg_cpu_tuned"])
def test_every_row_is_a_group_of_three_rates_under_one_schedule(name):
    """Each row: at least 3 learning rates, nothing else differs between candidates; no row touches the schedule (one
    for every method); selection and checkpoint both on the dev loss; the convergence check is rendered."""
    table = table_config(name)
    TableConfig.model_validate(table)
    assert tune.criterion(table) == ("dev_loss", True) and tune.selection_seed(table) == 0
    assert table["seeds"] == [0, 1]  # the chosen candidate on 2 seeds
    assert table["common"]["decode"]["checkpoint"] == "best" and table["common"]["train"]["select"] == "best"
    assert table["render"]["convergence"] == {"last": 0.2, "below": 0.01}
    for group, variants in tune.groups(table).items():
        rows = [r for r in table["rows"] if (r["model"], r["method"], r.get("tune")) == group]
        lrs = sorted(r["set"]["train"]["learning_rate"] for r in rows)
        assert len(set(lrs)) >= 3 and len(variants) == len(rows), group
        assert all(set(r["set"]["train"]) == {"learning_rate"} for r in rows), group  # one schedule
        assert len({json.dumps(r["set"].get("method"), sort_keys=True) for r in rows}) == 1, group
    methods = {m for (_, m, _) in tune.groups(table)}
    assert methods == (
        {"ft", "fttop2", "adapter_l", "adapter_h", "prefix_layer", "lora"}
        if name == "e2e_cpu_tuned"
        else {"ft", "lora"}
    )


def test_e2e_rows_sit_at_loras_budget_and_prelayer_trains_through_the_mlp(tmp_path):
    """The resolved cells: LoRA as Table 3 (r=4, alpha 32, dropout 0.1 on W_q, W_v), AdapterL r=5, AdapterH r=2 and
    r=111, PreLayer l_p=13 with Li & Liang's MLP (mid_dim 512); one schedule in every cell."""
    cells = {}
    for method, variant in (
        ("lora", "lr5e-4"),
        ("adapter_l", "lr5e-4"),
        ("adapter_h", "r2-lr5e-4"),
        ("adapter_h", "r111-lr2e-4"),
        ("prefix_layer", "lr3e-4"),
        ("ft", "lr5e-5"),
    ):
        overrides = ["+table=e2e_cpu_tuned", "model=smollm2-135m", f"method={method}", f"variant={variant}", "task=e2e"]
        cells[(method, variant)] = resolve_cell(compose_cfg(overrides, tmp_path), overrides)
    lora = cells[("lora", "lr5e-4")].method
    assert (lora.r, lora.alpha, lora.dropout, list(lora.targets)) == (4, 32, 0.1, ["q", "v"])
    assert cells[("adapter_l", "lr5e-4")].method.r == 5
    assert cells[("adapter_h", "r2-lr5e-4")].method.r == 2 and cells[("adapter_h", "r111-lr2e-4")].method.r == 111
    pre = cells[("prefix_layer", "lr3e-4")].method
    assert (pre.l_p, pre.l_i, pre.reparam, pre.mid_dim, pre.init) == (13, 0, "mlp", 512, "real_tokens")
    schedules = {
        json.dumps({k: v for k, v in OmegaConf.to_container(c.train).items() if k != "learning_rate"}, sort_keys=True)
        for c in cells.values()
    }
    assert len(schedules) == 1
    assert cells[("prefix_layer", "lr3e-4")].train.learning_rate == 3e-4


# ---------------------------------------------------------------- the selection criterion
def test_choose_the_lowest_when_lower_is_better():
    assert tune.choose({"a": 1.7, "b": 1.5, "c": None}, lower_is_better=True) == (
        "b",
        "lowest dev score on the selection seed (1.500)",
    )
    assert tune.choose({"a": 1.5, "b": 1.5}, lower_is_better=True)[0] == "a"  # ties: the first
    assert tune.choose({"a": 1.7, "b": 1.5})[0] == "a"  # the default: highest wins
    assert tune.criterion({"tune": {"seed": 0}}) == (None, False)


def write(root: Path, table: str, method: str, variant: str, seed: int, bleu: float, curve: list, status="ok"):
    """A record as the runner writes an NLG cell's, reduced to what tables and selection read: the dev loss of the
    decoded weights is the curve's lowest (decode.checkpoint: best)."""
    path = root / table / "smollm2-135m" / f"{method}.{variant}" / "e2e" / f"seed{seed}.json"
    evals = [{"step": s, "epoch": s / 500, "loss": v} for s, v in curve]
    best = min(curve, key=lambda p: p[1]) if curve else None
    record = {
        "status": status,
        "error": None if status == "ok" else "Diverged: loss not finite",
        "table": table,
        "model": "smollm2-135m",
        "method": method,
        "variant": variant,
        "task": "e2e",
        "seed": seed,
        "metrics": {"BLEU": bleu, "NIST": 8.0, "METEOR": 0.4, "ROUGE_L": 0.6, "CIDEr": 2.0, "dev_loss": best[1]}
        if status == "ok"
        else {},
        "history": {"train_loss": [], "eval": evals + ([{"step": 500, "epoch": 1.0, "loss": best[1]}] if best else [])},
        "steps": 500,
        "trainable_params": 230_400,
        "adapter_params": 230_400,
        "head_params": 0,
        "config": {
            "task": {"name": "e2e", "main_metric": "BLEU"},
            "train": {"eval_strategy": "steps", "eval_steps": 100},
        },
        "fingerprint": "x",
        "provenance": {"git_commit": "c0ffee", "git_dirty": False},
    }
    records.write_json_atomic(path, record)
    return path


FLAT = [(100, 1.80), (200, 1.60), (300, 1.52), (400, 1.500), (500, 1.495)]  # -0.3% over the last fifth
FALLING = [(100, 1.90), (200, 1.75), (300, 1.68), (400, 1.640), (500, 1.600)]  # -2.4%


def test_the_tuned_table_chooses_the_lowest_dev_loss_not_the_best_bleu(tmp_path):
    """LoRA lr 5e-4 has the lowest dev loss and the lower (test) BLEU: it is chosen, it alone stands for the row, and
    the Tuning section prints every candidate's dev loss; the planner's score for a candidate is the same."""
    root = tmp_path / "results"
    write(root, "e2e_cpu_tuned", "lora", "lr2e-4", 0, 0.66, FALLING)
    write(root, "e2e_cpu_tuned", "lora", "lr5e-4", 0, 0.63, FLAT)
    write(root, "e2e_cpu_tuned", "lora", "lr1e-3", 0, 0.0, [], status="failed")
    write(root, "e2e_cpu_tuned", "lora", "lr5e-4", 1, 0.64, FLAT)
    table = table_config("e2e_cpu_tuned")
    recs, _ = load_records(root, "e2e_cpu_tuned")
    tuning = Tuning.of(table, recs)
    chosen, why, scores = tuning.choices[("smollm2-135m", "lora", "LoRA", "e2e")]
    assert chosen == "lr5e-4" and scores == {"lr2e-4": 1.6, "lr5e-4": 1.495, "lr1e-3": None}
    assert why == "lowest dev score on the selection seed (1.495)"
    slow = next(r for r in recs if r.variant == "lr2e-4")
    assert selection_score(slow.raw, table) == pytest.approx(1.6)  # the planner passes the record as written
    rows, _, _ = tables.build("e2e_cpu_tuned", root)
    lora = next(r for r in rows if r.method == "lora")
    assert lora.cells["BLEU"].scores == pytest.approx([63.0, 64.0]) and lora.cells["BLEU"].seeds == [0, 1]
    md = tables.render("e2e_cpu_tuned", root, tmp_path / "out")
    assert "the one with the lowest dev_loss (✓)" in md
    assert "| LoRA | e2e | LoRA lr 2e-4: 1.600, LoRA lr 5e-4: 1.495 ✓, LoRA lr 1e-3: failed | LoRA lr 5e-4 |" in md


# ---------------------------------------------------------------- the convergence test
def rec(curve: list, steps: int = 500, every: int | None = 100, selected: float | None = None) -> Record:
    evals = [{"step": s, "loss": v} for s, v in curve]
    if selected is not None:  # the selected weights' evaluation, logged after training at the last step
        evals.append({"step": steps, "loss": selected})
    train = {"eval_strategy": "steps", "eval_steps": every} if every else {"eval_strategy": "epoch"}
    return Record.from_dict({"status": "ok", "steps": steps, "history": {"eval": evals}, "config": {"train": train}})


def test_convergence_is_under_one_percent_over_the_last_fifth():
    flat = convergence(rec(FLAT))
    assert flat.verdict == "converged" and flat.start == (400, 1.5) and flat.best_after == (500, 1.495)
    assert flat.improvement == pytest.approx(0.005 / 1.5)
    falling = convergence(rec(FALLING))
    assert falling.verdict == "still improving" and falling.improvement == pytest.approx(0.04 / 1.64)
    rising = convergence(rec([(100, 1.5), (200, 1.4), (300, 1.38), (400, 1.37), (500, 1.39)]))
    assert rising.verdict == "converged" and rising.improvement < 0  # over-fitting has stopped improving too
    assert convergence(rec(FALLING), last=0.5, below=0.1).verdict == "converged"  # the rule's parameters


def test_the_curve_leaves_out_the_selected_weights_evaluation():
    """Generation cells log the best checkpoint's dev loss once more after training, at the last step: it is not a
    point of the curve (a best at step 200 re-logged at 500 would look like a late improvement)."""
    curve = [(100, 1.6), (200, 1.40), (300, 1.45), (400, 1.50), (500, 1.52)]
    assert dev_loss_curve(rec(curve, selected=1.40)) == curve
    assert convergence(rec(curve, selected=1.40)).verdict == "converged"
    off_grid = rec([(100, 1.6), (200, 1.5), (300, 1.45), (400, 1.44)], steps=450, selected=1.30)
    assert dev_loss_curve(off_grid)[-1] == (400, 1.44)  # 450 is no evaluation step: the selected weights' entry


def test_a_curve_that_cannot_be_tested_is_undecided():
    assert convergence(rec([])).verdict == "undecided: no dev-loss curve in the record"
    only_end = convergence(rec([(500, 1.5)]))
    assert only_end.verdict.startswith("undecided: no dev evaluation at or before step 400")
    none_after = convergence(rec([(250, 1.5)], steps=500, every=250), last=0.4)
    assert none_after.verdict == "undecided: no dev evaluation after step 300 of 500 (evaluate more often)"


def test_tables_print_the_convergence_check_per_row(tmp_path):
    root = tmp_path / "results"
    write(root, "e2e_cpu_tuned", "lora", "lr2e-4", 0, 0.60, FALLING)
    write(root, "e2e_cpu_tuned", "lora", "lr5e-4", 0, 0.63, FLAT)
    write(
        root,
        "e2e_cpu_tuned",
        "lora",
        "lr1e-3",
        0,
        0.61,
        [(100, 1.7), (200, 1.6), (300, 1.55), (400, 1.53), (500, 1.52)],
    )
    write(root, "e2e_cpu_tuned", "lora", "lr5e-4", 1, 0.64, FALLING)
    write(root, "e2e_cpu_tuned", "ft", "lr5e-5", 0, 0.66, FLAT)
    md = tables.render("e2e_cpu_tuned", root, tmp_path / "out")
    section = md.split("## Convergence")[1]
    assert "| LoRA | e2e | 0 | 100: 1.800, 200: 1.600, 300: 1.520, 400: 1.500, 500: 1.495 |" in section
    assert "| 1.500 @400 → 1.495 @500 | 0.33% | converged |" in section
    assert "| 1.640 @400 → 1.600 @500 | 2.44% | still improving |" in section
    assert "- LoRA: **not converged** (1 of 2 records)" in section  # seed 1 still improving
    assert "- FT" not in section  # FT's choice is undecided (two candidates not run): no record stands for it yet
