"""Train and score one grid cell of the paper, and write its record.

    python -m repro.run +table=glue model=roberta-base method=lora task=rte seed=0
    python -m repro.run +table=glue_cpu model=minilm method=lora task=rte dry_run=true   # its resolved config (YAML)
    python -m repro.run +table=glue model=tiny-roberta method=lora task=rte debug=smoke  # seconds, under .smoke/
    python -m repro.run -m +table=glue model=tiny-roberta method=lora,ft task=rte,mrpc seed=0,1   # a grid
    python -m repro.run --help                                                            # the usage text

Steps: compose the config (Hydra) -> resolve the cell (table settings, a debug preset, the command line: repro/cell.py)
and check it against the schema (repro/schema.py) -> with dry_run=true, print the resolved config and stop -> skip if an
`ok` record with the same fingerprint exists (saying its score) -> log the resolved config -> load tokenizer, data,
model -> apply the method -> take the cell's lock -> open the cell's log folder -> train and evaluate -> write the record
and the trained weights (and the W&B run's summary and artifact: repro/tracking.py). What depends on the task's kind
(its data, its head, its training and scoring recipe) is its family's (repro/tasks/).

The boundary between bad input and a failed run is the cell's lock (run_cell):
  * before it (composing, the schema, the split of the global batch over the processes, the precision this machine
    has, loading the tokenizer, data and model, the method's surgery, init_from, the cell's memory plan on this GPU)
    any error is bad input: one line `error: ...` on stderr, exit 2, no record, no folder of the cell, no log folder.
    Errors that are not already a ReproError are wrapped into one (SetupFailed, naming the step). REPRO_DEBUG=1 shows
    the traceback instead.
  * after it (training, evaluation, decoding, scoring) an error is a result: a `failed` record with the reason
    (divergence, out of memory, a crash in a library), exit 1 for a single run.

Logs: what a cell logs from its start is kept in memory until the cell runs, then goes to its log folder (`log_folder`:
cell.log and the resolved config.yaml), so a rejected or skipped command leaves no folder (Hydra's own run folder is the
working directory, conf/config.yaml).

Start-up: the training stack (torch, transformers, the methods, the task families) is imported inside the functions
that train a cell, not at the top of this module, so that `--help`, a rejected command and a dry run answer in about a
second.
"""

from __future__ import annotations

import contextlib
import json
import logging
import resource
import shutil
import sys
import time
import traceback
import warnings
from logging.handlers import MemoryHandler
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from repro import records, tracking
from repro.cell import check_paths, resolve_cell, smoke_reason
from repro.cli import debug, hydra_command, one_line
from repro.errors import ReproError
from repro.memory import hwm_rss_mb, reset_peak_rss
from repro.results import score_text

log = logging.getLogger("repro.run")

# conf/hydra/launcher/submitit_local.yaml shadows the plugin's schema of that name (to give CPU defaults); Hydra 1.3
# accepts it and warns on every start.
warnings.filterwarnings(
    "ignore", message=r"(?s).*'hydra/launcher/submitit_local' is validated against ConfigStore schema"
)


def config_yaml(cfg: DictConfig) -> str:
    """The resolved cell config as YAML, secrets redacted (what the cell runs: table rows, per-task settings, a debug
    preset and the command line applied; the same as its record's `config`)."""
    return OmegaConf.to_yaml(OmegaConf.create(records.redact(OmegaConf.to_container(cfg, resolve=True))))


def record_summary(path: Path, record: dict) -> str:
    """`<path> (ok, accuracy 61.37, fingerprint ...)`: where a finished record is and its main score."""
    return f"{path} ({record.get('status')}, {score_text(record)}, fingerprint {record.get('fingerprint')})"


def dry_run(cfg: DictConfig) -> str:
    """The cell's resolved config as YAML, under comment lines that say which record it writes and whether it would run
    (the whole text parses as YAML: the comments are ignored)."""
    path = records.record_path(cfg)
    done = records.finished_record(cfg)
    if done is not None and not cfg.force:
        status = (
            f"would be skipped: its ok record has this fingerprint, {record_summary(path, done)}; force=true reruns it"
        )
    else:
        status = "would run"
    head = [
        f"# dry run of {path} (fingerprint {records.fingerprint(cfg)}): nothing runs, nothing is written",
        f"# {status}",
        "# the resolved config (table rows, per-task settings, a debug preset and the command line applied); the cost"
        " estimate: python -m repro.plan <the same overrides>",
    ]
    return "\n".join(head) + "\n" + config_yaml(cfg)


