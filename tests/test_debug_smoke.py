"""debug=smoke (conf/debug/smoke.yaml): a short cell of any table, written under a scratch folder, never into the
committed results tree."""

from __future__ import annotations

import pytest
from hydra import compose, initialize_config_dir

from repro import CONF_DIR, PROJECT_ROOT, records
from repro.cell import resolve_cell, smoke_reason
from repro.plan.grid import resolve_jobs
from repro.schema import ConfigError


def resolved(overrides: list[str]):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return resolve_cell(compose(config_name="config", overrides=overrides), overrides)


def test_smoke_goes_over_the_table_and_under_the_command_line(monkeypatch, tmp_path):
    monkeypatch.setenv("REPRO_SMOKE_DIR", str(tmp_path))
    cell = ["+table=glue_cpu", "model=minilm", "method=lora", "task=sst2"]
    table = resolved(cell)
    assert table.data.max_train_samples == 4000 and table.train.max_steps == -1  # the table's per-task subsample
    smoke = resolved([*cell, "debug=smoke"])
    assert (smoke.train.max_steps, smoke.data.max_train_samples, smoke.data.max_eval_samples) == (5, 64, 32)
    assert smoke.threads == 1 and smoke.train.learning_rate == table.train.learning_rate  # the row's lr stays
    assert smoke.paths.results_dir == f"{tmp_path}/results" and smoke.paths.log_dir == f"{tmp_path}/logs"
    assert "decode" not in smoke  # a preset key the cell has no group for is left out
    assert smoke_reason(smoke) == "debug=smoke" and smoke_reason(table) is None
    assert records.fingerprint(smoke) != records.fingerprint(table)
    assert resolved([*cell, "debug=smoke", "train.max_steps=7"]).train.max_steps == 7  # the command line wins
    nlg = resolved(["+table=e2e_cpu", "model=smollm2-135m", "method=lora", "task=e2e", "debug=smoke"])
    assert nlg.decode.max_inputs == 4 and nlg.train.max_steps == 5  # over e2e_cpu's decode.max_inputs=null, 250 steps


@pytest.mark.parametrize(
    "overrides",
    [
        ["debug=smoke", f"paths.results_dir={PROJECT_ROOT}/results"],
        ["debug=smoke", f"paths.results_dir={PROJECT_ROOT}/results/scratch"],
        ["train.max_steps=20", f"paths.results_dir={PROJECT_ROOT}/results"],  # a smoke run by its command line
        ["data.max_train_samples=10", f"paths.results_dir={PROJECT_ROOT}/results/../results/glue"],
    ],
)
def test_a_smoke_run_never_writes_into_the_committed_results(overrides):
    cell = ["+table=glue", "model=tiny-roberta", "method=lora", "task=rte"]
    with pytest.raises(ConfigError, match=r"^paths.results_dir=.*a smoke run .* never writes into the committed"):
        resolved([*cell, *overrides])
    assert resolved([*cell, f"paths.results_dir={PROJECT_ROOT}/results"]).train.max_steps == -1  # not smoke: allowed


def test_a_smoke_sweep_resolves_each_job_with_the_preset(tmp_path, monkeypatch):
    """The table sweeper resolves jobs to skip done cells and to report them: a `-m ... debug=smoke` job carries the
    preset's choice among its overrides, which is the primary config's own (not a value to set)."""
    monkeypatch.setenv("REPRO_SMOKE_DIR", str(tmp_path))
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        primary = compose(config_name="config", overrides=["+table=glue", "debug=smoke"])
    job = ["model=tiny-roberta", "method=lora", "task=rte", "seed=1", "+table=glue", "debug=smoke"]
    [(_, cfg, note)] = list(resolve_jobs(None, primary, [job], fallback=False))
    assert note is None and cfg is not None, note
    assert cfg.train.max_steps == 5 and cfg.seed == 1
    assert records.record_path(cfg) == tmp_path / "results/glue/tiny-roberta/lora/rte/seed1.json"
