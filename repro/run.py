"""Train and score one grid cell of the paper, and write its record.

    python -m repro.run +table=glue model=roberta-base method=lora task=rte seed=0
    python -m repro.run -m +table=glue model=tiny-roberta method=lora,ft task=rte,mrpc seed=0,1   # a grid

Steps: compose the config (Hydra) -> resolve the cell (table settings) -> skip if an `ok` record with the same
fingerprint exists -> load tokenizer, data, model -> apply the method -> train and evaluate -> write the record
and the trained weights. Bad input exits non-zero before anything is written; a cell that fails while training
is recorded as failed, with the reason.
"""

from __future__ import annotations

import json
import logging
import os
import resource
import shutil
import sys
import time
import traceback
import warnings
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from transformers import set_seed

from repro import records
from repro.cell import resolve_cell
from repro.errors import ReproError
from repro.methods import apply_method, parameter_counts
from repro.models import load_model, load_tokenizer

log = logging.getLogger("repro.run")

# conf/hydra/launcher/submitit_local.yaml shadows the plugin's schema of that name (to give CPU defaults); Hydra 1.3
# accepts it and warns on every start.
warnings.filterwarnings("ignore", message=r"(?s).*'hydra/launcher/submitit_local' is validated against ConfigStore schema")


def configure_tracking(cfg: DictConfig) -> None:
    """wandb is off unless enabled; when on, offline by default. The API key stays in the environment only.

    The Trainer's wandb callback logs the cell (losses, dev metrics per evaluation, the run config); runs are
    named table/model/method/task/seed and grouped by table, so a sweep shows as one group."""
    os.environ["WANDB_MODE"] = cfg.wandb.mode if cfg.wandb.enabled else "disabled"
    os.environ["WANDB_PROJECT"] = cfg.wandb.project
    os.environ["WANDB_DIR"] = str(cfg.paths.log_dir)
    os.environ["WANDB_RUN_GROUP"] = str(cfg.table.name)
    os.environ["WANDB_TAGS"] = ",".join(map(str, (cfg.table.name, cfg.model.name, cfg.method.name, cfg.task.name)))
    if cfg.wandb.entity:
        os.environ["WANDB_ENTITY"] = cfg.wandb.entity
    Path(cfg.paths.log_dir).mkdir(parents=True, exist_ok=True)


def finish_tracking(cfg: DictConfig, record: dict) -> None:
    """The record's outcome as the wandb run's summary, then close the run (one run per cell, also in a sweep)."""
    if not cfg.wandb.enabled:
        return
    import wandb

    if wandb.run is not None:
        wandb.run.summary.update({"status": record["status"], **{f"final/{k}": v for k, v in record["metrics"].items()},
                                  **{k: record.get(k) for k in ("trainable_params", "adapter_params", "wall_s")}})
        wandb.finish(exit_code=0 if record["status"] == "ok" else 1)


def load_data(cfg: DictConfig, tokenizer) -> dict:
    if cfg.task.kind == "classification":
        from repro.data.glue import load_glue

        return load_glue(cfg.task, tokenizer, cfg.data, cfg.paths.data_dir, cfg.seed)
    from repro.nlg import load_nlg_data

    return load_nlg_data(cfg, tokenizer)


def train_and_score(cfg: DictConfig, model, tokenizer, data: dict) -> dict:
    output_dir = records.checkpoint_dir(cfg)
    if cfg.task.kind == "classification":
        from repro.train import train_classifier

        return train_classifier(cfg, model, tokenizer, data, output_dir)
    from repro.nlg import train_generator

    return train_generator(cfg, model, tokenizer, data, output_dir)


