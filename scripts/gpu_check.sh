#!/usr/bin/env bash
# One prepared check of the paper's path end to end on a GPU, on random-weight models of the paper's sizes (no
# download: `model.source=tiny` builds conf/model/<name>.yaml's `arch` with random weights; tokenizers from
# $REPRO_DATA_DIR/gpt2-tokenizer). Run from the repository root, with the data prepared (scripts/prepare_data.py):
#
#   REPRO_DATA_DIR=../shared/data scripts/gpu_check.sh            # the check (~30-60 min on one V100/A100)
#   scripts/gpu_check.sh --dry-run                                # no GPU: every command composes/parses, nothing trains
#
# Steps (figures as JSON under $OUT, default results/bench/gpu/):
#   1. RoBERTa-base LoRA, Table 2's CoLA cell (fp32, seq 512, global batch 64), 300 steps       -> summary.json ($RUNS: records)
#   2. GPT-2 M LoRA, Table 3's E2E cell (seq 512, batch 8), 300 steps, beam-10 decoding of 100 test inputs
#   3. DeBERTa XXL LoRA, Table 2's MNLI cell: one step at the paper's batch (global 64, seq 256, fp16, checkpointing)
#   4. the CoLA cell of step 1 on 2 GPUs with torchrun (only when two GPUs are present), 50 steps
#   5. Table 1's latency grid (GPT-2 M, 32x512 / 16x256 / 1x128)                               -> latency.json
#   6. ours-vs-PEFT training-step comparison                                                     -> train.json
# Scores of random-weight models mean nothing; what is checked is that every step runs on the GPU in the tables'
# precision, its time and peak memory (summary.json: each cell's record status, steps, wall time, metrics).
set -euo pipefail

DRY=0
if [[ "${1:-}" == "--dry-run" ]]; then DRY=1; shift; fi
OUT=${OUT:-results/bench/gpu}
PY=${PYTHON:-python}
STEPS=${STEPS:-300}
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false WANDB_MODE=${WANDB_MODE:-disabled}
: "${REPRO_DATA_DIR:?set REPRO_DATA_DIR to the prepared data folder (e.g. ../shared/data)}"
mkdir -p "$OUT"
# the cells' records: short random-weight runs, i.e. smoke runs, which never write into results/ (repro/cell.py)
RUNS=${RUNS:-.smoke/gpu_check/runs}
COMMON=(model.source=tiny force=true "paths.results_dir=$RUNS" "paths.log_dir=$OUT/logs")

# A cell through repro.run; with --dry-run, the same command composes and resolves the cell (dry_run=true).
cell() {
  echo "+ $PY -m repro.run $*" >&2
  if (( DRY )); then "$PY" -m repro.run "$@" dry_run=true >/dev/null; else "$PY" -m repro.run "$@"; fi
}
# A benchmark through repro.bench; with --dry-run, its arguments are only parsed.
bench() {
  echo "+ $PY -m repro.bench $*" >&2
  if (( DRY )); then
    "$PY" -c 'import sys; from repro.bench.__main__ import parser; parser().parse_args(sys.argv[1:])' "$@"
  else
    "$PY" -m repro.bench "$@"
  fi
}

if (( ! DRY )); then
  "$PY" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else "no CUDA device: run with --dry-run")'
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/nvidia-smi.csv"
fi
NGPU=$( (( DRY )) && echo 2 || "$PY" -c 'import torch; print(torch.cuda.device_count())')

# 1. RoBERTa-base LoRA (Table 2 CoLA: no MNLI init), a few hundred steps
cell +table=glue model=roberta-base method=lora task=cola "train.max_steps=$STEPS" seed=0 "${COMMON[@]}"
# 2. GPT-2 M LoRA on E2E with decoding (the tables' precision: the e2e table's)
cell +table=e2e model=gpt2-medium method=lora task=e2e "train.max_steps=$STEPS" data.max_eval_samples=500 \
  decode.max_inputs=100 seed=0 "${COMMON[@]}"
# 3. DeBERTa XXL LoRA: one step at the paper's batch (global 64 = 8 per GPU x 8, here 8 x 8 accumulation on one GPU)
cell +table=glue model=deberta-v2-xxlarge method=lora task=mnli train.max_steps=1 data.max_train_samples=64 \
  data.max_eval_samples=64 seed=0 "${COMMON[@]}"
# 4. two GPUs: the same CoLA cell under torchrun (per-device batch and accumulation follow WORLD_SIZE)
if (( NGPU >= 2 )); then
  if (( DRY )); then
    cell +table=glue model=roberta-base method=lora task=cola train.max_steps=50 seed=1 "${COMMON[@]}"
  else
    echo "+ torchrun --nproc_per_node=2 -m repro.run ... seed=1" >&2
    torchrun --standalone --nproc_per_node=2 -m repro.run +table=glue model=roberta-base method=lora task=cola \
      train.max_steps=50 seed=1 "${COMMON[@]}"
  fi
else
  echo "skipped: the 2-GPU torchrun cell ($NGPU GPU present)" >&2
fi
# 5. Table 1's latency grid; 6. ours vs PEFT, one training step each
bench latency --device cuda --out "$OUT/latency.json"
bench train --device cuda --out "$OUT/train.json"

if (( ! DRY )); then
  "$PY" - "$RUNS" "$OUT/summary.json" <<'PY'
import json, sys
from pathlib import Path
runs, out = Path(sys.argv[1]), Path(sys.argv[2])
cells = []
for path in sorted(runs.rglob("seed*.json")):
    r = json.loads(path.read_text())
    if "status" not in r:
        continue
    cells.append({k: r.get(k) for k in ("table", "model", "method", "task", "seed", "status", "error", "steps",
                                        "wall_s", "metrics", "batch", "trainable_params")} | {"record": str(path)})
out.write_text(json.dumps({"cells": cells}, indent=2) + "\n")
bad = [c for c in cells if c["status"] != "ok"]
print(f"wrote {out}: {len(cells)} cells, {len(bad)} not ok")
sys.exit(1 if bad else 0)
PY
fi
if (( DRY )); then echo "gpu_check: dry run done, every command composes" >&2; else echo "gpu_check: done, figures under $OUT" >&2; fi
