"""TableSweeper: Hydra's BasicSweeper, keeping only the jobs that are cells of the paper's table.

Selected by a table config with `defaults: [override /hydra/sweeper: table]`; its grid is `hydra.sweeper.params`.
`dry_run=true` prints the expanded grid, its job count and a GPU-hour estimate (repro.plan) and launches nothing.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.utils import JobReturn
from omegaconf import OmegaConf

log = logging.getLogger(__name__)


class TableSweeper(BasicSweeper):
    def __init__(self, max_batch_size: Optional[int] = None, params: Optional[Dict[str, str]] = None,
                 only_table_rows: bool = True) -> None:
        super().__init__(max_batch_size=max_batch_size, params=params)
        self.only_table_rows = only_table_rows
        self.expansion = None

    def expand(self, arguments: List[str]) -> List[List[str]]:
        """The jobs this sweep launches, in order (also used by tests and the dry run)."""
        from repro.plan import Expansion, cartesian, filter_jobs

        assert self.config is not None and self.hydra_context is not None
        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        jobs = cartesian(parser.parse_overrides([*self._parse_config(), *arguments]))
        table = self.config.get("table")
        if self.only_table_rows and table is not None and table.get("rows"):
            self.expansion = filter_jobs(jobs, self.config)
        else:
            self.expansion = Expansion(kept=jobs)
        return self.expansion.kept

    def sweep(self, arguments: List[str]) -> Any:
        assert self.config is not None and self.launcher is not None and self.hydra_context is not None
        jobs = self.expand(arguments)
        if self.config.get("dry_run"):
            from repro.plan import plan_jobs

            print(plan_jobs(self.hydra_context.config_loader, self.config, jobs, self.expansion), flush=True)
            return []
        if self.expansion.n_dropped:
            log.info("table sweeper: %d jobs, %d combinations left out (not rows of table %s)",
                     len(jobs), self.expansion.n_dropped, self.config.table.name)
        jobs = self.skip_done(jobs)
        if not jobs:
            print("table sweeper: nothing to launch", flush=True)
            return []
        self.overrides = list(self.split_overrides_to_chunks(jobs, self.max_batch_size))
        sweep_dir = Path(self.config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
        returns: List[Sequence[JobReturn]] = []
        outcomes: Counter = Counter()
        initial_job_idx = 0
        while not self.is_done():
            batch = self.get_job_batch()
            tic = time.perf_counter()
            self.validate_batch_is_legal(batch)
            log.debug("validated %d jobs in %.2f s", len(batch), time.perf_counter() - tic)
            results = self.launcher.launch(batch, initial_job_idx=initial_job_idx)
            for r in results:
                outcomes[str(r.return_value)] += 1   # re-raises a job's exception, as the basic sweeper does
            initial_job_idx += len(batch)
            returns.append(results)
        print(f"table sweeper: {len(jobs)} jobs ended: " + ", ".join(f"{n} {k}" for k, n in sorted(outcomes.items())), flush=True)
        return returns

    def skip_done(self, jobs: List[List[str]]) -> List[List[str]]:
        """Leave out, before launching anything, the cells whose `ok` record has this config's fingerprint (the
        job itself checks again). A job that does not resolve is launched, to fail there with its reason."""
        from repro import records
        from repro.plan import resolve_jobs

        if self.config.get("force"):
            return jobs
        todo, done = [], []
        for job, cfg, note in resolve_jobs(self.hydra_context.config_loader, self.config, jobs, fallback=False):
            if cfg is None or note or records.finished_record(cfg) is None:
                todo.append(job)
            else:
                done.append(job)
                print(f"skipped (done: ok record, same fingerprint): {records.record_path(cfg)}", flush=True)
        print(f"table sweeper: {len(jobs)} jobs in the grid, {len(done)} already done and skipped, "
              f"{len(todo)} to launch (force=true reruns done cells)", flush=True)
        return todo
