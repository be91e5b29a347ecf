"""The dry-run report: what a table's sweep would launch, one line per cell with its seeds, its costs (repro.plan.cost)
and whether it would run or be skipped (an `ok` record with the same fingerprint), then the totals. A single cell's
dry run (`python -m repro.run ... dry_run=true` without -m) is the runner's own: its resolved config (repro/run.py).
"""

from __future__ import annotations

from collections import OrderedDict

from omegaconf import DictConfig

from repro import records
from repro.plan.cost import GPU_MARGIN, GiB, disk_estimate, estimate, memory_estimate, slurm_config, slurm_gpu
from repro.plan.grid import Expansion, resolve_jobs


def plan_jobs(config_loader, primary: DictConfig, jobs: list[list[str]], expansion: Expansion) -> str:
    """Resolve each cell once (the seed changes nothing the estimate reads) and render the dry-run report."""
    cells, notes = [], []
    for _job, cfg, note in resolve_jobs(config_loader, primary, jobs):
        if note and note not in notes:
            notes.append(note)
        cells.append(describe_cell(cfg))
    return render(primary.table.name, cells, expansion, notes)


def describe_cell(cfg: DictConfig) -> dict:
    """One resolved cell: its identity, its record and whether it would run or be skipped, and its costs."""
    est = estimate(cfg)
    try:
        est |= memory_estimate(cfg) | disk_estimate(cfg)
    except Exception as exc:  # noqa: BLE001 - a cell the formula cannot size still gets its FLOPs line
        est |= {"mem_bytes": None, "disk_bytes": None, "mem_note": f"{type(exc).__name__}: {exc}"}
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


def render(table_name: str, cells: list[dict], expansion: Expansion, notes: list[str] | None = None) -> str:
    """The dry-run report: one line per (model, method, variant, task) with its seeds, then totals."""
    gpu, gpu_gib = slurm_gpu()
    lines = [f"Dry run of table {table_name}: nothing is launched.", ""]
    groups: OrderedDict = OrderedDict()
    for c in cells:
        groups.setdefault((c["model"], c["method"], c["variant"], c["task"]), []).append(c)
    head = (
        f"{'model':<20} {'method':<10} {'variant':<8} {'task':<6} {'seeds':<11} {'N':>7} {'seq':>4} {'examples':>10} "
        f"{'GPU-h/job':>9} {'GiB/GPU':>7} {'b/dev':>5} {'GC':>4} {'disk/job':>9} {'run/skip':>8}"
    )
    lines += [head, "-" * len(head)]
    for (model, method, variant, task), cs in groups.items():
        c = cs[0]
        seeds = ",".join(str(x["seed"]) for x in cs)
        gh = "?" if c.get("gpu_hours") is None else f"{c['gpu_hours']:.2f}"
        n_run = sum(x["status"] == "run" for x in cs)
        ex = "?" if c.get("examples") is None else f"{c['examples']:,}"
        gc = "?" if c.get("mem_bytes") is None else ("yes" if c["checkpointing"] else "no")
        lines.append(
            f"{model:<20} {method:<10} {variant:<8} {task:<6} {seeds:<11} {_fmt_n(c['params']):>7} {c['seq']:>4} "
            f"{ex:>10} {gh:>9} {_gib(c.get('mem_bytes')):>7} {c.get('per_device_batch', '?'):>5} {gc:>4} "
            f"{_fmt_bytes(c.get('disk_bytes')):>9} {n_run:>3}/{len(cs) - n_run:<4}"
        )
    rows = OrderedDict()
    for c in cells:
        rows.setdefault((c["model"], c["method"], c["variant"]), []).append(c)
    total = sum(c.get("gpu_hours") or 0 for c in cells)
    to_run = [c for c in cells if c["status"] == "run"]
    lines += [
        "",
        f"rows ({len(rows)}): GPU-hours, peak memory per GPU (the row's largest cell, {gpu} {gpu_gib:.0f} GiB), "
        "scratch disk (2 checkpoints + final weights per job, all jobs)",
    ]
    for (model, method, variant), cs in rows.items():
        gh = sum(c.get("gpu_hours") or 0 for c in cs)
        mems = [c["mem_bytes"] for c in cs if c.get("mem_bytes") is not None]
        peak = max(mems) if mems else None
        fits = "" if peak is None else ("  fits" if peak <= GPU_MARGIN * gpu_gib * GiB else "  DOES NOT FIT")
        disk = sum(c.get("disk_bytes") or 0 for c in cs)
        lines.append(
            f"  {model:<20} {method:<10} {variant:<8} {len(cs):>4} jobs  {gh:>10.1f} GPU-h  "
            f"{_gib(peak):>6} GiB/GPU{fits:<14} {_fmt_bytes(disk):>9} disk"
        )
    if expansion.dropped:
        lines += ["", f"left out of the cartesian product: {expansion.n_dropped} jobs"]
        lines += [f"  {n:>5}  {reason}" for reason, n in sorted(expansion.dropped.items())]
    for note in notes or []:
        lines.append(f"note: {note}")
    lines += [
        "",
        f"jobs: {len(cells)} ({len(to_run)} to run, {len(cells) - len(to_run)} already done and would be skipped)",
        f"estimated GPU-hours (V100): {total:,.1f} in all, {sum(c.get('gpu_hours') or 0 for c in to_run):,.1f} still to run",
        "formula: FLOPs = k*N*T_train + 2*N*T_eval, k=6 (FT) or 4 (frozen backbone); N = non-embedding params;",
        "         T = examples x max_seq_length (padded); V100 at 30 TFLOP/s (fp16) or 10 TFLOP/s (fp32) sustained",
    ]
    mems = [c["mem_bytes"] for c in cells if c.get("mem_bytes") is not None]
    if (
        mems
    ):  # "repro/plan.py docstring": now repro/plan/cost.py's; the text is kept as it was (issue 26's identity check)
        over = sum(m > GPU_MARGIN * gpu_gib * GiB for m in mems)
        lines += [
            f"peak memory per GPU: largest cell {_gib(max(mems))} GiB on a {gpu} ({gpu_gib:.0f} GiB, cells fit under "
            f"{GPU_MARGIN:.0%} of it): {len(mems) - over} of {len(mems)} jobs fit",
            "formula: 4 B x P (+2 B x P fp16 autocast copy) + 12 B x trainable (grads, Adam) + L x (34sbh + 5as^2b) B per "
            "layer (x2 fp32; checkpointing: L x 4sbh + one layer) + decoder logits + 1 GiB (repro/plan.py docstring)",
        ]
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
