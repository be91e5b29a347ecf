"""`python -m repro.plan +table=<name> [axis=v1,v2 ...]`: the table sweeper's dry run (`--multirun ... dry_run=true`),
under the runner's config but with a task function of its own, so the planner never imports the runner."""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from repro import CONF_DIR


def _launch_nothing(cfg: DictConfig) -> None:
    """The task function: never called, since with dry_run=true the table sweeper prints the plan and launches no
    job."""
    raise RuntimeError("repro.plan launches no job: the table sweeper's dry run should have stopped before this")


def main(argv: list[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    if not any(a.split("=")[0].lstrip("+") == "table" for a in args):
        print(
            "usage: python -m repro.plan +table=<name> [axis=v1,v2 ...]  (e.g. +table=glue model=roberta-base)",
            file=sys.stderr,
        )
        sys.exit(2)
    sys.argv = [sys.argv[0], "--multirun", *args, "dry_run=true", "hydra/sweeper=table"]
    hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")(_launch_nothing)()


if __name__ == "__main__":
    main()
