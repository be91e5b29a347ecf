"""The dry run of a table's grid: every cell, the job count, the cost estimate and whether each cell would run or is
already done (its `ok` record has the config's fingerprint); nothing is launched, trained or written.

    python -m repro.plan [--jobs FILE] +table=<name> [axis=v1,v2 ...]        (console script: repro-plan)
    python -m repro.plan +table=glue model=roberta-base task=rte,mrpc
    python -m repro.plan +table=glue_cpu paths.results_dir=DIR
    python -m repro.plan --jobs jobs.tsv +table=glue    (also writes the job list scripts/slurm_table2.sh submits:
                                                         one line per job: index, init_from source, status, overrides)

The arguments are the runner's Hydra overrides (`python -m repro.run -m ...`; `--help` of the runner lists them): it is
the table sweeper's dry run (`--multirun ... dry_run=true`) under the runner's config, with a task function of its
own, so the planner never imports the runner (a single cell's `dry_run=true` is the runner's: its resolved config).
"""

from __future__ import annotations

import os
import sys

import hydra
from omegaconf import DictConfig

from repro import CONF_DIR
from repro.cli import UsageError, command, hydra_command, prog
from repro.config import options
from repro.plan import JOBS_FILE


def _launch_nothing(cfg: DictConfig) -> None:
    """The task function: never called, since with dry_run=true the table sweeper prints the plan and launches no
    job."""
    raise RuntimeError("repro.plan launches no job: the table sweeper's dry run should have stopped before this")


@command
def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help") for a in args):
        print(f"usage: {prog('plan')} [--jobs FILE] +table=<name> [override ...]\n\n{__doc__}")
        return 0
    if args[:1] == ["--jobs"]:  # also write the job list (repro.plan.report.write_job_list)
        if len(args) < 2 or "=" in args[1]:
            raise UsageError(f"--jobs needs a file to write the job list to; see {prog('plan')} --help")
        os.environ[JOBS_FILE] = os.path.abspath(args[1])
        args = args[2:]
    if not any(a.split("=")[0].lstrip("+") == "table" for a in args):
        raise UsageError(f"give a table, +table=<name> ({', '.join(options('table'))}); see {prog('plan')} --help")
    argv0 = sys.argv
    sys.argv = [sys.argv[0], "--multirun", *args, "dry_run=true", "hydra/sweeper=table"]  # Hydra reads sys.argv
    try:
        hydra_command(hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")(_launch_nothing))
    finally:
        sys.argv = argv0
    return 0


if __name__ == "__main__":
    sys.exit(main())
