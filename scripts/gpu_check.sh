#!/usr/bin/env bash
# The paper's GPU path end to end in at most 8 minutes on one H100, on random-weight models of the paper's sizes (no
# download: `model.source=tiny` builds conf/model/<name>.yaml's `arch` with random weights; tokenizers from
# $REPRO_DATA_DIR/gpt2-tokenizer) and the offline data only (CoLA, SST-2, E2E: ../shared/data has them, not MNLI).
#
#   REPRO_DATA_DIR=../shared/data bash scripts/gpu_check.sh       # the check
#   bash scripts/gpu_check.sh --dry-run                           # no GPU: checks the data, Java and the plan, and
#                                                                 # lists every step with its estimated minutes
#
# Steps (figures under $OUT, default results/bench/gpu/):
#   1. roberta-base LoRA, Table 2's CoLA cell (fp32, 512 tokens), 100 steps
#   2. gpt2-medium LoRA, Table 3's E2E cell, 100 steps, beam-10 decoding of 20 test inputs, scored (METEOR: Java)
#   3. deberta-v2-xxlarge LoRA, Table 2's SST-2 cell (fp16, gradient checkpointing), 4 steps at the paper's batch
#   4. deberta-v2-xxlarge FT, Table 2's SST-2 cell, 4 steps: the largest memory of the plan (fp32 weights, grads, Adam)
#   5. step 1's cell on 2 GPUs under torchrun, 50 steps (with one GPU: skipped, and the summary says so)
#   6. Table 1's latency grid (GPT-2 M: 32x512, 16x256, 1x128), 45 s of timed rounds          -> latency.json
#   7. ours vs PEFT, training-step time, RoBERTa-base LoRA and FT                              -> train.json
#   8. summary.json: each step's status and minutes (estimated and taken), each cell's record status, steps, time
#      (the records themselves under $RUNS), and torch.cuda.max_memory_allocated while training beside the plan's
#      estimate of it (repro/plan/cost.py)
#
# Every step is attempted: a failed or timed-out step is recorded and the next one runs; the exit status is 1 when
# any failed. Minutes are estimated from the plan (FLOPs at an H100's sustained rate, repro/plan/cost.py) plus the
# stated overheads below; a step runs under a time limit of twice its estimate, and one that would not finish inside
# the 8 minutes left is skipped, with a line that says so. Scores of random-weight models mean nothing: what is checked
# is that each step runs on the GPU in the tables' precision, its time, and its memory against the plan.
set -uo pipefail
cd "$(dirname "$0")/.."

DRY=0
if [[ "${1:-}" == "--dry-run" ]]; then DRY=1; shift; fi
OUT=${OUT:-results/bench/gpu}
PY=${PYTHON:-python}
BUDGET_MIN=${BUDGET_MIN:-8}
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false WANDB_MODE=${WANDB_MODE:-disabled}
export REPRO_DATA_DIR=${REPRO_DATA_DIR:-../shared/data}
# the cells' records: short random-weight runs, i.e. smoke runs, which never write into results/ (repro/cell.py)
RUNS=${RUNS:-.smoke/gpu_check/runs}
COMMON=(model.source=tiny force=true "paths.results_dir=$RUNS" "paths.log_dir=$OUT/logs")

# The steps' arguments. A cell's minutes come from its plan (below); a benchmark's are stated here.
CELL1=(+table=glue model=roberta-base method=lora task=cola train.max_steps=100 data.max_eval_samples=500 seed=0)
CELL2=(+table=e2e model=gpt2-medium method=lora task=e2e train.max_steps=100 data.max_train_samples=2000
  data.max_eval_samples=200 decode.max_inputs=20 seed=0)
CELL3=(+table=glue model=deberta-v2-xxlarge method=lora task=sst2 train.max_steps=4 data.max_train_samples=2000
  data.max_eval_samples=256 seed=0)
CELL4=(+table=glue model=deberta-v2-xxlarge method=ft task=sst2 train.max_steps=4 data.max_train_samples=2000
  data.max_eval_samples=256 seed=0)
