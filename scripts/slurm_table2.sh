#!/usr/bin/env bash
# Table 2 (GLUE: RoBERTa base/large, DeBERTa XXL; 14 rows x 8 tasks x 5 seeds = 560 cells) on a SLURM cluster.
#
#   scripts/slurm_table2.sh                                   # the whole table
#   scripts/slurm_table2.sh model=roberta-base method=lora    # any axis narrowed (Hydra overrides)
#   DRY_RUN=1 scripts/slurm_table2.sh                         # print the grid, job count and GPU-hours only
#
# Run it from a persistent session (tmux/screen on the login node): the submitit launcher submits one array per
# sweep batch and waits for every job (facebookresearch/hydra #2479). Re-running it is safe: cells with an `ok`
# record of the same config are skipped before submission, a timed-out job is requeued (max_num_timeout) and
# resumes from its last checkpoint, a cell already running elsewhere is not started twice (per-cell lock).
#
# Cluster specifics (partition, account, setup lines) belong in conf/local/default.yaml (untracked; see
# conf/local/README.md) or in the environment variables below.
set -euo pipefail
cd "$(dirname "$0")/.."

: "${REPRO_DATA_DIR:?set REPRO_DATA_DIR to the data folder (GLUE tsv files), or leave the hub to download}"
PARTITION="${PARTITION:-gpu}"
export HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-0}" WANDB_MODE="${WANDB_MODE:-offline}"

if [[ "${DRY_RUN:-0}" == 1 ]]; then
  exec python -m repro.plan +table=glue "$@"
fi

launch() { python -m repro.run -m +table=glue hydra/launcher=slurm hydra.launcher.partition="$PARTITION" wandb.enabled=true "$@"; }

if printf '%s\n' "$@" | grep -q '^task='; then
  launch "$@"                      # the caller chose the tasks
else
  # MNLI first: MRPC, RTE and STS-B LoRA cells start from the MNLI LoRA weights of the same seed (train.init_from).
  launch task=mnli "$@"
  launch task=sst2,mrpc,cola,qnli,qqp,rte,stsb "$@"
fi

python -m repro.tables glue
python -m repro.plots glue
