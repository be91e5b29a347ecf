"""The paper's model selection (repro/tune.py) on the real glue_cpu_tuned config: the choice rule, the table schema's
rules for tune groups, the sweeper running only the chosen candidate on the other seeds (after the selection seed),
and repro.tables / repro.claims reading the same choice from the records."""

from __future__ import annotations

import re

import pytest
from hydra import initialize_config_dir
from omegaconf import OmegaConf
from pydantic import ValidationError

from repro import CONF_DIR, records, tables, tune
from repro.plan import grid
from repro.results import Tuning, load_records
from repro.schema import TableConfig


# ---------------------------------------------------------------- the rule
def test_choose_best_dev_score_first_on_ties_failed_not_eligible():
    assert tune.choose({"a": 60.0, "b": 70.0, "c": None}) == ("b", "best dev score on the selection seed (70.00)")
    assert tune.choose({"a": 80.0, "b": 80.0, "c": 75.0})[0] == "a"  # a tie goes to the first candidate
    assert tune.choose({"a": None, "b": 55.0})[0] == "b"  # a failed candidate is not eligible
    chosen, why = tune.choose({"a": 60.0, "b": tune.NOT_RUN})
    assert chosen is None and why == "undecided: b not run on the selection seed"
    assert tune.choose({"a": None, "b": None}) == (None, "every candidate failed on the selection seed")


def test_the_table_config_declares_two_groups_of_three_rates():
    table = OmegaConf.to_container(OmegaConf.load(CONF_DIR / "table" / "glue_cpu_tuned.yaml"))["table"]
    assert tune.selection_seed(table) == 0 and table["seeds"] == [0, 1, 2]
    groups = tune.groups(table)
    assert groups == {
        ("minilm", "ft", "FT"): ["lr2e-5", "lr5e-5", "lr1e-4"],
        ("minilm", "lora", "LoRA"): ["lr5e-4", "lr1e-3", "lr2e-3"],
    }
    lrs = {(r["method"], r["variant"]): r["set"]["train"]["learning_rate"] for r in table["rows"]}
    assert lrs[("ft", "lr5e-5")] == 5.0e-5 and lrs[("lora", "lr2e-3")] == 2.0e-3
    TableConfig.model_validate(table)


@pytest.mark.parametrize(
    "change, field",
    [
        (lambda t: t["rows"].__delitem__(slice(1, 3)), "rows.tune"),  # a group of one candidate
        (lambda t: t["rows"][1].__setitem__("variant", "lr2e-5"), "rows.tune"),  # two candidates, one variant
        (lambda t: t.__setitem__("tune", {"seed": 7}), "tune.seed"),  # selection seed not run
        (lambda t: t["rows"][0].__setitem__("seeds", [1, 2]), "rows.seeds"),  # a candidate skips it
    ],
)
def test_schema_refuses_tune_groups_that_cannot_choose(change, field):
    table = OmegaConf.to_container(OmegaConf.load(CONF_DIR / "table" / "glue_cpu_tuned.yaml"))["table"]
    change(table)
    with pytest.raises(ValidationError) as err:
        TableConfig.model_validate(table)
    (error,) = err.value.errors()
    assert error["ctx"]["field"] == field and "tune" in error["msg"]


# ---------------------------------------------------------------- the sweep
SCORES = {  # (task, variant, seed) -> dev accuracy; None = the cell fails
    ("rte", "lr5e-4", 0): 0.60,
    ("rte", "lr1e-3", 0): 0.70,
    ("rte", "lr2e-3", 0): None,
    ("rte", "lr1e-3", 1): 0.66,
    ("rte", "lr1e-3", 2): 0.72,
    ("mrpc", "lr5e-4", 0): 0.80,
    ("mrpc", "lr1e-3", 0): 0.80,
    ("mrpc", "lr2e-3", 0): 0.75,
    ("mrpc", "lr5e-4", 1): 0.78,
    ("mrpc", "lr5e-4", 2): 0.82,
}


