"""TableSweeper: Hydra's BasicSweeper, keeping only the jobs that are cells of the paper's table.

Selected by a table config with `defaults: [override /hydra/sweeper: table]`; its grid is `hydra.sweeper.params`.
`dry_run=true` prints the expanded grid, its job count and a GPU-hour estimate (repro.plan.report) and launches
nothing.
Jobs are launched in waves so that a cell starting from another cell's weights (train.init_from) runs after it, and
a tune group's other seeds run after its selection seed, for the chosen candidate only (repro/tune.py).
Each launched cell that finishes prints one line (k/N, the cell, its status and main score, its time, the sweep's
elapsed time and ETA) as it ends, and the sweep ends with a summary (progress.py): submitit's launchers (SLURM, local
processes) call back as each job of a batch ends (launchers.py); Hydra's in-process launcher gets one job at a time (it
runs them one after another anyway).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra._internal.core_plugins.basic_launcher import BasicLauncher
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.utils import JobReturn
from omegaconf import OmegaConf

from repro import records
from repro.plan.grid import Expansion, cartesian, filter_jobs, job_values, resolve_jobs
from repro.plan.order import deferred_jobs, describe_waves, init_sources, launch_waves, tuning_choices
from repro.results import UnreadableRecord, load_record
from repro.tune import group_of

from .progress import Progress, cell_label

log = logging.getLogger(__name__)


class TableSweeper(BasicSweeper):
    def __init__(
        self, max_batch_size: int | None = None, params: dict[str, str] | None = None, only_table_rows: bool = True
    ) -> None:
        super().__init__(max_batch_size=max_batch_size, params=params)
        self.only_table_rows = only_table_rows
        self.expansion = None
        self.progress: Progress | None = None

    def expand(self, arguments: list[str]) -> list[list[str]]:
        """The jobs this sweep launches, in order (also used by tests and the dry run)."""
        assert self.config is not None and self.hydra_context is not None
        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        jobs = cartesian(parser.parse_overrides([*self._parse_config(), *arguments]))
        table = self.config.get("table")
        if self.only_table_rows and table is not None and table.get("rows"):
            self.expansion = filter_jobs(jobs, self.config)
        else:
            self.expansion = Expansion(kept=jobs)
        return self.expansion.kept

    def sweep(self, arguments: list[str]) -> Any:
        """Launch the grid in waves: a cell that starts from another cell's weights (train.init_from: Table 2's RTE,
        MRPC, STS-B LoRA from MNLI) is launched only after that cell's wave has ended (a launcher's launch() returns
        when its jobs have ended, submitit's too), and not at all, with the reason, when that cell did not end ok."""
        assert self.config is not None and self.launcher is not None and self.hydra_context is not None
        jobs = self.expand(arguments)
        loader = self.hydra_context.config_loader
        sources = init_sources(loader, self.config, jobs)
        deferred = deferred_jobs(jobs, self.config)  # tune groups: other seeds wait for the selection seed's choice
        waves = [w for w in ([i for i in wave if i not in deferred] for wave in launch_waves(len(jobs), sources)) if w]
        if self.config.get("dry_run"):
            # here, not at the top: the cost model builds models on the meta device (torch, transformers), and Hydra
            # imports this plugin at the start of every app
            from repro.plan.report import plan_jobs

            print(plan_jobs(loader, self.config, jobs, self.expansion), flush=True)
            print(describe_waves(waves), flush=True)
            if deferred:
                slots = {
                    (group_of(self.config.table, d["model"], d["method"], d["variant"]), d["task"], d["seed"])
                    for d in (job_values(self.config, jobs[i]) for i in deferred)
                }
                print(
                    f"tuning: {len(deferred)} of these jobs are tune-group candidates on seeds other than the selection "
                    f"seed {self.config.table.tune.seed}: they wait for the others, and only the chosen candidate's "
                    f"run ({len(slots)} jobs; repro/tune.py), so at most {len(jobs) - len(deferred) + len(slots)} "
                    "jobs run in all",
                    flush=True,
                )
            return []
        if self.expansion.n_dropped:
            log.info(
                "table sweeper: %d jobs, %d combinations left out (not rows of table %s)",
                len(jobs),
                self.expansion.n_dropped,
                self.config.table.name,
            )
        if len(waves) > 1:
            print(f"table sweeper: {describe_waves(waves)}", flush=True)
        sweep_dir = Path(self.config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
        returns: list[Sequence[JobReturn]] = []
        errors: list[Exception] = []
        initial_job_idx = 0
        self.progress = progress = Progress(len(jobs))
        for k, wave in enumerate(waves):
            blocked = self.sources_not_ok({i: jobs[sources[i]] for i in wave if i in sources})
            for i in wave:
                if i in blocked:
                    print(
                        f"not run: {' '.join(jobs[i])}: its train.init_from source ({' '.join(jobs[sources[i]])}) "
                        f"{blocked[i]}",
                        flush=True,
                    )
                    progress.leave_out("not run (init_from source not ok)")
            candidates = [jobs[i] for i in wave if i not in blocked]
            todo = self.skip_done(candidates, f"wave {k + 1}" if len(waves) > 1 else "the grid")
            progress.leave_out("done before (skipped)", len(candidates) - len(todo))
            initial_job_idx = self.launch_batches(todo, initial_job_idx, returns, errors)
        if deferred:  # the selection seed's jobs have ended: run the chosen candidates on the other seeds
            waiting = [jobs[i] for i in deferred]
            todo = []
            for i, (run, why) in tuning_choices(loader, self.config, waiting).items():
                if run:
                    todo.append(waiting[i])
                else:
                    progress.leave_out(
                        "not run (tuning undecided)" if run is None else "not run (not the chosen candidate)"
                    )
                    log.info("not run: %s: %s", " ".join(waiting[i]), why)
            print(f"tuning: {len(todo)} of {len(waiting)} jobs on the other seeds are chosen candidates", flush=True)
            chosen = todo
            todo = self.skip_done(chosen, "the chosen candidates' other seeds")
            progress.leave_out("done before (skipped)", len(chosen) - len(todo))
            initial_job_idx = self.launch_batches(todo, initial_job_idx, returns, errors)
        print(progress.summary(), flush=True)
        if errors:  # as the basic sweeper, a job's exception fails the sweep (after every other job has run)
            raise errors[0]
        return returns

    def launch_batches(self, todo: list[list[str]], initial_job_idx: int, returns: list, errors: list) -> int:
        """Launch `todo` in batches (max_batch_size; one job at a time on Hydra's in-process launcher, which runs them
        one after another anyway) and report each cell as it ends (submitit's launchers: launchers.py) or, for a
        launcher that cannot say, when its batch has ended."""
        if not todo:
            return initial_job_idx
        size = self.max_batch_size or (1 if isinstance(self.launcher, BasicLauncher) else None)
        reports_each = hasattr(self.launcher, "on_job_end")
        for batch in self.split_overrides_to_chunks(todo, size):
            tic = time.perf_counter()
            self.validate_batch_is_legal(batch)
            log.debug("validated %d jobs in %.2f s", len(batch), time.perf_counter() - tic)
            if reports_each:
                self.launcher.on_job_end = lambda i, r, batch=batch: self.report(batch[i], r, errors)
            results = self.launcher.launch(batch, initial_job_idx=initial_job_idx)
            if not reports_each:
                for job, r in zip(batch, results):
                    self.report(job, r, errors)
            initial_job_idx += len(batch)
            returns.append(results)
        return initial_job_idx

    def report(self, job: list[str], result: JobReturn, errors: list) -> None:
        """The progress line of a job that ended: its status (the job's return value), and its record's main score and
        time. A job that raised is counted as `error`; its exception is re-raised after the sweep."""
        [(_, cfg, _)] = resolve_jobs(self.hydra_context.config_loader, self.config, [job], fallback=False)
        path = records.record_path(cfg) if cfg is not None else None
        record = records.read_record(path) if path is not None else None
        error = None
        try:
            status = str(result.return_value)
        except Exception as exc:  # noqa: BLE001 - the job raised: counted, re-raised after the sweep
            status, error = "error", f"{type(exc).__name__}: {exc}"
            errors.append(exc)
        label = cell_label(path, cfg.paths.results_dir if cfg is not None else None, job)
        print(self.progress.cell_done(label, status, record, error), flush=True)

    def sources_not_ok(self, sources: dict[int, list[str]]) -> dict[int, str]:
        """{job index: why} for the jobs whose init_from source job has no `ok` record with its config's fingerprint."""
        unique = [list(j) for j in dict.fromkeys(tuple(j) for j in sources.values())]
        why = {}
        for job, cfg, note in resolve_jobs(self.hydra_context.config_loader, self.config, unique, fallback=False):
            if cfg is None:
                why[tuple(job)] = f"does not resolve ({note})"
            elif records.finished_record(cfg) is None:
                record = records.read_record(records.record_path(cfg)) or {}
                why[tuple(job)] = (
                    f"ended {record['status']}: {record.get('error')}"
                    if record.get("status") not in (None, "ok")
                    else unreadable_record(cfg)
                    or f"has no ok record with its config's fingerprint ({records.record_path(cfg)})"
                )
        return {i: why[tuple(src)] for i, src in sources.items() if tuple(src) in why}

    def skip_done(self, jobs: list[list[str]], label: str = "the grid") -> list[list[str]]:
        """Leave out, before launching anything, the cells whose `ok` record has this config's fingerprint (the
        job itself checks again). A job that does not resolve is launched, to fail there with its reason."""
        if self.config.get("force"):
            return jobs
        todo, done = [], []
        for job, cfg, note in resolve_jobs(self.hydra_context.config_loader, self.config, jobs, fallback=False):
            if cfg is not None and (why := unreadable_record(cfg)):
                print(f"warning: {why}: the cell runs again and replaces it", flush=True)
            if cfg is None or note or records.finished_record(cfg) is None:
                todo.append(job)
            else:
                done.append(job)
                print(f"skipped (done: ok record, same fingerprint): {records.record_path(cfg)}", flush=True)
        print(
            f"table sweeper: {len(jobs)} jobs in {label}, {len(done)} already done and skipped, "
            f"{len(todo)} to launch (force=true reruns done cells)",
            flush=True,
        )
        return todo


def unreadable_record(cfg) -> str | None:
    """The cell's record file, when it exists and cannot be read (path and why: repro.results.load_record), else None:
    such a cell is not done, and the sweep says so instead of running it over the file silently."""
    path = records.record_path(cfg)
    if not path.exists():
        return None
    try:
        load_record(path)
    except UnreadableRecord as exc:
        return str(exc)
    return None
