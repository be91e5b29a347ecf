"""Weights & Biases for one cell: a run that carries the cell (its name, its resolved config, its record and weights).

    python -m repro.run +table=glue_cpu model=minilm method=lora task=rte wandb.enabled=true   # offline by default
    WANDB_MODE=online WANDB_PROJECT=lora python -m repro.run ... wandb.enabled=true            # the environment wins

`wandb.enabled=true` turns it on (off by default). The run:
  * is named table/model/method[.variant]/task/seed<k> and grouped by its cell, table/model/method[.variant]/task, so
    that the seeds of a cell form one group (`wandb.group` names another group); tagged with the table, model, method,
    variant, task (and `smoke` for a smoke run) plus `wandb.tags`; described by `wandb.notes`;
  * has the cell's resolved config (after the table's rows and per-task settings and the command line: what
    `dry_run=true` prints) and its fingerprint as its config, and the record's provenance (commit, versions) once the
    cell ends. The Trainer's wandb callback (report_to, repro/train.py) logs losses and dev metrics into this run and
    adds its own arguments to the config;
  * ends with the record's outcome as its summary and the files of the seed beside the record (the record, its code
    diff, the hypotheses and references of an NLG task, and the trained weights unless `wandb.log_weights=false`) as
    one artifact of type `cell`.

Precedence: the environment's WANDB_MODE, WANDB_PROJECT, WANDB_ENTITY and WANDB_DIR win over wandb.mode,
wandb.project, wandb.entity and the log folder (`paths.log_dir`: offline runs in <log_dir>/wandb/offline-run-*), so
that a cluster's or CI's settings apply to every cell without editing a config. The API key stays in the environment
(WANDB_API_KEY); records and logs never carry it (repro.records.redact).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from repro import records
from repro.cell import smoke_reason


def cell_name(cfg: DictConfig) -> str:
    """table/model/method[.variant]/task: the run's group (its seeds)."""
    return f"{cfg.table.name}/{cfg.model.name}/{records.method_dirname(cfg)}/{cfg.task.name}"


def init_settings(cfg: DictConfig, fingerprint: str) -> dict:
    """The keyword arguments of wandb.init for this cell (the environment first, then the config)."""
    w = cfg.wandb
    tags = [cfg.table.name, cfg.model.name, cfg.method.name, cfg.task.name]
    tags += [f"variant={cfg.variant}"] if cfg.variant != "default" else []
    tags += ["smoke"] if smoke_reason(cfg) else []
    config = records.redact(OmegaConf.to_container(cfg, resolve=True))
    return {
        "mode": os.environ.get("WANDB_MODE") or w.mode,
        "project": os.environ.get("WANDB_PROJECT") or w.project,
        "entity": os.environ.get("WANDB_ENTITY") or w.entity,
        "dir": os.environ.get("WANDB_DIR") or str(cfg.paths.log_dir),
        "name": f"{cell_name(cfg)}/seed{cfg.seed}",
        "group": w.get("group") or cell_name(cfg),
        "job_type": "cell",
        "tags": list(dict.fromkeys([*tags, *(w.get("tags") or [])])),
        "notes": w.get("notes"),
        "config": {**config, "fingerprint": fingerprint},
    }


def start(cfg: DictConfig, fingerprint: str) -> None:
    """Open the cell's run (nothing when wandb.enabled is false)."""
    if not cfg.wandb.enabled:
        return
    import wandb  # imported only when tracking is on: it adds seconds to every command's start

    settings = init_settings(cfg, fingerprint)
    Path(settings["dir"]).mkdir(parents=True, exist_ok=True)
    wandb.init(**settings)


def finish(cfg: DictConfig, record: dict, record_path: Path) -> None:
    """The record's outcome as the run's summary, the seed's files as an artifact, then close the run (one run per
    cell, also in a sweep)."""
    if not cfg.wandb.enabled:
        return
    import wandb

    run = wandb.run
    if run is None:
        return
    run.config.update({"provenance": record.get("provenance")}, allow_val_change=True)
    run.summary.update(
        {
            "status": record["status"],
            **{f"final/{k}": v for k, v in record["metrics"].items()},
            **{k: record.get(k) for k in ("trainable_params", "adapter_params", "wall_s", "fingerprint")},
        }
    )
    record_path = Path(record_path)
    files = sorted(record_path.parent.glob(f"{record_path.stem}.*"))  # seed<k>.json, .diff, .hyp.txt, .safetensors
    if not cfg.wandb.get("log_weights", True):
        files = [f for f in files if f.suffix != ".safetensors"]
    artifact = wandb.Artifact(
        re.sub(r"[^\w.-]", "-", f"{cell_name(cfg)}-seed{cfg.seed}"),
        type="cell",
        metadata={"status": record["status"], "fingerprint": record.get("fingerprint"), "metrics": record["metrics"]},
    )
    for f in files:
        artifact.add_file(str(f))
    run.log_artifact(artifact)
    wandb.finish(exit_code=0 if record["status"] == "ok" else 1)