class CellLog:
    """The cell's log file: every record the root logger handles from the cell's start is kept in memory, and written to
    <folder>/cell.log once the cell runs (`open`); a cell that is bad input or skipped leaves no folder."""

    def __init__(self) -> None:
        self.buffer = MemoryHandler(capacity=10**9, flushLevel=logging.CRITICAL + 1)  # no target: holds every record
        self.file: logging.Handler | None = None

    def __enter__(self) -> CellLog:
        logging.getLogger().addHandler(self.buffer)
        return self

    def open(self, folder: Path, cfg: DictConfig) -> Path:
        """Make the log folder, write the resolved config.yaml there, and send the log (so far and from now) to
        cell.log."""
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "config.yaml").write_text(config_yaml(cfg))
        self.file = logging.FileHandler(folder / "cell.log", encoding="utf-8")
        self.file.setFormatter(logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"))
        root = logging.getLogger()
        root.removeHandler(self.buffer)
        for rec in self.buffer.buffer:
            self.file.handle(rec)
        self.buffer.buffer.clear()
        root.addHandler(self.file)
        return folder

    def __exit__(self, *exc) -> None:
        root = logging.getLogger()
        root.removeHandler(self.buffer)
        self.buffer.buffer.clear()
        if self.file is not None:
            root.removeHandler(self.file)
            self.file.close()


def log_folder(cfg: DictConfig) -> Path:
    """The cell's log folder: in a sweep, Hydra's job folder (<log_dir>/multiruns/<time>/<job number>, which the
    launcher has made); otherwise <log_dir>/runs/<time>_<table>_<model>_<method>_<task>_seed<k>."""
    if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
        return Path(HydraConfig.get().runtime.output_dir)
    stamp = time.strftime("%Y-%m-%d_%H-%M-%S")
    name = f"{stamp}_{cfg.table.name}_{cfg.model.name}_{records.method_dirname(cfg)}_{cfg.task.name}_seed{cfg.seed}"
    return Path(cfg.paths.log_dir) / "runs" / name


def run_cell(cfg: DictConfig) -> dict:
    """Skip, or set up, lock, train, score and record the cell. Under torchrun every rank calls this: rank 0 decides
    (skip, busy, run) and the others follow it (repro/dist.py); only rank 0 holds the lock and writes."""
    import torch  # the training stack: see the module's docstring (start-up)

    from repro import dist
    from repro.train import batch_plan

    batch_plan(cfg.train)  # a global batch the processes cannot share: bad input, before the process group and lock
    dist.init()
    if dist.is_main():
        # results, logs, data, init_from: usable, before any record is read, anything loaded or written
        check_paths(cfg)
    path = records.record_path(cfg)
    done = dist.broadcast(records.finished_record(cfg) if dist.is_main() else None)
    if done is not None and not cfg.force:
        log.info("skipped: %s is done; force=true reruns it", record_summary(path, done))
        return {**done, "skipped": True}
    with CellLog() as cell_log:
        log.info("cell %s, resolved config:\n%s", path, config_yaml(cfg).rstrip())
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
                log.info("skipped: %s was finished by another job", record_summary(path, verdict["done"]))
                return {**verdict["done"], "skipped": True}
            if dist.is_main():
                folder = cell_log.open(log_folder(cfg), cfg)
                log.info("log folder %s", folder)
            return _run_cell(cfg, path, start, rss_scope, *setup)


def check_cpu_allowed(cfg: DictConfig) -> None:
    """A paper model in its paper table (not a stand-in, not the adhoc table) is a GPU job: on a machine without CUDA
    it would run for days, so it is refused unless allow_cpu=true."""
    import torch  # the training stack: see the module's docstring (start-up)

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
    import torch  # the training stack: see the module's docstring (start-up)

    from repro import dist
    from repro.plan.cost import fit_to_gpu

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
    # the training stack: see the module's docstring (start-up)
    from transformers import set_seed

    from repro.methods import apply_method
    from repro.methods.checkpoint import init_from
    from repro.models import load_model, load_tokenizer
    from repro.tasks import family
    from repro.train import check_devices, check_precision

    check_devices()
    check_cpu_allowed(cfg)  # first: a paper cell on a CPU is told about allow_cpu before its precision (fp16)
    check_precision(cfg.train)
    check_tools(cfg)
    fit_this_gpu(cfg)
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
    # the training stack: see the module's docstring (start-up)
    from repro import dist
    from repro.methods import parameter_counts
    from repro.methods.checkpoint import save_trainable
    from repro.tasks import family
    from repro.train import Diverged

    main = dist.is_main()
    if main:
        records.prepare_checkpoint_dir(cfg)
        with setup_step("opening the cell's W&B run (wandb.enabled=true)"):  # before the Trainer logs to it
            tracking.start(cfg, records.fingerprint(cfg))
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
        try:
            tracking.finish(cfg, record, path)
        except Exception as exc:  # noqa: BLE001 - the record is written: a tracking failure does not undo the cell
            log.warning("W&B: the run's summary and artifact were not logged (%s: %s)", type(exc).__name__, exc)
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
            print(dry_run(cfg), end="", flush=True)
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
