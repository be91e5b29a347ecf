"""submitit's launchers (hydra-submitit-launcher 1.2.0), telling the table sweeper about each job as it ends.

The plugin's launch() submits a batch (a SLURM array, or local processes) and then waits for its jobs in submission
order, so a sweeper hears of a batch only when its last job has ended: a sweep of one SLURM array would say nothing
for days. These launchers are the plugin's, except that they wait with submitit.helpers.as_completed and call
`on_job_end(i, job_return)` (i: the job's index in the batch) as each job ends; the table sweeper sets it to print the
cell's progress line. conf/hydra/launcher/slurm.yaml and submitit_local.yaml select them.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, filter_overrides
from hydra_plugins.hydra_submitit_launcher import submitit_launcher
from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
from omegaconf import OmegaConf

log = logging.getLogger(__name__)


class ReportingLauncher(submitit_launcher.BaseSubmititLauncher):
    on_job_end: Callable[[int, JobReturn], None] | None = None

    def __getstate__(self) -> dict:
        """The launcher is pickled into every job (it is the job's callable): without the sweeper's callback."""
        state = self.__dict__.copy()
        state.pop("on_job_end", None)
        return state

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        """The plugin's launch (its executor, parameters and job list, as written there), then the jobs' returns as
        they end."""
        import submitit  # as the plugin: imported when a sweep launches, not when Hydra discovers plugins

        assert self.config is not None and len(job_overrides) > 0
        specific_init_keys = {"max_num_timeout"}
        init_params = {"folder": self.params["submitit_folder"]}
        init_params |= {f"{self._EXECUTOR}_{k}": v for k, v in self.params.items() if k in specific_init_keys}
        executor = submitit.AutoExecutor(cluster=self._EXECUTOR, **init_params)
        baseparams = set(OmegaConf.structured(BaseQueueConf).keys())
        executor.update_parameters(
            **{
                k if k in baseparams else f"{self._EXECUTOR}_{k}": v
                for k, v in self.params.items()
                if k not in specific_init_keys | {"submitit_folder"}
            }
        )
        log.info(f"Submitit '{self._EXECUTOR}' sweep output dir : {self.config.hydra.sweep.dir}")
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        if "mode" in self.config.hydra.sweep:
            os.chmod(sweep_dir, mode=int(str(self.config.hydra.sweep.mode), 8))
        job_params: list[Any] = []
        for idx, overrides in enumerate(job_overrides, start=initial_job_idx):
            log.info(f"\t#{idx} : {' '.join(filter_overrides(overrides))}")
            job_params.append((list(overrides), "hydra.sweep.dir", idx, f"job_id_for_{idx}", Singleton.get_state()))
        jobs = executor.map_array(self, *zip(*job_params))
        if self.on_job_end is not None:
            index = {id(job): i for i, job in enumerate(jobs)}
            for job in submitit.helpers.as_completed(jobs, poll_frequency=5):
                try:
                    ret = job.results()[0]
                except Exception as exc:  # noqa: BLE001 - the job's process failed: reported, raised below as the plugin
                    ret = JobReturn(overrides=list(job_overrides[index[id(job)]]), status=JobStatus.FAILED)
                    ret.return_value = exc
                self.on_job_end(index[id(job)], ret)
        return [job.results()[0] for job in jobs]


class LocalLauncher(ReportingLauncher, submitit_launcher.LocalLauncher):
    pass


class SlurmLauncher(ReportingLauncher, submitit_launcher.SlurmLauncher):
    pass
