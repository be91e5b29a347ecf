"""scripts/gpu_check.sh (issue 16 item 10): it cannot run here (no GPU); its --dry-run composes every repro.run cell
it would run (dry_run=true) and parses every repro.bench command's arguments."""

from __future__ import annotations

import os
import subprocess

from repro import PROJECT_ROOT

SCRIPT = PROJECT_ROOT / "scripts" / "gpu_check.sh"


def test_gpu_check_dry_run_composes_every_command(tmp_path, data_dir):
    assert subprocess.run(["bash", "-n", str(SCRIPT)]).returncode == 0
    env = {**os.environ, "OUT": str(tmp_path / "gpu"), "REPRO_DATA_DIR": data_dir}
    out = subprocess.run(
        ["bash", str(SCRIPT), "--dry-run"], cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=600
    )
    assert out.returncode == 0, out.stderr[-3000:]
    cmds = [line for line in out.stderr.splitlines() if line.startswith("+ ")]
    runs = [c for c in cmds if "-m repro.run" in c]
    assert len(runs) == 4 and all("model.source=tiny" in c for c in runs)  # random weights of the paper's sizes
    assert {m for c in runs for m in ("roberta-base", "gpt2-medium", "deberta-v2-xxlarge") if f"model={m}" in c} == {
        "roberta-base",
        "gpt2-medium",
        "deberta-v2-xxlarge",
    }
    assert any("repro.bench latency" in c for c in cmds) and any("repro.bench train" in c for c in cmds)
    assert all(f"{tmp_path}/gpu" in c for c in cmds)  # every figure under $OUT
    assert "every command composes" in out.stderr
    assert not (tmp_path / "gpu" / "runs").exists()  # a dry run writes no record
