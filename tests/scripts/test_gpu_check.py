"""scripts/gpu_check.sh (issue 31 item 8): it cannot run here (no GPU); its --dry-run checks the offline data, Java
and each cell's plan, parses every repro.bench command's arguments, and lists every step with its estimated minutes
(at most 8 on one H100); the torchrun step is listed as skipped with its reason."""

from __future__ import annotations

import os
import re
import subprocess

from repro import PROJECT_ROOT

SCRIPT = PROJECT_ROOT / "scripts" / "gpu_check.sh"


def dry_run(tmp_path, data_dir, **env):
    env = {
        **os.environ,
        "OUT": str(tmp_path / "gpu"),
        "RUNS": str(tmp_path / "gpu" / "runs"),
        "REPRO_DATA_DIR": str(data_dir),
        **env,
    }
    return subprocess.run(
        ["bash", str(SCRIPT), "--dry-run"], cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=600
    )


def test_gpu_check_dry_run_lists_every_step_within_eight_minutes(tmp_path, data_dir):
    assert subprocess.run(["bash", "-n", str(SCRIPT)]).returncode == 0
    out = dry_run(tmp_path, data_dir)
    assert out.returncode == 0, out.stderr[-3000:]
    err = out.stderr
    cmds = [line for line in err.splitlines() if line.startswith("+ ")]
    runs = [c for c in cmds if "-m repro.run" in c]
    assert len(runs) == 4 and all("model.source=tiny" in c for c in runs)  # random weights of the paper's sizes
    assert {m for c in runs for m in ("roberta-base", "gpt2-medium", "deberta-v2-xxlarge") if f"model={m}" in c} == {
        "roberta-base",
        "gpt2-medium",
        "deberta-v2-xxlarge",
    }
    assert not any("task=mnli" in c for c in runs)  # offline inputs only: the offline data holds no MNLI train file
    assert any("repro.bench latency" in c for c in cmds) and any("repro.bench train" in c for c in cmds)
    assert all(f"{tmp_path}/gpu" in c for c in cmds)  # every figure under $OUT
    listed = re.findall(r"^  (\S+) +([\d.]+) min", err, flags=re.M)
    assert [name for name, _ in listed] == ["cell1", "cell2", "cell3", "cell4", "latency", "train"]
    assert "data ok" in err and "java ok" in err and "plan fits" in err  # what the dry run checked
    assert "skipped: cell5: torchrun needs 2 GPUs" in err  # a line for the step it skips, and why
    total = float(re.search(r"total: ~([\d.]+) min of 8", err).group(1))
    assert abs(total - sum(float(m) for _, m in listed)) < 0.05
    assert 0 < total <= 8
    assert not (tmp_path / "gpu").exists()  # a dry run writes nothing: no record, no figure


def test_gpu_check_dry_run_fails_naming_the_missing_data(tmp_path):
    empty = tmp_path / "no-data"
    empty.mkdir()
    out = dry_run(tmp_path, empty)
    assert out.returncode == 1
    assert "FAIL: data missing" in out.stderr and "checks FAILED" in out.stderr
