#!/usr/bin/env bash
# Table 2 (GLUE: RoBERTa base/large, DeBERTa XXL; 14 rows x 8 tasks x 5 seeds = 560 cells) on a SLURM cluster, every
# cell submitted at once: the cells that start from their MNLI cell's weights (train.init_from: RTE, MRPC and STS-B
# LoRA, 45 cells) each wait for that one MNLI cell only (sbatch --dependency=afterok), the other 515 start as GPUs free.
#
#   scripts/slurm_table2.sh                                   # the whole table
#   scripts/slurm_table2.sh model=roberta-base method=lora    # any axis narrowed (Hydra overrides)
#   DRY_RUN=1 scripts/slurm_table2.sh                         # the plan (jobs, GPU-hours, memory) and the sbatch
#                                                             # commands it would run; nothing is submitted
#
# How: `python -m repro.plan --jobs FILE` prints the plan and writes the grid's jobs, each with the job whose weights
# it starts from (repro.plan.report.write_job_list). Cells already done (an ok record with the same fingerprint) are
# not submitted. The independent cells are one job array (at most array_parallelism running at once); each dependent
# cell is one job with --dependency=afterok:<array>_<task of its MNLI cell> (a dependent whose source is already done
# has none); a last job renders the table once every cell has ended (afterany). It returns when everything is
# submitted: no process waits on the login node.
#
# Resources are the launcher's (conf/hydra/launcher/slurm.yaml, with conf/local/default.yaml's overrides; PARTITION
# in the environment wins): partition, account, qos, constraint, GPUs, CPUs, memory, time limit. A job that reaches
# its time limit gets USR1 signal_delay_s before the end and requeues itself (at most max_num_timeout times; the same
# job id, so its dependents keep waiting), then resumes from the cell's last checkpoint (train.save_every_minutes, and
# every evaluation). A cell running elsewhere is not started twice (repro.records.cell_lock).
set -uo pipefail
cd "$(dirname "$0")/.."

: "${REPRO_DATA_DIR:?set REPRO_DATA_DIR to the data folder (GLUE tsv files), or leave the hub to download}"
export HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-0}" WANDB_MODE="${WANDB_MODE:-offline}"
PY=${PYTHON:-python}
RUN_DIR=${RUN_DIR:-logs/slurm/table2-$(date +%Y%m%d-%H%M%S)}
mkdir -p "$RUN_DIR"

"$PY" -m repro.plan --jobs "$RUN_DIR/jobs.tsv" +table=glue "$@" | tee "$RUN_DIR/plan.txt" || {
  echo "slurm_table2: the plan failed; nothing submitted" >&2
  exit 2
}

exec "$PY" - "$RUN_DIR" "${DRY_RUN:-0}" "$@" <<'PY'
"""Submit the job list: one array for the independent cells, one job per dependent cell (afterok on its source)."""
import os
import shlex
import subprocess
import sys
from pathlib import Path

from hydra import compose, initialize_config_dir

from repro import CONF_DIR, PROJECT_ROOT

run_dir, dry = Path(sys.argv[1]).resolve(), sys.argv[2] == "1"
launcher_args = [a for a in sys.argv[3:] if a.startswith("hydra.launcher.")]  # the grid's axes are the plan's
with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
    cfg = compose("config", overrides=["+table=glue", "hydra/launcher=slurm", *launcher_args], return_hydra_config=True)
launcher = cfg.hydra.launcher

options = {
    "partition": os.environ.get("PARTITION") or launcher.get("partition"),
    "account": launcher.get("account"),
    "qos": launcher.get("qos"),
    "constraint": launcher.get("constraint"),
    "gpus-per-node": launcher.get("gpus_per_node"),
    "ntasks-per-node": 1,
    "cpus-per-task": launcher.get("cpus_per_task"),
    "mem": f"{launcher.mem_gb}G" if launcher.get("mem_gb") else None,
    "time": launcher.get("timeout_min"),
    "signal": f"B:USR1@{launcher.get('signal_delay_s') or 120}",
    **{str(k): v for k, v in (launcher.get("additional_parameters") or {}).items()},
}
common = [f"--{k}={v}" for k, v in options.items() if v is not None] + ["--requeue", "--parsable"]
setup = "\n".join(str(line) for line in (launcher.get("setup") or []))

