"""Which cells a paper table's grid expands to, in what order they are launched, and what they would cost: the logic
behind the table sweeper (hydra_plugins/repro_table_sweeper) and the dry run.

    python -m repro.plan +table=glue                                # the whole Table 2 grid: jobs, GPU-hours
    python -m repro.plan +table=glue model=roberta-large task=rte   # any axis narrowed on the command line
    python -m repro.run -m +table=glue dry_run=true                 # the same, through repro.run

One idea per module, in the order a sweep uses them:
  grid      the sweep's cartesian product narrowed to the table's rows (filter_jobs), and each job's resolved cell
  order     launch order: waves for train.init_from chains, tune-group candidates that wait for the tuning choice
  cost      the stated formulas: FLOPs and GPU-hours, peak memory per GPU, scratch disk (no measurement)
  report    the dry-run text: one line per cell and the totals, and the job list a SLURM script submits from
  lengths   tokens per example under dynamic padding (measured on the offline data, else stated)
  activations  saved activation bytes per layer of each architecture, fit to measurements
`python -m repro.plan` is __main__.py: the table sweeper's dry run, without importing the runner.
"""

# `python -m repro.plan --jobs FILE` sets this environment variable for the sweep it starts: the dry run
# (report.plan_jobs) then also writes the job list there (kept here, light, so that --help loads no torch)
JOBS_FILE = "REPRO_PLAN_JOBS"