def run_cell(cfg: DictConfig) -> dict:
    path = records.record_path(cfg)
    done = records.finished_record(cfg)
    if done is not None and not cfg.force:
        log.info("skipped: %s is done (status ok, fingerprint %s); force=true reruns it", path, done["fingerprint"])
        return {**done, "skipped": True}
    start = time.time()
    setup = set_up_cell(cfg)   # bad input fails here, before any file or folder of the cell is written
    try:
        with records.cell_lock(cfg):
            # another job of this cell may have finished between the check above and taking the lock
            done = records.finished_record(cfg)
            if done is not None and not cfg.force:
                log.info("skipped: %s was finished by another job (fingerprint %s)", path, done["fingerprint"])
                return {**done, "skipped": True}
            return _run_cell(cfg, path, start, *setup)
    except records.CellBusy as exc:
        log.warning("skipped: %s", exc)
        return {"status": "busy", "error": str(exc), "metrics": {}}


def set_up_cell(cfg: DictConfig) -> tuple:
    """Tokenizer, tokenized data and the adapted model: everything that bad input (a model not available offline, a
    missing data file, a rank or target the model cannot take, an init_from checkpoint that does not fit) breaks."""
    configure_tracking(cfg)
    set_seed(cfg.seed)
    tokenizer = load_tokenizer(cfg.model, cfg.paths.data_dir)
    data = load_data(cfg, tokenizer)
    model = apply_method(load_model(cfg.model, cfg.task, tokenizer), cfg.method)
    if cfg.train.get("init_from"):   # e.g. the MNLI LoRA for RTE/MRPC/STS-B: LoRA tensors only (the head differs)
        from repro.methods.checkpoint import init_from

        log.info("init_from %s: %d LoRA tensors", cfg.train.init_from, len(init_from(model, cfg.train.init_from, cfg.method)))
    return tokenizer, data, model


def _run_cell(cfg: DictConfig, path, start: float, tokenizer, data: dict, model) -> dict:
    records.prepare_checkpoint_dir(cfg)
    counts = parameter_counts(model)
    log.info("cell %s: %s", path, json.dumps(counts))

    record = {"status": "ok", "error": None, "table": cfg.table.name, "model": cfg.model.name,
              "method": cfg.method.name, "variant": cfg.variant, "task": cfg.task.name, "seed": cfg.seed}
    try:
        outcome = train_and_score(cfg, model, tokenizer, data)
    except Exception as exc:  # a diverged or crashed cell is a result too: recorded as failed, with the reason
        log.exception("cell failed")
        outcome = {"metrics": {}}
        record.update(status="failed", error=f"{type(exc).__name__}: {exc}", traceback=traceback.format_exc(limit=8))
    if record["status"] == "ok":
        from repro.methods.checkpoint import save_trainable

        save_trainable(model, records.weights_path(cfg), cfg)
    record.update(
        outcome,
        **counts,
        wall_s=round(time.time() - start, 1),
        peak_rss_mb=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        fingerprint=records.fingerprint(cfg),
        config=OmegaConf.to_container(cfg, resolve=True),
        provenance=records.provenance(diff := records.code_diff()),
    )
    records.write_diff(path, diff)   # seed<k>.diff: the uncommitted code change, beside the record (removed if none)
    records.write_json_atomic(path, record)
    finish_tracking(cfg, record)
    if record["status"] == "ok" and not cfg.train.keep_checkpoints:
        shutil.rmtree(records.checkpoint_dir(cfg), ignore_errors=True)
    log.info("%s %s: %s (%.0f s)", record["status"], path, json.dumps(record["metrics"]), record["wall_s"])
    return record


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig):
    try:
        cfg = resolve_cell(cfg, list(HydraConfig.get().overrides.task))
        if cfg.dry_run:   # one cell; a grid's dry run (-m) is the table sweeper's, and never reaches this function
            from repro.plan import describe_cell

            print(json.dumps(describe_cell(cfg), indent=2, default=str))
            return "dry_run"
        record = run_cell(cfg)
    except ReproError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    if record["status"] == "busy" and HydraConfig.get().mode == RunMode.RUN:
        sys.exit(75)   # EX_TEMPFAIL: the cell is running elsewhere
    if record["status"] not in ("ok", "busy") and HydraConfig.get().mode == RunMode.RUN:
        sys.exit(1)
    return "skipped" if record.get("skipped") else record["status"]


if __name__ == "__main__":
    main()