CELL5=(+table=glue model=roberta-base method=lora task=cola train.max_steps=50 data.max_eval_samples=500 seed=1)
LATENCY=(latency --device cuda --budget-s 45 --max-wait-s 0 --out-dir "$OUT" --name latency)
TRAIN=(train --device cuda --models roberta-base --methods lora,ft --steps 5 --peft-rounds 4 --max-wait-s 0
  --out-dir "$OUT" --name train)
LATENCY_MIN=2.0 # GPT-2 M built 5 ways, warm-up, 45 s of rounds
TRAIN_MIN=1.2   # one worker process per method, then the ours-vs-PEFT rounds

# the plan and the steps' outcomes: beside the figures, or in a temporary folder for a dry run (which writes nothing)
if (( DRY )); then
  STATE=$(mktemp -d)
  trap 'rm -rf "$STATE"' EXIT
else
  STATE=$OUT
  mkdir -p "$OUT/logs"
fi
NGPU=0
if (( ! DRY )); then
  NGPU=$("$PY" -c 'import torch; print(torch.cuda.device_count() if torch.cuda.is_available() else 0)' 2>/dev/null || echo 0)
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/nvidia-smi.csv" 2>&1
fi

# The plan of every step: minutes and memory on this GPU (an H100 in a dry run), and the checks a dry run makes.
# One line per step in plan.tsv: name, minutes, plan GiB, what it checked (FAIL: ..., or SKIP: why it cannot run).
"$PY" - "$DRY" "$NGPU" "$LATENCY_MIN ${LATENCY[*]}" "$TRAIN_MIN ${TRAIN[*]}" "${CELL1[*]} ${COMMON[*]}" \
  "${CELL2[*]} ${COMMON[*]}" "${CELL3[*]} ${COMMON[*]}" "${CELL4[*]} ${COMMON[*]}" "${CELL5[*]} ${COMMON[*]}" \
  > "$STATE/plan.tsv" <<'PY'
import os, shutil, sys
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir

from repro import CONF_DIR
from repro.bench.__main__ import parser
from repro.cell import resolve_cell
from repro.plan.cost import GiB, estimate, fit_to_gpu, hours, memory_estimate, param_counts

# stated overheads, minutes: a python process (imports, data, tokenization), building random weights (per 1e9
# parameters, on the host, then to the GPU), beam search per test input (GPT-2 M, beam 10, 64 tokens), scoring with
# the E2E metrics (a JVM for METEOR)
PROCESS, BUILD_PER_B, DECODE_PER_INPUT, SCORING = 0.4, 0.5, 0.03, 0.3
dry, ngpu, benches, cells = sys.argv[1] == "1", int(sys.argv[2]), sys.argv[3:5], [a.split() for a in sys.argv[5:]]
gpu = "h100"  # the budget is sized for an H100's sustained rate (on another GPU the minutes are a lower bound)
gpu_bytes = torch.cuda.get_device_properties(0).total_memory if torch.cuda.is_available() else 80 * GiB
data = Path(os.environ["REPRO_DATA_DIR"])
with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
    for k, args in enumerate(cells, 1):
        world = 2 if k == 5 else 1
        notes = []
        try:
            cfg = resolve_cell(compose("config", overrides=args), args)  # as repro.run resolves it
        except Exception as exc:  # noqa: BLE001 - reported, the other steps go on
            print(f"cell{k}\t0\t?\tFAIL: does not compose: {type(exc).__name__}: {exc}")
            continue
        task = cfg.task
        folder = data / (task.get("glue_dir") and f"glue/{task.glue_dir}" or task.get("data_subdir") or task.name)
        needed = [folder / s.local for name, s in task.splits.items() if name in ("train", "dev", "test")]
        needed.append(data / "gpt2-tokenizer" / "tokenizer.json")
        missing = [str(p) for p in needed if not p.exists()]
        notes.append(f"FAIL: data missing: {', '.join(missing)}" if missing else "data ok")
        if any("METEOR" in str(m) for m in task.metrics):
            notes.append("java ok" if shutil.which("java") else "FAIL: no java on PATH (METEOR): the cell is refused")
        est = estimate(cfg)
        p, _ = param_counts(cfg)
        minutes = PROCESS + BUILD_PER_B * p / 1e9 + 60 * hours(est["flops"], gpu, str(cfg.train.precision))
        if cfg.get("decode"):
            minutes += DECODE_PER_INPUT * int(cfg.decode.max_inputs or 0) + SCORING
        try:
            fitted = cfg.copy()
            auto = fit_to_gpu(fitted, gpu_bytes, world)
            mem = memory_estimate(fitted, world)
            notes.append(f"plan fits {gpu_bytes / GiB:.0f} GiB" + (f" with {', '.join(auto)}" if auto else ""))
            plan = f"{mem['mem_bytes'] / GiB:.1f}"
        except Exception as exc:  # noqa: BLE001
            notes.append(f"FAIL: plan: {exc}")
            plan = "?"
        if k == 5 and ngpu < 2:
            notes.append(f"SKIP: torchrun needs 2 GPUs, {'a dry run counts one' if dry else f'{ngpu} present'}")
            minutes = 0.0
        print(f"cell{k}\t{minutes:.1f}\t{plan}\t{'; '.join(notes)}")
