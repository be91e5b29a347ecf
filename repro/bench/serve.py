"""A batch of examples of T tasks, each with its own LoRA: one unmerged mixed-batch forward (repro.serve's
MixedBatchModel: h_i = W0 x_i + s B_t A_t x_i, per-example pairs and heads) against the merged alternatives of
Sec. 4.2, for several batch sizes and task counts, in one run:

  mixed            one forward of the whole batch, LoRA unmerged, each example its own task's pair and head
  merged_resident  one merged model per task held in memory (T copies of W); one forward per task on its examples
  merged_switch    one base; per task: switch (unmerge the previous ΔW, merge this one, Sec. 4.1), then its forward
  one_task         the whole batch through one merged model: the single-task latency the others are compared to

    python -m repro.bench serve             # MiniLM's architecture (random weights), sequence 128
    python -m repro.bench serve --quick     # tiny-roberta: seconds (tests)

The examples of a batch are dealt to the tasks in turn (batch 8, 4 tasks: 2 each; batch 1: one task). Timings do not
depend on the values of A and B, so the adapters are random (TaskAdapter.random, r=8 on W_q, W_v). Each round runs
the four strategies in a rotating order; the figure is the median over rounds, and the ratios are taken within this
run. Memory is counted, not sampled: the weights each strategy keeps resident.
"""

from __future__ import annotations

import time
from typing import Any

import torch

from repro.bench import common
from repro.serve import MixedBatchModel, Switchboard, TaskAdapter, fold, load_head

FULL = {"model": "minilm", "seq": 128, "batch_sizes": [1, 8, 32], "task_counts": [2, 4, 8], "rounds": 7, "r": 8}
QUICK = {"model": "tiny-roberta", "seq": 16, "batch_sizes": [1, 4], "task_counts": [2], "rounds": 2, "r": 4}
STRATEGIES = ("mixed", "merged_resident", "merged_switch", "one_task")


def _bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def run(args) -> dict[str, Any]:
    spec = dict(QUICK if args.quick else FULL)
    if getattr(args, "models", None):
        spec["model"] = args.models.split(",")[0]
    if getattr(args, "seq", None):
        spec["seq"] = args.seq
    device = common.resolve_device(args.device)
    if device.type != "cpu":
        raise SystemExit("the serve benchmark runs on the CPU only (--device cpu)")
    load = None if args.quick else common.wait_for_quiet(args.max_load, args.max_wait_s, log=print)
    machine = common.machine_info(str(device))
    base = common.build_model(spec["model"], "classification").eval()
    vocab = base.config.vocab_size
    T_max = max(spec["task_counts"])
    adapters = [TaskAdapter.random(base, f"task{t}", spec["r"], seed=t) for t in range(T_max)]
    base_bytes = _bytes(base.parameters())
    adapter_bytes = _bytes(x for a in adapters[:1] for pair in a.factors.values() for x in pair)
    started = time.monotonic()
    cells = []
    with torch.inference_mode():
        for T in spec["task_counts"]:
            tasks = adapters[:T]
            mixed = MixedBatchModel(base, tasks)
            resident = []
            for a in tasks:
                m = common.build_model(spec["model"], "classification").eval()
                m.load_state_dict(base.state_dict())
                fold(m, a)
                load_head(m, a.head)
                resident.append(m)
            board = Switchboard(common.build_model(spec["model"], "classification").eval())
            board.model.load_state_dict(base.state_dict())
            for b in spec["batch_sizes"]:
                g = torch.Generator().manual_seed(b)
                ids = torch.randint(3, vocab, (b, spec["seq"]), generator=g)
                task_ids = torch.arange(b) % T
                groups = [(t, (task_ids == t).nonzero().squeeze(1)) for t in range(T) if (task_ids == t).any()]

                def run_mixed():
                    mixed(task_ids, input_ids=ids)

                def run_resident():
                    for t, rows in groups:
                        resident[t](input_ids=ids[rows])

                def run_switch():
                    for t, rows in groups:
                        board.switch(tasks[t])
                        board.model(input_ids=ids[rows])

                def run_one_task():
                    resident[0](input_ids=ids)

                fns = dict(zip(STRATEGIES, (run_mixed, run_resident, run_switch, run_one_task)))
                for fn in fns.values():  # warm-up
                    fn()
                samples = {k: [] for k in STRATEGIES}
                for rnd in range(spec["rounds"]):
                    order = STRATEGIES[rnd % 4 :] + STRATEGIES[: rnd % 4]
                    for k in order:
                        samples[k].append(common.timed(fns[k], device))
                stats = {k: common.summarize(v) for k, v in samples.items()}
                med = {k: s["median_ms"] for k, s in stats.items()}
                cells.append(
                    {
                        "tasks": T,
                        "batch": b,
                        "tasks_in_batch": len(groups),
                        "stats": stats,
                        "mixed_over_merged_resident": med["mixed"] / med["merged_resident"],
                        "mixed_over_merged_switch": med["mixed"] / med["merged_switch"],
                        "mixed_over_one_task": med["mixed"] / med["one_task"],
                    }
                )
            board.switch(None)
            memory = {
                "mixed": base_bytes + T * adapter_bytes,
                "merged_resident": T * base_bytes,
                "merged_switch": base_bytes + T * adapter_bytes,
            }
            for c in cells:
                if c["tasks"] == T:
                    c["resident_weight_bytes"] = memory
    rows = [
        [c["tasks"], c["batch"]]
        + [common.fmt(c["stats"][k]["median_ms"], ".1f") for k in STRATEGIES]
        + [common.fmt(c["mixed_over_merged_resident"], ".2f"), common.fmt(c["mixed_over_merged_switch"], ".2f")]
        for c in cells
    ]
    print(
        common.header(f"serve: mixed-task batch vs merged per task ({spec['model']}, seq {spec['seq']})", machine, load)
    )
    print(common.table(["tasks", "batch", *(f"{k} ms" for k in STRATEGIES), "mixed/resident", "mixed/switch"], rows))
    return {
        "benchmark": "serve",
        "quick": bool(args.quick),
        "machine": machine,
        "load": load,
        "settings": spec,
        "weights": {"base_bytes": base_bytes, "adapter_bytes": adapter_bytes},
        "cells": cells,
        "wall_s": round(time.monotonic() - started, 1),
    }
