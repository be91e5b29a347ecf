"""The dry-run report: what a table's sweep would launch, one line per cell with its seeds, its costs (repro.plan.cost)
and whether it would run or be skipped (an `ok` record with the same fingerprint), then the totals; and, on request,
the job list a SLURM script submits from (`write_job_list`). A single cell's dry run (`python -m repro.run ...
dry_run=true` without -m) is the runner's own: its resolved config (repro/run.py).
"""

from __future__ import annotations

import copy
import os
import shlex
from collections import OrderedDict
from pathlib import Path

from omegaconf import DictConfig

from repro import records
from repro.errors import ReproError
from repro.plan import JOBS_FILE
from repro.plan.cost import (
    DDP_WORLD_SIZE,
    GPU_MARGIN,
    GiB,
    checkpoint_every,
    disk_estimate,
    estimate,
    fit_to_gpu,
    memory_estimate,
    slurm_config,
    slurm_gpu,
)
from repro.plan.grid import Expansion, resolve_jobs
from repro.plan.order import deferred_jobs, init_sources


def plan_jobs(config_loader, primary: DictConfig, jobs: list[list[str]], expansion: Expansion) -> str:
    """Resolve each cell once (the seed changes nothing the estimate reads) and render the dry-run report; with
    REPRO_PLAN_JOBS set, also write the job list there (`write_job_list`)."""
    cells, notes = [], []
    for _job, cfg, note in resolve_jobs(config_loader, primary, jobs):
        if note and note not in notes:
            notes.append(note)
        cells.append(describe_cell(cfg))
    if os.environ.get(JOBS_FILE):
        write_job_list(Path(os.environ[JOBS_FILE]), config_loader, primary, jobs, cells)
    return render(primary.table.name, cells, expansion, notes)


def write_job_list(path: Path, config_loader, primary: DictConfig, jobs: list[list[str]], cells: list[dict]) -> None:
    """One line per job, tab-separated: its index; the index of the job whose weights it starts from
    (train.init_from) or `-`; `run`, `done` (an ok record with its fingerprint) or `tune` (a tune group's candidate on
    another seed: it waits for the tuning choice, which only the table sweeper makes); its overrides, shell-quoted.
    scripts/slurm_table2.sh submits from it: every job at once, each init_from job after its source (afterok)."""
    sources = init_sources(config_loader, primary, jobs)
    tune = set(deferred_jobs(jobs, primary))
    lines = []
    for i, (job, cell) in enumerate(zip(jobs, cells)):
        status = "tune" if i in tune else "run" if cell["status"] == "run" else "done"
        launched = [o for o in job if o.split("=")[0] != "dry_run"]  # the dry run's own switch, not the job's
        lines.append(f"{i}\t{sources.get(i, '-')}\t{status}\t{shlex.join(launched)}\n")
    path.write_text("".join(lines))


def describe_cell(cfg: DictConfig) -> dict:
    """One resolved cell: its identity, its record and whether it would run or be skipped, and its costs: memory on the
    SLURM GPU as the runner would fit it there (repro.plan.cost.fit_to_gpu: `auto` lists what it changed, `fits` is
    False where the runner would refuse it, `mem_note` then says why), with one process and under torchrun on
    DDP_WORLD_SIZE GPUs (the `ddp_` keys), and its checkpoint interval."""
    est = estimate(cfg)
    est |= checkpoint_every(cfg, est)
    _, gpu_gib = slurm_gpu()
    for world, prefix in ((1, ""), (DDP_WORLD_SIZE, "ddp_")):
        fitted = copy.deepcopy(cfg)
        try:
            try:
                auto, fit = fit_to_gpu(fitted, gpu_gib * GiB, world), True
            except ReproError as exc:  # over even with checkpointing: sized so (fitted), and said why
                auto, fit = [], False
                est[f"{prefix}mem_note"] = str(exc)
            mem = memory_estimate(fitted, world)
            est |= {f"{prefix}auto": auto, f"{prefix}fits": fit, **{f"{prefix}{k}": v for k, v in mem.items()}}
        except Exception as exc:  # noqa: BLE001 - a cell the formula cannot size (a batch the processes cannot share)
            est |= {f"{prefix}mem_bytes": None, f"{prefix}mem_note": f"{type(exc).__name__}: {exc}"}
    est |= disk_estimate(cfg)
    done = records.finished_record(cfg)
    return {
        "model": cfg.model.name,
        "method": cfg.method.name,
        "variant": cfg.variant,
        "task": cfg.task.name,
        "seed": cfg.seed,
        "record": str(records.record_path(cfg)),
        "status": "skip (ok record, same fingerprint)" if done is not None and not cfg.force else "run",
        **est,
    }


def _fmt_n(n) -> str:
    if n is None:
        return "?"
    for unit, div in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= div:
            return f"{n / div:.1f}{unit}"
    return str(n)


def _gib(n) -> str:
    return "?" if n is None else f"{n / GiB:.1f}"