for line in benches:  # "<minutes> <what> <arguments>": parsed as repro.bench would (argparse says what is wrong)
    minutes, *args = line.split()
    try:
        parser().parse_args(args)
        note = "arguments parse"
    except SystemExit:
        note = "FAIL: the benchmark's arguments do not parse (above)"
    print(f"{args[0]}\t{minutes}\t-\t{note}")
PY
plan_rc=$?
if (( plan_rc )); then echo "gpu_check: the plan failed ($plan_rc)" >&2; fi

field() { awk -F'\t' -v s="$1" -v f="$2" '$1 == s { print $f }' "$STATE/plan.tsv"; }
: > "$STATE/steps.tsv"
FAILED=0
START=$(date +%s)
# step NAME MINUTES CMD...: run CMD under twice its estimate, inside the budget left; record the outcome
step() {
  local name=$1 minutes=$2; shift 2
  local note; note=$(field "$name" 4)
  if [[ "$note" == *"SKIP:"* ]]; then
    echo "skipped: $name: ${note#*SKIP: }" >&2
    printf '%s\tskipped\t%s\t0\t%s\n' "$name" "$minutes" "${note#*SKIP: }" >> "$STATE/steps.tsv"
    return
  fi
  if (( DRY )); then
    printf '  %-8s %5s min  %s\n' "$name" "$minutes" "$note" >&2
    echo "+ $*" >&2
    if [[ "$note" == *"FAIL:"* ]]; then FAILED=1; fi
    return
  fi
  local left=$(( BUDGET_MIN * 60 - ($(date +%s) - START) ))
  local limit; limit=$(awk -v m="$minutes" 'BEGIN { printf "%d", 2 * m * 60 + 30 }')
  if awk -v m="$minutes" -v l="$left" 'BEGIN { exit !(m * 60 > l) }'; then
    echo "skipped: $name: ~$minutes min estimated, ${left}s of the ${BUDGET_MIN}-minute budget left" >&2
    printf '%s\tskipped\t%s\t0\tbudget spent\n' "$name" "$minutes" >> "$STATE/steps.tsv"
    return
  fi
  (( limit > left )) && limit=$left
  echo "+ $* (limit ${limit}s)" >&2
  local t0; t0=$(date +%s)
  timeout "$limit" "$@" > "$OUT/logs/$name.log" 2>&1
  local rc=$?
  local took=$(( $(date +%s) - t0 ))
  local status=ok
  if (( rc == 124 )); then status="timed out"; elif (( rc )); then status="failed (exit $rc)"; fi
  [[ $status == ok ]] || FAILED=1
  echo "$name: $status in ${took}s (estimated ~$minutes min); log $OUT/logs/$name.log" >&2
  printf '%s\t%s\t%s\t%s\t%s\n' "$name" "$status" "$minutes" "$took" "$(tail -c 300 "$OUT/logs/$name.log" | tr '\t\n' '  ')" >> "$STATE/steps.tsv"
}
if (( DRY )); then echo "gpu_check --dry-run: the steps, estimated for one H100 (budget $BUDGET_MIN min):" >&2; fi
step cell1 "$(field cell1 2)" "$PY" -m repro.run "${CELL1[@]}" "${COMMON[@]}"
step cell2 "$(field cell2 2)" "$PY" -m repro.run "${CELL2[@]}" "${COMMON[@]}"
step cell3 "$(field cell3 2)" "$PY" -m repro.run "${CELL3[@]}" "${COMMON[@]}"
step cell4 "$(field cell4 2)" "$PY" -m repro.run "${CELL4[@]}" "${COMMON[@]}"
step cell5 "$(field cell5 2)" torchrun --standalone --nproc_per_node=2 -m repro.run "${CELL5[@]}" "${COMMON[@]}"
step latency "$(field latency 2)" "$PY" -m repro.bench "${LATENCY[@]}"
step train "$(field train 2)" "$PY" -m repro.bench "${TRAIN[@]}"