# one cell per job: its overrides are line SLURM_ARRAY_TASK_ID + 1 of the list (array) or the arguments
cell = run_dir / "cell.sh"
cell.write_text(f"""#!/usr/bin/env bash
{setup}
cd {shlex.quote(str(PROJECT_ROOT))}
if [[ -n "${{SLURM_ARRAY_TASK_ID:-}}" ]]; then
  eval "set -- $(sed -n "$((SLURM_ARRAY_TASK_ID + 1))p" {shlex.quote(str(run_dir / 'array.txt'))})"
fi
requeue() {{  # the time limit is near: requeue this job (the same id; its dependents keep waiting), then stop
  if (( ${{SLURM_RESTART_COUNT:-0}} < {int(launcher.get('max_num_timeout') or 0)} )); then
    scontrol requeue "$SLURM_JOB_ID"
  fi
  kill -TERM "$child" 2>/dev/null
}}
trap requeue USR1
"${{PYTHON:-python}}" -m repro.run "$@" wandb.enabled=true &
child=$!
wait "$child"; status=$?
while kill -0 "$child" 2>/dev/null; do wait "$child"; status=$?; done   # `wait` returns early on USR1
exit $status
""")
cell.chmod(0o755)

jobs = [line.rstrip("\n").split("\t", 3) for line in (run_dir / "jobs.tsv").read_text().splitlines() if line]
status = {int(i): s for i, _, s, _ in jobs}
overrides = {int(i): o for i, _, _, o in jobs}
source = {int(i): int(src) for i, src, _, _ in jobs if src != "-"}
todo = [i for i, s in status.items() if s == "run"]
for i, s in status.items():
    if s != "run":
        print(f"not submitted ({'done' if s == 'done' else 'a tune group candidate: python -m repro.run -m'}): {overrides[i]}")
independent = [i for i in todo if status.get(source.get(i)) != "run"]
dependent = [i for i in todo if i not in independent]


def sbatch(args: list[str]) -> str:
    print("+ sbatch " + shlex.join(args), flush=True)
    if dry:
        return f"<job {len(submitted) + 1}>"
    out = subprocess.run(["sbatch", *args], capture_output=True, text=True)
    if out.returncode:
        sys.exit(f"slurm_table2: sbatch failed ({out.returncode}): {out.stderr.strip()}")
    return out.stdout.strip().split(";")[0]


submitted: dict[int, str] = {}  # job index -> its SLURM id (`<array>_<task>` for an array task)
if independent:
    (run_dir / "array.txt").write_text("".join(overrides[i] + "\n" for i in independent))
    parallel = launcher.get("array_parallelism")
    array = sbatch(
        [*common, "--job-name=lora-glue", f"--array=0-{len(independent) - 1}" + (f"%{parallel}" if parallel else ""),
         f"--output={run_dir}/%A_%a.out", str(cell)]
    )
    submitted |= {i: f"{array}_{k}" for k, i in enumerate(independent)}
while dependent:  # each after its source: afterok, so a failed MNLI cell leaves its dependents pending (never run)
    ready = [i for i in dependent if source[i] in submitted]
    if not ready:
        sys.exit(f"slurm_table2: train.init_from sources never submitted for jobs {dependent}")
    for i in ready:
        submitted[i] = sbatch(
            [*common, "--job-name=lora-glue-after", f"--dependency=afterok:{submitted[source[i]]}",
             f"--output={run_dir}/%j.out", str(cell), *shlex.split(overrides[i])]
        )
        dependent.remove(i)
if submitted:  # the table, once every cell has ended
    ids = sorted({j.split("_")[0] for j in submitted.values()})
    render = " && ".join([f"cd {shlex.quote(str(PROJECT_ROOT))}", *(launcher.get("setup") or []),
                          "python -m repro.tables glue", "python -m repro.plots glue"])
    sbatch([*common, "--job-name=lora-glue-tables", f"--dependency=afterany:{':'.join(ids)}",
            f"--output={run_dir}/tables.out", f"--wrap={render}"])
print(f"slurm_table2: {len(independent)} cells at once (array), {len(todo) - len(independent)} after their "
      f"train.init_from cell, {len(jobs) - len(todo)} not submitted; {'nothing submitted (DRY_RUN=1)' if dry else 'submitted'}; "
      f"logs and lists under {run_dir}")
PY
