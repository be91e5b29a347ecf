"""What the runner shows: the resolved config of a cell (its dry run, its log, its log folder), the recorded score of
a skipped cell, its own --help without the training stack imported, and no folder for a rejected command."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import yaml

from repro import PROJECT_ROOT, records
from repro.cell import resolve_cell
from repro.run import run_cell

GLUE_CPU_LORA_RTE = ["+table=glue_cpu", "model=minilm", "method=lora", "task=rte"]


def may_differ(key: str, shown, recorded) -> bool:
    """Whether the dry run may show another value than the committed record's config at `key`, by the rules that keep
    a fingerprint equal (repro/records.py): a volatile key (where data, results and logs are; how the command line was
    typed; dry_run itself; W&B; keys that do not change what a cell computes), or a key added to conf/ after the record
    was written (ADDED_KEYS), absent from the record and shown at its behaviour-preserving value."""
    if any(key == v or key.startswith(v + ".") for v in records.VOLATILE_KEYS):
        return True
    return key in records.ADDED_KEYS and recorded == "<absent>" and shown == records.ADDED_KEYS[key]


def flat(tree, prefix=""):
    """{dotted key: leaf} of nested dicts (lists are leaves; an empty dict is a leaf)."""
    if not isinstance(tree, dict) or not tree:
        return {prefix[:-1]: tree}
    return {k: v for key, value in tree.items() for k, v in flat(value, f"{prefix}{key}.").items()}


def env_for(tmp_path: Path) -> dict:
    return {**os.environ, "REPRO_LOG_DIR": str(tmp_path / "logs"), "REPRO_DEBUG": ""}


def test_dry_run_prints_the_config_the_committed_record_ran(tmp_path):
    """30.1: `dry_run=true` of the glue_cpu LoRA RTE cell prints its resolved config as YAML (the table's row: lr 1e-3,
    alpha 16, not conf/'s 5e-4 and 8), equal to its committed record's `config` but for the named keys; it runs and
    writes nothing."""
    record_path = PROJECT_ROOT / "results/glue_cpu/minilm/lora/rte/seed0.json"
    record = records.read_record(record_path)
    proc = subprocess.run(
        [sys.executable, "-m", "repro.run", *GLUE_CPU_LORA_RTE, "dry_run=true"],
        cwd=PROJECT_ROOT,
        env=env_for(tmp_path),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    shown = yaml.safe_load(proc.stdout)
    assert shown["train"]["learning_rate"] == 1e-3 and shown["method"]["alpha"] == 16  # the table's row
    got, want = flat(shown), flat(record["config"])
    differ = {k for k in got.keys() | want.keys() if got.get(k, "<absent>") != want.get(k, "<absent>")}
    assert differ, "the dry run is expected to differ at least in dry_run itself"
    unexplained = [k for k in differ if not may_differ(k, got.get(k, "<absent>"), want.get(k, "<absent>"))]
    assert not unexplained, unexplained
    head = proc.stdout.splitlines()[:2]
    assert f"fingerprint {record['fingerprint']}" in head[0] and "nothing runs" in head[0]
    assert "would be skipped" in head[1] and "accuracy 53.43" in head[1]
    assert not (tmp_path / "logs").exists()


def test_help_is_the_projects_and_imports_no_training_stack():
    """30.7: --help prints the project's usage text (with the config groups, debug=smoke among them) and imports
    neither torch, transformers, peft, bitsandbytes nor wandb (what made it take 8 s)."""
    code = (
        "import runpy, sys\n"
        "sys.argv = ['repro.run', '--help']\n"
        "try:\n    runpy.run_module('repro.run', run_name='__main__')\nexcept SystemExit:\n    pass\n"
        "heavy = [m for m in ('torch', 'transformers', 'peft', 'bitsandbytes', 'wandb') if m in sys.modules]\n"
        "print('HEAVY', heavy)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.startswith("repro.run: train and score one cell")
    assert "dry_run=true" in proc.stdout and "debug: smoke" in proc.stdout and "is powered by Hydra" not in proc.stdout
    assert "HEAVY []" in proc.stdout


def test_rejected_command_leaves_no_folder(tmp_path):
    """30.7: bad input (an unknown model; a bad value) exits 2 with one line and writes nothing: no log folder, no
    Hydra run folder or .hydra/ in the working directory."""
    for bad in (["model=nope"], ["model=tiny-roberta", "method.r=0"]):
        proc = subprocess.run(
            [sys.executable, "-m", "repro.run", "+table=glue", "method=lora", "task=rte", *bad],
            cwd=tmp_path,
            env={**env_for(tmp_path), "PYTHONPATH": str(PROJECT_ROOT)},
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert proc.returncode == 2 and proc.stderr.startswith("error: "), proc.stderr[-2000:]
        assert list(tmp_path.iterdir()) == [], list(tmp_path.rglob("*"))


def test_cell_logs_its_config_to_its_log_folder_and_a_skip_says_its_score(compose_config, data_dir, caplog):
    """30.1 and 30.3: a cell that runs logs its resolved config at its start; its log folder (made once it runs)
    holds cell.log (everything from the start) and config.yaml, equal to the record's config; run again, it is
    skipped, saying where its record is and its main score."""
    overrides = ["+table=glue", "model=tiny-roberta", "method=lora", "task=rte", "debug=smoke"]
    cfg = resolve_cell(compose_config(overrides), overrides)
    with caplog.at_level(logging.INFO, logger="repro.run"):
        record = run_cell(cfg)
    assert record["status"] == "ok", record.get("error")
    folders = list((Path(cfg.paths.log_dir) / "runs").iterdir())
    assert len(folders) == 1 and folders[0].name.endswith("_glue_tiny-roberta_lora_rte_seed0")
    assert yaml.safe_load((folders[0] / "config.yaml").read_text()) == record["config"]
    log_text = (folders[0] / "cell.log").read_text()
    assert "resolved config:" in log_text and "max_steps: 5" in log_text and "ok " in log_text
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="repro.run"):
        again = run_cell(resolve_cell(compose_config(overrides), overrides))
    assert again.get("skipped")
    score = 100 * record["metrics"]["accuracy"]
    assert f"skipped: {records.record_path(cfg)} (ok, accuracy {score:.2f}, fingerprint" in caplog.text
    assert len(list((Path(cfg.paths.log_dir) / "runs").iterdir())) == 1  # a skipped cell makes no log folder
