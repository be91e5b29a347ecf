"""Train and score one grid cell of the paper, and write its record.

    python -m repro.run +table=glue model=roberta-base method=lora task=rte seed=0
    python -m repro.run -m +table=glue model=tiny-roberta method=lora,ft task=rte,mrpc seed=0,1   # a grid

Steps: compose the config (Hydra) -> resolve the cell (table settings) and check it against the schema
(repro/schema.py) -> skip if an `ok` record with the same fingerprint exists -> load tokenizer, data, model -> apply
the method -> take the cell's lock -> train and evaluate -> write the record and the trained weights. What depends on
the task's kind (its data, its head, its training and scoring recipe) is its family's (repro/tasks/).

The boundary between bad input and a failed run is the cell's lock (run_cell):
  * before it (composing, the schema, the split of the global batch over the processes, the precision this machine
    has, loading the tokenizer, data and model, the method's surgery, init_from) any error is bad input: one line
    `error: ...` on stderr, exit 2, no record, no folder of the cell. Errors that are not already a ReproError are
    wrapped into one (SetupFailed, naming the step). REPRO_DEBUG=1 shows the traceback instead.
  * after it (training, evaluation, decoding, scoring) an error is a result: a `failed` record with the reason
    (divergence, out of memory, a crash in a library), exit 1 for a single run.
"""

from __future__ import annotations

import contextlib
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
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from transformers import set_seed

from repro import dist, records
from repro.cell import check_paths, resolve_cell, smoke_reason
from repro.cli import debug, hydra_command, one_line
from repro.errors import ReproError
from repro.memory import hwm_rss_mb, reset_peak_rss
from repro.methods import apply_method, parameter_counts
from repro.methods.checkpoint import init_from, save_trainable
from repro.models import load_model, load_tokenizer
from repro.plan.cost import fit_to_gpu
from repro.plan.report import describe_cell
from repro.tasks import family
from repro.train import Diverged, batch_plan, check_devices, check_precision

log = logging.getLogger("repro.run")

# conf/hydra/launcher/submitit_local.yaml shadows the plugin's schema of that name (to give CPU defaults); Hydra 1.3
# accepts it and warns on every start.
warnings.filterwarnings(
    "ignore", message=r"(?s).*'hydra/launcher/submitit_local' is validated against ConfigStore schema"
)


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
    import wandb  # an optional dependency, imported only when tracking is on

    if wandb.run is not None:
        wandb.run.summary.update(
            {
                "status": record["status"],
                **{f"final/{k}": v for k, v in record["metrics"].items()},
                **{k: record.get(k) for k in ("trainable_params", "adapter_params", "wall_s")},
            }
        )
        wandb.finish(exit_code=0 if record["status"] == "ok" else 1)


def run_cell(cfg: DictConfig) -> dict:
    """Skip, or set up, lock, train, score and record the cell. Under torchrun every rank calls this: rank 0 decides
    (skip, busy, run) and the others follow it (repro/dist.py); only rank 0 holds the lock and writes."""
    batch_plan(cfg.train)  # a global batch the processes cannot share: bad input, before the process group and lock
    dist.init()
    if dist.is_main():
        check_paths(
            cfg
        )  # results, logs, data, init_from: usable, before any record is read, anything loaded or written
    path = records.record_path(cfg)
    done = dist.broadcast(records.finished_record(cfg) if dist.is_main() else None)
    if done is not None and not cfg.force:
        log.info("skipped: %s is done (status ok, fingerprint %s); force=true reruns it", path, done["fingerprint"])
        return {**done, "skipped": True}
    start = time.time()
    rss_scope = "cell" if reset_peak_rss() else "process"  # peak memory of this cell, not of the sweep's process
    setup = set_up_cell(cfg)  # bad input fails here, before any file or folder of the cell is written
    if cfg.get("threads"):  # submitit's local executor ignores cpus_per_task: the cell sets its own threads
        torch.set_num_threads(int(cfg.threads))
    with contextlib.ExitStack() as lock:
        verdict = None
        if dist.is_main():
            try:
                lock.enter_context(records.cell_lock(cfg))
                # another job of this cell may have finished between the check above and taking the lock
                done = records.finished_record(cfg)
                verdict = {"done": done} if done is not None and not cfg.force else {"run": True}
            except records.CellBusy as exc:
                verdict = {"busy": str(exc)}
        verdict = dist.broadcast(verdict)
        if "busy" in verdict:
            log.warning("skipped: %s", verdict["busy"])
            return {"status": "busy", "error": verdict["busy"], "metrics": {}}
        if "done" in verdict:
            log.info("skipped: %s was finished by another job (fingerprint %s)", path, verdict["done"]["fingerprint"])
            return {**verdict["done"], "skipped": True}
        return _run_cell(cfg, path, start, rss_scope, *setup)