def _fmt_bytes(n) -> str:
    if n is None:
        return "?"
    for unit, div in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6)):
        if n >= div:
            return f"{n / div:.1f} {unit}"
    return f"{n / 1e3:.1f} KB"


def _mark(c: dict, key: str, prefix: str = "") -> str:
    """A cell's per-device batch or checkpointing as the runner would run it, `*` where fit_to_gpu changed it."""
    if c.get(f"{prefix}mem_bytes") is None:
        return "?"
    value = c[f"{prefix}per_device_batch"] if key == "batch" else ("yes" if c[f"{prefix}checkpointing"] else "no")
    changed = any(
        a.startswith("train.max_per_device" if key == "batch" else "model.gradient") for a in c[f"{prefix}auto"]
    )
    return f"{value}{'*' if changed else ''}"


def _ddp(c: dict) -> str:
    """The cell's memory per GPU under torchrun, `!` where it does not fit even at batch 1 with checkpointing."""
    return _gib(c.get("ddp_mem_bytes")) + ("!" if c.get("ddp_mem_bytes") is not None and not c["ddp_fits"] else "")


def render(table_name: str, cells: list[dict], expansion: Expansion, notes: list[str] | None = None) -> str:
    """The dry-run report: one line per (model, method, variant, task) with its seeds, then one per row, then totals."""
    gpu, gpu_gib = slurm_gpu()
    limit_h = float(slurm_config().get("timeout_min") or 0) / 60
    lines = [f"Dry run of table {table_name}: nothing is launched.", ""]
    groups: OrderedDict = OrderedDict()
    for c in cells:
        groups.setdefault((c["model"], c["method"], c["variant"], c["task"]), []).append(c)
    head = (
        f"{'model':<20} {'method':<10} {'variant':<8} {'task':<6} {'seeds':<11} {'N':>7} {'seq':>4} {'tok':>5} "
        f"{'examples':>10} {'GPU-h/job':>9} {'GiB/GPU':>7} {'b/dev':>5} {'GC':>4} {f'DDP{DDP_WORLD_SIZE}':>7} "
        f"{'disk/job':>9} {'run/skip':>8}"
    )
    lines += [head, "-" * len(head)]
    for (model, method, variant, task), cs in groups.items():
        c = cs[0]
        seeds = ",".join(str(x["seed"]) for x in cs)
        gh = "?" if c.get("gpu_hours") is None else f"{c['gpu_hours']:.2f}"
        n_run = sum(x["status"] == "run" for x in cs)
        ex = "?" if c.get("examples") is None else f"{c['examples']:,}"
        tok = "?" if c.get("tokens") is None else f"{c['tokens']:.0f}"
        lines.append(
            f"{model:<20} {method:<10} {variant:<8} {task:<6} {seeds:<11} {_fmt_n(c['params']):>7} {c['seq']:>4} "
            f"{tok:>5} {ex:>10} {gh:>9} {_gib(c.get('mem_bytes')):>7} {_mark(c, 'batch'):>5} {_mark(c, 'gc'):>4} "
            f"{_ddp(c):>7} {_fmt_bytes(c.get('disk_bytes')):>9} {n_run:>3}/{len(cs) - n_run:<4}"
        )
    rows = OrderedDict()
    for c in cells:
        rows.setdefault((c["model"], c["method"], c["variant"]), []).append(c)
    total = sum(c.get("gpu_hours") or 0 for c in cells)
    to_run = [c for c in cells if c["status"] == "run"]
    lines += [
        "",
        f"rows ({len(rows)}): GPU-hours, peak memory per GPU (the row's largest cell, {gpu} {gpu_gib:.0f} GiB) with one "
        f"process and under torchrun on {DDP_WORLD_SIZE} GPUs (DDP gradient buckets included), the longest time between "
        "two checkpoints (an evaluation's or train.save_every_*'s: the most a pre-emption loses, V100 hours), scratch "
        "disk (2 checkpoints + final weights per job, all jobs)",
    ]
    long_epochs, unfit = [], []
    for (model, method, variant), cs in rows.items():
        gh = sum(c.get("gpu_hours") or 0 for c in cs)
        fit = {}
        for prefix, where in (("", "one process"), ("ddp_", f"torchrun on {DDP_WORLD_SIZE} GPUs")):
            mems = [c.get(f"{prefix}mem_bytes") for c in cs]
            peak = None if None in mems else max(mems)
            verdict = "?" if peak is None else "fits" if all(c[f"{prefix}fits"] for c in cs) else "DOES NOT FIT"
            fit[prefix] = f"{_gib(peak):>6} GiB {verdict:<12}"
            if verdict == "DOES NOT FIT":  # the row's largest cell: what the runner would say (fit_to_gpu)
                big = max((c for c in cs if not c[f"{prefix}fits"]), key=lambda c: c[f"{prefix}mem_bytes"])
                buckets = big[f"{prefix}ddp_bucket_bytes"]
                unfit.append(
                    f"does not fit, {where}: {big[f'{prefix}mem_note']}"
                    + (f" (DDP's gradient buckets: {_gib(buckets)} GiB)" if buckets else "")
                )
        worst = max(cs, key=lambda c: c.get("ckpt_hours") or 0)
        ckpt = "?" if worst.get("ckpt_hours") is None else f"~{worst['ckpt_hours']:.2f} h"
        ckpt += f" ({worst['ckpt_steps']:,} steps)" if worst.get("ckpt_steps") else " (evaluations)"
        long_epochs += [c for c in cs if limit_h and (c.get("epoch_hours") or 0) > limit_h]
        disk = sum(c.get("disk_bytes") or 0 for c in cs)
        lines.append(
            f"  {model:<20} {method:<10} {variant:<8} {len(cs):>4} jobs  {gh:>10.1f} GPU-h  {fit['']} "
            f"DDP{DDP_WORLD_SIZE} {fit['ddp_']} ckpt {ckpt:<24} {_fmt_bytes(disk):>9} disk"
        )
    if expansion.dropped:
        lines += ["", f"left out of the cartesian product: {expansion.n_dropped} jobs"]
        lines += [f"  {n:>5}  {reason}" for reason, n in sorted(expansion.dropped.items())]
    for note in notes or []:
        lines.append(f"note: {note}")
    for c in {(c["model"], c["method"], c["variant"], c["task"]): c for c in long_epochs}.values():
        what = (
            f"warning: one epoch of {c['model']} {c['method']} {c['variant']} {c['task']} takes ~"
            f"{c['epoch_hours']:.1f} V100 hours, longer than the SLURM job's {limit_h:.3g} h (timeout_min): "
        )
        lines.append(
            what + f"it runs across requeues, and a pre-emption loses at most ~{c['ckpt_hours']:.2f} h (a checkpoint "
            f"every {c['ckpt_steps']:,} steps)"
            if c.get("ckpt_steps")
            else what + "no checkpoint between evaluations (train.save_every_minutes=null): every requeue starts the "
            "epoch again"
        )
    lines += unfit
    sources = sorted({f"{c['task']}: {c['lengths']}" for c in cells if c.get("lengths")})
    lines += [
        "",
        f"jobs: {len(cells)} ({len(to_run)} to run, {len(cells) - len(to_run)} already done and would be skipped)",
        f"estimated GPU-hours (V100): {total:,.1f} in all, {sum(c.get('gpu_hours') or 0 for c in to_run):,.1f} still to run",
        "formula: FLOPs = k*N*T_train + 2*N*T_eval, k=6 (FT) or 4 (frozen backbone); N = non-embedding params;",
        "         T = examples x tok, the expected padded length of a per-device batch (dynamic padding, capped at seq);",
        "         V100 at 30 TFLOP/s (fp16) or 10 TFLOP/s (fp32) sustained (repro/plan/cost.py)",
        "lengths (repro/plan/lengths.py): " + "; ".join(sources),
    ]
    for prefix, what in (("", "one process"), ("ddp_", f"torchrun on {DDP_WORLD_SIZE} GPUs")):
        sized = [c for c in cells if c.get(f"{prefix}mem_bytes") is not None]
        ok = [c for c in sized if c[f"{prefix}fits"]]
        auto = sum(bool(c.get(f"{prefix}auto")) for c in ok)
        if sized:
            lines.append(
                f"peak memory per GPU, {what}: largest cell {_gib(max(c[f'{prefix}mem_bytes'] for c in sized))} GiB on "
                f"a {gpu} ({gpu_gib:.0f} GiB, cells fit under {GPU_MARGIN:.0%} of it): {len(ok)} of {len(cells)} jobs "
                f"fit, {auto} of them after fit_to_gpu (* in b/dev, GC)"
            )
    lines.append(
        "formula: 4 B x P (+2 B x P fp16/bf16 autocast copy) + 12 B x trainable (grads, Adam) (+4 B x trainable: DDP "
        "buckets) + L x A_layer (measured per architecture, repro/plan/activations.py; checkpointing: L x 4sbh + one "
        "layer) + decoder logits, or the eval pass if larger, + 1 GiB (repro/plan/cost.py)"
    )
    disks = [c for c in cells if c.get("disk_bytes") is not None]
    if disks:
        ckpt_all = sum(c["disk_bytes"] for c in disks)
        final = sum(c["final_bytes"] for c in disks)
        biggest = sorted((c["disk_bytes"] - c["final_bytes"] for c in disks), reverse=True)
        at_once = int(slurm_config().get("array_parallelism") or len(disks))
        lines.append(
            f"scratch disk: {_fmt_bytes(ckpt_all)} in all (every job's 2 checkpoints + final weights); final "
            f"weights kept after the grid {_fmt_bytes(final)}; checkpoints are deleted when a cell ends, so with "
            f"{at_once} jobs at once (slurm array_parallelism) at most {_fmt_bytes(sum(biggest[:at_once]) + final)}"
        )
    return "\n".join(lines)
