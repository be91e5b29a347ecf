"""In what order a table's jobs are launched.

Waves: a job that starts from another job's weights (train.init_from: Table 2's RTE, MRPC and STS-B LoRA start from
the MNLI cell of the same model and seed) is one wave after that job; each wave is launched when the one before it
has ended. The tuning wait: a tune group's candidates (repro/tune.py) run on the table's selection seed first; on
the other seeds only the candidate chosen from the selection seed's records runs, after them.
"""

from __future__ import annotations

import os

from omegaconf import DictConfig

from repro import records, tune
from repro.plan.grid import job_values, override_key, resolve_jobs
from repro.results import selection_score

# ---------------------------------------------------------------- waves: train.init_from chains


def init_sources(config_loader, primary: DictConfig, jobs: list[list[str]]) -> dict[int, int]:
    """{job index: index of the job whose weights its train.init_from loads}. A job whose init_from no job of `jobs`
    writes has no entry."""
    writes, reads = {}, {}
    for i, (_job, cfg, _note) in enumerate(resolve_jobs(config_loader, primary, jobs, fallback=False)):
        if cfg is None:  # does not resolve: launched in the first wave, to fail there with its reason
            continue
        writes[os.path.abspath(records.weights_path(cfg))] = i
        if cfg.train.get("init_from"):
            reads[i] = os.path.abspath(cfg.train.init_from)
    return {i: writes[path] for i, path in reads.items() if writes.get(path, i) != i}


def launch_waves(n_jobs: int, sources: dict[int, int]) -> list[list[int]]:
    """Job indices in waves, grid order kept within each: a job is one wave after the job it starts from."""
    depth: dict[int, int] = {}

    def wave(i: int, chain: tuple = ()) -> int:
        if i in chain:
            raise ValueError(f"train.init_from cycle between jobs {chain}")
        if i not in depth:
            depth[i] = 0 if i not in sources else 1 + wave(sources[i], (*chain, i))
        return depth[i]

    waves: list[list[int]] = []
    for i in range(n_jobs):
        while len(waves) <= wave(i):
            waves.append([])
        waves[wave(i)].append(i)
    return waves


def describe_waves(waves: list[list[int]]) -> str:
    if len(waves) < 2:
        return "launch order: one wave (no job starts from another job's weights)"
    parts = [f"wave {k + 1}: {len(w)} jobs" for k, w in enumerate(waves)]
    return (
        "launch order: " + "; ".join(parts) + ". A job that starts from another job's weights (train.init_from) "
        "is in a later wave; each wave is launched when the one before it has ended"
    )


# ---------------------------------------------------------------- the tuning wait


def _with(job: list[str], **values) -> list[str]:
    """The job's overrides with these keys set (replaced where present, appended where not)."""
    out = [o for o in job if override_key(o)[0] not in values]
    return out + [f"{k}={v}" for k, v in values.items()]


def deferred_jobs(jobs: list[list[str]], primary: DictConfig) -> list[int]:
    """Indices of the jobs that wait for a tuning choice (repro.tune): a tune group's candidate on a seed other than
    the table's selection seed. They run only if their candidate is chosen, after the selection seed's jobs."""
    table = primary.get("table")
    seed = tune.selection_seed(table) if table is not None else None
    if seed is None:
        return []
    out = []
    for i, job in enumerate(jobs):
        d = job_values(primary, job)
        if int(d["seed"]) != seed and tune.group_of(table, d["model"], d["method"], d["variant"]) is not None:
            out.append(i)
    return out


def tuning_choices(config_loader, primary: DictConfig, jobs: list[list[str]]) -> dict[int, tuple[bool | None, str]]:
    """{index into jobs: (run it?, why)} for deferred jobs: each runs iff its candidate is the one repro.tune.choose
    picks from the finished records (same config fingerprint) of every candidate on the selection seed; None: no
    choice can be made yet (why says which candidate is missing)."""
    table = primary.table
    seed = tune.selection_seed(table)
    probes, slots = [], []  # every candidate on the selection seed, once per (job, candidate)
    for i, job in enumerate(jobs):
        d = job_values(primary, job)
        group = tune.group_of(table, d["model"], d["method"], d["variant"])
        for v in tune.groups(table)[group]:
            probes.append(_with(job, variant=v, seed=seed))
            slots.append((i, v))
    scores: dict[int, dict] = {i: {} for i in range(len(jobs))}
    for (i, v), (_job, cfg, _note) in zip(slots, resolve_jobs(config_loader, primary, probes, fallback=False)):
        done = records.finished_record(cfg) if cfg is not None else None
        if done is not None:
            scores[i][v] = selection_score(done, table)
        else:
            previous = records.read_record(records.record_path(cfg)) if cfg is not None else None
            scores[i][v] = None if previous and previous.get("status") not in (None, "ok", "busy") else tune.NOT_RUN
    out = {}
    for i, job in enumerate(jobs):
        d = job_values(primary, job)
        chosen, why = tune.choose(scores[i], tune.criterion(table)[1])
        out[i] = (None, why) if chosen is None else (chosen == d["variant"], f"{d['task']}: {chosen} chosen, {why}")
    return out