def check_cpu_allowed(cfg: DictConfig) -> None:
    """A paper model in its paper table (not a stand-in, not the adhoc table) is a GPU job: on a machine without CUDA
    it would run for days, so it is refused unless allow_cpu=true."""
    if cfg.table.name == "adhoc" or cfg.model.get("source") != "hub" or cfg.get("allow_cpu", False):
        return
    if cfg.model.name in (cfg.table.get("stand_ins") or {}) or torch.cuda.is_available():
        return
    raise ReproError(
        f"model={cfg.model.name} in table={cfg.table.name} is a paper cell sized for GPUs, and no CUDA device is "
        f"available here: pass allow_cpu=true to train it on the CPU anyway, or run one of the table's stand-ins "
        f"({', '.join(cfg.table.get('stand_ins') or {}) or 'none'}) instead."
    )


def check_tools(cfg: DictConfig) -> None:
    """Java for METEOR (and the PTB tokenizer of E2E's COCO metrics), checked before training, not after decoding."""
    if any("METEOR" in str(m) for m in cfg.task.get("metrics") or []) and shutil.which("java") is None:
        raise ReproError(
            f"task={cfg.task.name} is scored with METEOR (meteor-1.5.jar), which needs Java 1.8+ on PATH, and there is "
            f"no `java` on PATH: install a JRE (e.g. `apt-get install default-jre-headless`, or `module load java` on "
            f"a cluster) before training the cell."
        )


def fit_this_gpu(cfg: DictConfig) -> None:
    """On a GPU, the cell as it fits there (repro.plan.cost.fit_to_gpu: gradient checkpointing where it is over, not in
    the fingerprint, the record's config says so), or refused with the per-device batch that would fit."""
    if not torch.cuda.is_available():
        return
    gpu = torch.cuda.get_device_properties(torch.cuda.current_device())
    changed = fit_to_gpu(cfg, gpu.total_memory, dist.world_size())
    if changed:
        log.warning(
            "the cell's memory plan is over %s's %.0f GiB as configured: %s",
            gpu.name,
            gpu.total_memory / 2**30,
            ", ".join(changed),
        )


class SetupFailed(ReproError):
    """A step of a cell's set-up raised an error that is not a ReproError: still bad input (a data file whose columns
    do not fit, a checkpoint that does not load), reported in one line."""


@contextlib.contextmanager
def setup_step(what: str):
    """Run one set-up step; any error in it is bad input: a ReproError as it is, anything else as SetupFailed."""
    try:
        yield
    except ReproError:
        raise
    except Exception as exc:
        if debug():
            raise
        reason = " ".join(f"{type(exc).__name__}: {exc}".split())
        raise SetupFailed(f"{what} failed: {reason}") from exc


def set_up_cell(cfg: DictConfig) -> tuple:
    """Tokenizer, tokenized data and the adapted model: everything that bad input (a model not available offline, a
    missing or malformed data file, a rank or target the model cannot take, an init_from checkpoint that does not fit,
    several GPUs without torchrun, a precision this machine does not have, a paper cell on a CPU, no Java for
    METEOR, a cell too large for this GPU) breaks. Every error here is a ReproError (exit 2, nothing written); see the
    module's docstring."""
    check_devices()
    check_cpu_allowed(cfg)  # first: a paper cell on a CPU is told about allow_cpu before its precision (fp16)
    check_precision(cfg.train)
    check_tools(cfg)
    fit_this_gpu(cfg)
    with setup_step("tracking set-up"):
        configure_tracking(cfg)
        set_seed(cfg.seed)
    with setup_step(f"loading the tokenizer of model={cfg.model.name}"):
        tokenizer = load_tokenizer(cfg.model, cfg.paths.data_dir)
    with setup_step(f"loading the data of task={cfg.task.name}"):
        data = family(cfg.task.kind).load_data(cfg, tokenizer)
    with setup_step(f"loading model={cfg.model.name}"):
        model = load_model(cfg.model, cfg.task, tokenizer)
    with setup_step(f"applying method={cfg.method.name} to model={cfg.model.name}"):
        model = apply_method(model, cfg.method)
    if cfg.train.get("init_from"):  # e.g. the MNLI LoRA for RTE/MRPC/STS-B: LoRA tensors only (the head differs)
        with setup_step(f"train.init_from={cfg.train.init_from}"):
            n = len(
                init_from(model, cfg.train.init_from, cfg.method, allow_smoke=bool(cfg.train.get("allow_smoke_init")))
            )
        log.info("init_from %s: %d LoRA tensors", cfg.train.init_from, n)
    return tokenizer, data, model