class ScoringLauncher:
    """Stands in for a launcher: launch() returns when its jobs have ended; each job writes its cell's record with
    the score SCORES gives it (a record as the runner writes it, reduced to what selection reads)."""

    def __init__(self, sweeper):
        self.sweeper, self.calls = sweeper, []

    def launch(self, batch, initial_job_idx):
        from hydra.core.utils import JobReturn, JobStatus

        self.calls.append([grid.job_dict(job) for job in batch])
        returns = []
        for job, cfg, _ in grid.resolve_jobs(
            self.sweeper.hydra_context.config_loader, self.sweeper.config, batch, fallback=False
        ):
            score = SCORES[(cfg.task.name, cfg.variant, cfg.seed)]
            status = "failed" if score is None else "ok"
            records.write_json_atomic(
                records.record_path(cfg),
                {
                    "status": status,
                    "error": "Diverged: loss nan" if score is None else None,
                    "model": cfg.model.name,
                    "method": cfg.method.name,
                    "variant": cfg.variant,
                    "task": cfg.task.name,
                    "seed": cfg.seed,
                    "metrics": {} if score is None else {"accuracy": score},
                    "fingerprint": records.fingerprint(cfg),
                },
            )
            returns.append(JobReturn(overrides=job, status=JobStatus.COMPLETED, _return_value=status))
        return returns


@pytest.fixture
def hydra_ctx():
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        yield


def test_sweep_runs_every_candidate_on_seed0_then_only_the_chosen_one(hydra_ctx, tmp_path, capsys):
    from tests.test_sweep import sweeper_for

    sweeper = sweeper_for(["+table=glue_cpu_tuned", f"paths.log_dir={tmp_path}/logs"], tmp_path)
    sweeper.launcher = launcher = ScoringLauncher(sweeper)
    sweeper.sweep(["method=lora", "task=rte,mrpc", "seed=0,1,2"])
    first = [(d["task"], d["variant"], d["seed"]) for d in launcher.calls[0]]
    assert sorted(first) == sorted((t, v, "0") for t in ("rte", "mrpc") for v in ("lr5e-4", "lr1e-3", "lr2e-3"))
    later = sorted((d["task"], d["variant"], d["seed"]) for call in launcher.calls[1:] for d in call)
    # RTE: lr1e-3 is best (lr2e-3 failed); MRPC: lr5e-4 and lr1e-3 tie, the first candidate wins
    assert later == [("mrpc", "lr5e-4", "1"), ("mrpc", "lr5e-4", "2"), ("rte", "lr1e-3", "1"), ("rte", "lr1e-3", "2")]
    out = capsys.readouterr().out
    assert "tuning: 4 of 12 jobs on the other seeds are chosen candidates" in out
    assert re.search(r"table sweeper: 18 jobs in \S+( s)?: 1 failed, 8 not run \(not the chosen candidate\), 9 ok", out)

    # the table reads the same choice: the chosen candidate's three seeds, every candidate under "Tuning"
    rows, unmatched, _ = tables.build("glue_cpu_tuned", tmp_path)
    lora = next(r for r in rows if r.label == "LoRA")
    assert not unmatched
    assert lora.cells["rte"].seeds == [0, 1, 2] and lora.cells["rte"].median == pytest.approx(70.0)
    assert lora.cells["mrpc"].scores == pytest.approx([80.0, 78.0, 82.0])
    assert lora.tuning["rte"][0] == "lr1e-3" and lora.tuning["rte"][2]["lr2e-3"] is None
    text = tables.render("glue_cpu_tuned", tmp_path, tmp_path / "tables")
    assert "| LoRA | rte | LoRA lr 5e-4: 60.0, LoRA lr 1e-3: 70.0 ✓, LoRA lr 2e-3: failed | LoRA lr 1e-3 |" in text
    # the record count says how many records the rows hold and how many are candidates not chosen
    assert "(6 in the rows; the other 4: tuning candidates not chosen, under Tuning)" in text

    # ... and so do the claims (repro.results.Tuning): only the chosen candidates' records, as the method's row
    recs = load_records(tmp_path, "glue_cpu_tuned")[0]
    tuning = Tuning.of(tables.load_table_config("glue_cpu_tuned"), recs)
    kept = tuning.chosen(recs)
    assert sorted((r.task, r.seed, r.variant) for r in kept) == sorted(
        [("rte", s, "default") for s in (0, 1, 2)] + [("mrpc", s, "default") for s in (0, 1, 2)]
    )


def test_other_seeds_wait_while_a_candidate_has_not_run(hydra_ctx, tmp_path, capsys):
    from tests.test_sweep import sweeper_for

    sweeper = sweeper_for(["+table=glue_cpu_tuned", f"paths.log_dir={tmp_path}/logs"], tmp_path)
    sweeper.launcher = launcher = ScoringLauncher(sweeper)
    sweeper.sweep(["method=lora", "task=rte", "seed=1"])  # seed 0 not run: no choice can be made
    assert launcher.calls == []
    out = capsys.readouterr().out
    assert re.search(r"table sweeper: 3 jobs in \S+( s)?: 3 not run \(tuning undecided\)", out)
