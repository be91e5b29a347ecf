"""scripts/slurm_table2.sh (issue 31 item 6): every cell submitted at once, each train.init_from cell after its own
MNLI cell only. No SLURM here: a fake `sbatch` on PATH records each submission and answers with a job id."""

from __future__ import annotations

import os
import re
import subprocess

from repro import PROJECT_ROOT

SCRIPT = PROJECT_ROOT / "scripts" / "slurm_table2.sh"
FAKE_SBATCH = """#!/bin/sh
n=$(cat "$SBATCH_LOG.n" 2>/dev/null || echo 100); n=$((n + 1)); echo $n > "$SBATCH_LOG.n"
printf '%s\\n' "$*" >> "$SBATCH_LOG"
echo "$n"
"""


def run(tmp_path, *args, dry=False):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "sbatch").write_text(FAKE_SBATCH)
    (bin_dir / "sbatch").chmod(0o755)
    env = {
        **os.environ,
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "SBATCH_LOG": str(tmp_path / "sbatch.log"),
        "RUN_DIR": str(tmp_path / "run"),
        "REPRO_RESULTS_DIR": str(tmp_path / "results"),
        "DRY_RUN": "1" if dry else "0",
    }
    out = subprocess.run(["bash", str(SCRIPT), *args], cwd=PROJECT_ROOT, env=env, capture_output=True, text=True)
    assert out.returncode == 0, (out.stdout + out.stderr)[-3000:]
    log = tmp_path / "sbatch.log"
    return out.stdout, log.read_text().splitlines() if log.exists() else []


def test_independent_cells_go_at_once_and_each_mnli_initialised_cell_after_its_mnli_cell(tmp_path):
    stdout, calls = run(tmp_path, "model=roberta-base", "method=lora", "seed=0,1")
    assert "estimated GPU-hours (V100)" in stdout  # the plan, printed first
    array, *after, tables = calls
    assert "--array=0-9%64" in array and "--dependency" not in array  # 5 tasks x 2 seeds, none waits
    listed = (tmp_path / "run" / "array.txt").read_text().splitlines()
    assert sorted({re.search(r"task=(\w+)", line).group(1) for line in listed}) == [
        "cola",
        "mnli",
        "qnli",
        "qqp",
        "sst2",
    ]
    assert len(after) == 6  # MRPC, RTE, STS-B LoRA x 2 seeds: each after the MNLI cell of its seed only
    for call in after:
        seed = re.search(r"seed=(\d)", call).group(1)
        task = int(re.search(r"afterok:101_(\d+)", call).group(1))
        assert listed[task].startswith("model=roberta-base method=lora task=mnli") and f"seed={seed}" in listed[task]
        assert re.search(r"task=(mrpc|rte|stsb)", call)
    assert "--dependency=afterany:101:102:103:104:105:106:107" in tables and "repro.tables glue" in tables
    assert all("--requeue" in c and "--signal=B:USR1@120" in c and "--time=1440" in c for c in calls)
    assert "10 cells at once (array), 6 after their train.init_from cell" in stdout


def test_dry_run_submits_nothing(tmp_path):
    stdout, calls = run(tmp_path, "model=roberta-base", "method=lora", "task=mnli,rte", "seed=0", dry=True)
    assert calls == [] and "nothing submitted (DRY_RUN=1)" in stdout
    assert "+ sbatch" in stdout and "--dependency=afterok:<job 1>_0" in stdout