_CELLS_RUN = [0]  # cells this process has trained before the current one (records' process_cell_index)


def _run_cell(cfg: DictConfig, path, start: float, rss_scope: str, tokenizer, data: dict, model) -> dict:
    main = dist.is_main()
    if main:
        records.prepare_checkpoint_dir(cfg)
    dist.barrier()  # the folder is ready (an other config's checkpoints gone) before any rank's Trainer uses it
    counts = parameter_counts(model)
    log.info("cell %s: %s", path, json.dumps(counts))

    record = {
        "status": "ok",
        "error": None,
        "table": cfg.table.name,
        "model": cfg.model.name,
        "method": cfg.method.name,
        "variant": cfg.variant,
        "task": cfg.task.name,
        "seed": cfg.seed,
        "world_size": dist.world_size(),
    }
    in_step = True  # every rank reaches the end of the cell (ok, or diverged: the logged loss is the all-ranks mean)
    outcome = None
    try:
        outcome = family(cfg.task.kind).train_and_score(cfg, model, tokenizer, data, records.checkpoint_dir(cfg))
    except Exception as exc:  # a diverged or crashed cell is a result too: recorded as failed, with the reason
        in_step = isinstance(exc, Diverged)
        if not main and not in_step:
            raise  # this rank alone crashed: its exit makes torchrun stop the cell; nothing is recorded, it resumes
        log.exception("cell failed")
        record.update(status="failed", error=f"{type(exc).__name__}: {exc}", traceback=traceback.format_exc(limit=8))
    record.update(
        outcome.fields() if outcome is not None else {"metrics": {}},
        **counts,
        wall_s=round(time.time() - start, 1),
        peak_rss_mb=round(
            hwm_rss_mb() if rss_scope == "cell" else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1
        ),
        peak_rss_scope=rss_scope,  # "cell": since this cell started (VmHWM reset); "process": the sweep process's peak
        process_cell_index=_CELLS_RUN[0],  # 0: the process's first cell, so its peak is its own (later cells of an
        # in-process sweep start on memory earlier cells left behind)
        fingerprint=records.fingerprint(cfg),
        config=OmegaConf.to_container(cfg, resolve=True),
    )
    if main:  # rank 0 alone writes the weights, the record and its code diff, and removes the checkpoints
        if record["status"] == "ok":
            save_trainable(
                model,
                records.weights_path(cfg),
                cfg,
                steps=outcome.steps,
                fingerprint=record["fingerprint"],
                smoke=smoke_reason(cfg),
            )
        record["provenance"] = records.provenance(diff := records.code_diff())
        records.write_diff(path, diff)  # seed<k>.diff: the uncommitted code change, beside the record (removed if none)
        records.write_json_atomic(path, record)
        finish_tracking(cfg, record)
        if record["status"] == "ok" and not cfg.train.keep_checkpoints:
            shutil.rmtree(records.checkpoint_dir(cfg), ignore_errors=True)
        log.info("%s %s: %s (%.0f s)", record["status"], path, json.dumps(record["metrics"]), record["wall_s"])
    if in_step:
        dist.barrier()  # no rank exits (and makes torchrun stop the others) before rank 0 has written
    _CELLS_RUN[0] += 1
    return record


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig):
    try:
        cfg = resolve_cell(cfg, list(HydraConfig.get().overrides.task))
        if cfg.dry_run:  # one cell; a grid's dry run (-m) is the table sweeper's, and never reaches this function
            print(json.dumps(describe_cell(cfg), indent=2, default=str))
            return "dry_run"
        record = run_cell(cfg)
    except ReproError as exc:
        if debug():
            raise
        print(f"error: {one_line(str(exc))}", file=sys.stderr)
        sys.exit(2)
    if record["status"] == "busy" and HydraConfig.get().mode == RunMode.RUN:
        sys.exit(75)  # EX_TEMPFAIL: the cell is running elsewhere
    if record["status"] not in ("ok", "busy") and HydraConfig.get().mode == RunMode.RUN:
        sys.exit(1)
    return "skipped" if record.get("skipped") else record["status"]


def cli() -> None:
    """`python -m repro.run` (the console script repro-run): Hydra's own errors (composing the command line) and file
    errors (a log folder Hydra cannot create) as one line and exit 2, like bad values (repro.cli.hydra_command)."""
    hydra_command(main)


if __name__ == "__main__":
    cli()