if (( DRY )); then
  total=$(awk -F'\t' '$4 !~ /SKIP:/ { s += $2 } END { print s }' "$STATE/plan.tsv")
  echo "total: ~$total min of $BUDGET_MIN" >&2
  awk -v t="$total" -v b="$BUDGET_MIN" 'BEGIN { exit !(t > b) }' && { echo "FAIL: over the budget" >&2; FAILED=1; }
  (( plan_rc )) && FAILED=1
  if (( FAILED )); then echo "gpu_check: dry run: checks FAILED (above)" >&2; exit 1; fi
  echo "gpu_check: dry run done: data, Java and the plan check out" >&2
  exit 0
fi

# 8. the summary: steps, and each cell's record with its peak GPU memory beside the plan's estimate
"$PY" - "$RUNS" "$OUT" <<'PY'
import json, sys
from pathlib import Path

from omegaconf import OmegaConf

from repro.plan.cost import CUDA_OVERHEAD, GiB, memory_estimate

runs, out = Path(sys.argv[1]), Path(sys.argv[2])
steps = [dict(zip(("step", "status", "minutes_estimated", "seconds_taken", "log_tail"), line.split("\t")))
         for line in (out / "steps.tsv").read_text().splitlines() if line]
cells = []
for path in sorted(runs.rglob("seed*.json")):
    r = json.loads(path.read_text())
    if "status" not in r:
        continue
    cfg = OmegaConf.create(r["config"])
    plan = memory_estimate(cfg, int(r.get("world_size") or 1))
    measured = r.get("gpu_peak_allocated_mb")
    cells.append({k: r.get(k) for k in ("table", "model", "method", "task", "seed", "status", "error", "steps",
                                        "wall_s", "train_runtime_s", "precision", "batch", "world_size")}
                 | {"record": str(path), "gpu_peak_allocated_gib": None if measured is None else round(measured / 1024, 2),
                    # max_memory_allocated holds no CUDA context, no allocator cache: set beside the plan less its 1 GiB
                    "plan_gib_less_cuda_context": round((plan["mem_bytes"] - CUDA_OVERHEAD) / GiB, 2),
                    "plan_peak_in": plan["peak_in"], "plan_checkpointing": plan["checkpointing"]})
(out / "summary.json").write_text(json.dumps({"steps": steps, "cells": cells}, indent=2) + "\n")
print(f"{'cell':<52} {'status':<7} {'GPU peak GiB':>12} {'plan GiB':>9}")
for c in cells:
    name = f"{c['model']}/{c['method']}/{c['task']}/seed{c['seed']}"
    print(f"{name:<52} {c['status']:<7} {c['gpu_peak_allocated_gib'] or '?':>12} {c['plan_gib_less_cuda_context']:>9}")
for s in steps:
    print(f"step {s['step']}: {s['status']} ({s['seconds_taken']} s, ~{s['minutes_estimated']} min estimated)")
print(f"wrote {out / 'summary.json'}")
PY
(( $? )) && FAILED=1
if (( FAILED )); then echo "gpu_check: done, some steps FAILED: $OUT/summary.json" >&2; exit 1; fi
echo "gpu_check: done, figures under $OUT" >&2
