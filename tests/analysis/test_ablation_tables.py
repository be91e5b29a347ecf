"""conf/table/rank.yaml and which_weights.yaml resolve to the cells Tables 5 and 6 describe (no training)."""

from __future__ import annotations

import yaml

from repro import CONF_DIR
from repro.cell import resolve_cell

MINILM = {"layers": 6, "d": 384}


def _rows(table):
    return yaml.safe_load((CONF_DIR / "table" / f"{table}.yaml").read_text())["table"]["rows"]


def _cell(compose_config, table, variant, task="sst2", extra=()):
    overrides = [f"+table={table}", "model=minilm", "method=lora", f"variant={variant}", f"task={task}", *extra]
    return resolve_cell(compose_config(overrides), overrides)


def test_which_weights_rows_share_one_parameter_budget(compose_config):
    """Table 5: r=8 for one matrix type, 4 for two, 2 for four: every row trains 2 x 8 x d x L LoRA parameters."""
    budgets = {}
    for row in _rows("which_weights"):
        cfg = _cell(compose_config, "which_weights", row["variant"])
        m = cfg.method
        assert list(m.targets) == row["set"]["method"]["targets"] and m.r == row["set"]["method"]["r"]
        assert m.alpha == 16 and cfg.train.learning_rate == 1.0e-3 and cfg.data.max_train_samples == 3200
        budgets[row["variant"]] = 2 * m.r * MINILM["d"] * MINILM["layers"] * len(m.targets)
    assert set(budgets) == {"q_r8", "k_r8", "v_r8", "o_r8", "qk_r4", "qv_r4", "qkvo_r2"}
    assert set(budgets.values()) == {2 * 8 * 384 * 6}


def test_rank_rows_cover_table6(compose_config):
    seen = set()
    for row in _rows("rank"):
        cfg = _cell(compose_config, "rank", row["variant"])
        seen.add((tuple(cfg.method.targets), cfg.method.r))
        assert cfg.method.alpha == 16  # alpha fixed across r (Section 4.1), so alpha/r shrinks with r
        assert cfg.train.num_train_epochs == 1 and cfg.train.global_batch_size == 16 and cfg.data.max_seq_length == 128
    assert seen == {(t, r) for t in [("q",), ("q", "v"), ("q", "k", "v", "o")] for r in (1, 2, 4, 8, 64)}
    # the whole-data tasks take no subsample; the command line still wins
    cfg = _cell(compose_config, "rank", "qv_r8", task="stsb", extra=["train.max_steps=2"])
    assert cfg.data.max_train_samples is None and cfg.train.max_steps == 2


def test_paper_cells_exist_for_every_row():
    from repro.analysis.ablation import PAPER, paper_value

    paper = yaml.safe_load(PAPER.read_text())
    for table in ("rank", "which_weights"):
        for row in _rows(table):
            pc = row["paper_cell"]
            assert paper_value(paper, table, pc["weights"], pc["r"], "MultiNLI") is not None, row["variant"]
    assert paper_value(paper, "rank", "W_q", 64, "WikiSQL") == 70.0
