"""Sweep throughput on a CPU: cells per hour, one cell at a time on every core against two cells at a time on one
core each (issue 13). The CPU tables (variants_cpu, Tables 5/6, glue_cpu_tuned) are many short cells, so the way a
grid is launched decides how long it takes.

    python -m repro.bench sweep            # 4 real cells (MiniLM LoRA, variants_cpu: SST-2 and CoLA x 2 seeds) per mode
    python -m repro.bench sweep --quick    # 2 tiny-roberta cells of a few steps (the test)

Both modes run the same cells (4 in full, 2 with --quick) through the real runner (`python -m repro.run -m ...`), from an empty results folder
each (REPRO_RESULTS_DIR in a temporary directory, so nothing is skipped and nothing committed is touched), one after
the other in this one run:

    sequential   the basic launcher: one process runs the cells one after another, torch on every core
    parallel     hydra/launcher=submitit_local hydra.sweeper.max_batch_size=2 threads=1: batches of two cells, each in
                 its own process on one thread (submitit's local executor starts a whole batch at once and ignores
                 cpus_per_task, hence the batch size and the cell's own `threads=1`)

cells/hour = cells / wall seconds of the whole command x 3600: start-up, data loading, evaluation and the batch
barrier included, as a user waits for them. The records' scores are kept beside, to show both modes trained the
same cells (one thread and two may differ in the last bits of a sum, so scores agree closely, not bit for bit).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from repro import PROJECT_ROOT
from repro.bench import common

FULL = {"cells": ["+table=variants_cpu", "model=minilm", "method=lora", "task=sst2,cola", "seed=0,1"], "n_cells": 4}
QUICK = {
    "cells": [
        "+table=glue",
        "model=tiny-roberta",
        "method=lora",
        "task=rte",
        "seed=0,1",
        "train.max_steps=4",
        "data.max_eval_samples=32",
        "data.max_train_samples=64",
    ],
    "n_cells": 2,  # one pair: enough for two at a time, and half of CI's minutes
}
MODES = {
    "sequential": [],
    "parallel": ["hydra/launcher=submitit_local", "hydra.sweeper.max_batch_size=2", "threads=1"],
}


def _records(results: Path) -> list[dict[str, Any]]:
    rows = []
    for path in sorted(results.rglob("seed*.json")):
        rec = json.loads(path.read_text())
        rows.append(
            {
                "cell": str(path.relative_to(results).with_suffix("")),
                "status": rec.get("status"),
                "wall_s": rec.get("wall_s"),
                "train_runtime_s": rec.get("train_runtime_s"),
                "peak_rss_mb": rec.get("peak_rss_mb"),
                "metrics": rec.get("metrics"),
                "torch_threads": (rec.get("provenance") or {}).get("torch_threads"),
            }
        )
    return rows


def run_mode(mode: str, cells: list[str], folder: Path) -> dict[str, Any]:
    results, logs = folder / mode / "results", folder / mode / "logs"
    env = {**os.environ, "REPRO_RESULTS_DIR": str(results), "REPRO_LOG_DIR": str(logs)}
    cmd = [sys.executable, "-m", "repro.run", "-m", *cells, *MODES[mode]]
    print(f"  {mode}: {' '.join(cmd[2:])}", flush=True)
    tic = time.perf_counter()
    proc = subprocess.run(cmd, cwd=PROJECT_ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - tic
    rows = _records(results)
    ok = sum(r["status"] == "ok" for r in rows)
    out = {
        "mode": mode,
        "command": " ".join(cmd[2:]),
        "returncode": proc.returncode,
        "wall_s": round(wall, 1),
        "cells_ok": ok,
        "cells": rows,
    }
    if proc.returncode != 0 or ok == 0:
        out["stderr_tail"] = proc.stderr[-3000:]
    out["cells_per_hour"] = round(ok / wall * 3600, 1) if ok else None
    return out


def run(args) -> dict[str, Any]:
    spec = QUICK if args.quick else FULL
    load = None if args.quick else common.wait_for_quiet(args.max_load, args.max_wait_s, log=print)
    machine = common.machine_info("cpu")
    with tempfile.TemporaryDirectory(prefix="repro-bench-sweep-") as tmp:
        modes = [run_mode(mode, spec["cells"], Path(tmp)) for mode in MODES]
    by = {m["mode"]: m for m in modes}
    seq, par = by["sequential"], by["parallel"]
    ratio = (par["cells_per_hour"] / seq["cells_per_hour"]) if seq["cells_per_hour"] and par["cells_per_hour"] else None
    faster = None if ratio is None else ("parallel" if ratio > 1 else "sequential")
    print(common.header("sweep throughput: one cell at a time vs two in parallel", machine, load))
    print(
        common.table(
            ["mode", "cells ok", "wall s", "cells/hour"],
            [[m["mode"], f"{m['cells_ok']}/{spec['n_cells']}", m["wall_s"], m["cells_per_hour"]] for m in modes],
        )
    )
    if ratio is not None:
        print(f"parallel / sequential throughput: {ratio:.2f}x -> {faster} is faster")
    return {
        "benchmark": "sweep",
        "quick": bool(args.quick),
        "machine": machine,
        "load": load,
        "git": common.git_revision(),
        "cells": spec["cells"],
        "n_cells": spec["n_cells"],
        "modes": modes,
        "parallel_over_sequential": None if ratio is None else round(ratio, 3),
        "faster": faster,
    }
