"""Which cells a paper table's grid expands to, and what they would cost: the logic behind the table sweeper
(hydra_plugins/repro_table_sweeper) and the dry run.

    python -m repro.plan +table=glue                                # the whole Table 2 grid: jobs, GPU-hours
    python -m repro.plan +table=glue model=roberta-large task=rte   # any axis narrowed on the command line
    python -m repro.run -m +table=glue dry_run=true                 # the same, through repro.run

A table's `hydra.sweeper.params` span models x methods x tasks x seeds. Their cartesian product holds
combinations that are not rows of the paper's table (DeBERTa x AdptP): `filter_jobs` keeps a job only when its
(model, method, variant) is a row of `table.rows`, or a stand-in model (`table.stand_ins`) for the model of a row
(a stand-in also runs the methods its paper model has no row for, with the method's own config).
When no `variant` axis is given, every (model, method) expands to all of its rows' variants (RoBERTa-large AdptP
3M and 0.8M are two rows); `variant=r16,dagger` on the command line makes it an ordinary, filtered axis.

Cost estimate per job (a stated formula, not a measurement):
    FLOPs  = k * N * T_train + 2 * N * T_eval
    k      = 6 for full fine-tuning (forward 2N, backward 4N per token), 4 when the backbone is frozen
             (LoRA, adapters, BitFit, prefix: the weight-gradient half of the backward pass is skipped)
    N      = the backbone's non-embedding parameters, 12 * L * d^2 for d_ff = 4d (from the model's `arch`)
    T_train = examples seen * max_seq_length   (examples seen = max_steps * global batch, or train size * epochs;
             every sequence counted at max_seq_length: the paper's run_glue.py pads to it)
    T_eval = dev size * max_seq_length * number of evaluations (one per epoch)
    GPU-h  = FLOPs / (sustained V100 throughput) / 3600, with 30 TFLOP/s for fp16 (a quarter of the tensor-core
             peak, 125) and 10 TFLOP/s for fp32 (two thirds of the 15.7 peak)

Peak memory per GPU (a stated formula, not a measurement; `memory_estimate`), for the GPU that
conf/hydra/launcher/slurm.yaml's `constraint` names (volta32gb, the paper's V100 32 GB, when it names none):
    static = 4 B x P                (weights: fp32, also under fp16/bf16 mixed precision, which keeps fp32 masters)
           + 2 B x P                (fp16/bf16 only: autocast's half-precision copy of the weights)
           + 4 B x P_t + 8 B x P_t  (fp32 gradients and Adam's two moments, trainable parameters P_t only)
    P, P_t = all and trainable parameters of the model with its method and task head, counted on the meta device
    act    = L x A_layer (no checkpointing), or L x 4 B x s*b*h + A_layer (gradient checkpointing: each layer keeps its
             fp32 input, one layer's activations live again during its recomputation)
    A_layer = s*b*h*34 + 5*a*s^2*b bytes in 16-bit (Korthikanti et al. 2022, eq. 2, no parallelism; d_ff = 4h, true of
             every paper model) + per relative-attention term of DeBERTa (c2p, p2c) 2*a*b*s*(2k) + 2*a*b*s^2 (its
             s x 2k position scores and their s x s gather, k = position_buckets); x2 when the cell runs in fp32
    logits = decoders only: 3 x 4 B x s*b*V (fp32 logits, their log-softmax and its gradient)
    peak   = static + act + logits + 1 GiB (CUDA context, cuBLAS workspace)
    s = max_seq_length (padded), b = the per-device batch of repro.train.batch_plan (the model's
    max_per_device_batch_size cap, accumulation for the rest), h, a, L, V from the model's `arch`.
A cell fits when peak <= 90% of the GPU's memory (the margin: allocator fragmentation and caching). Each
conf/model/*.yaml sets max_per_device_batch_size and gradient_checkpointing so that every paper cell fits.

Scratch disk per job (`disk_estimate`): a Trainer checkpoint holds the trainable tensors (repro.train.ReproTrainer
saves a frozen backbone's trainable tensors only; FT's are all P) in fp32 + Adam's two moments for them: 12 B x P_t, +
scheduler/RNG/state files (~0); save_total_limit keeps one, but the best and the last may coexist: 2 checkpoints
per running job, deleted when the cell ends (unless train.keep_checkpoints). The final weights file holds the
trainable tensors only (repro.methods.checkpoint.save_trainable, 4 B x P_t) and stays.
"""

from __future__ import annotations

import functools
import math
import sys
from collections import Counter, OrderedDict
from dataclasses import dataclass, field

from omegaconf import DictConfig, OmegaConf, open_dict

# Train / dev examples per task (GLUE: the official dev split; MNLI dev = matched). Sources: GLUE (Wang et al. 2019)
# Table 1, E2E (Novikova et al. 2017), WebNLG 2017 and DART as prepared by microsoft/LoRA examples/NLG.
DATASET_SIZES = {
    "mnli": (392_702, 9_815), "sst2": (67_349, 872), "mrpc": (3_668, 408), "cola": (8_551, 1_043),
    "qnli": (104_743, 5_463), "qqp": (363_846, 40_430), "rte": (2_490, 277), "stsb": (5_749, 1_500),
    "e2e": (42_061, 4_672), "webnlg": (18_025, 872), "dart": (62_659, 2_768),
}
V100_TFLOPS = {"fp16": 30.0, "bf16": 30.0, "fp32": 10.0}
# GPU memory (GiB) by SLURM constraint (conf/hydra/launcher/slurm.yaml); the paper's GPU when none is named
GPU_MEMORY_GIB = {"volta32gb": 32, "volta16gb": 16, "v100": 32, "a100": 40, "a100_40gb": 40, "a100_80gb": 80,
                  "h100": 80, "h200": 141}
DEFAULT_GPU = "volta32gb"
GPU_MARGIN = 0.9          # a cell fits when its estimate is at most this share of the GPU's memory
CUDA_OVERHEAD = 1 << 30   # CUDA context and cuBLAS workspace
GiB = float(1 << 30)
FULL_UPDATE_METHODS = ("ft",)
# issue 14's LoRA variants (= repro.methods.registry.VARIANT_METHODS; kept here so planning does not import torch)
VARIANT_METHODS = ("lora_all_linear", "rslora", "pissa", "dora", "qlora", "adalora")
AXES = ("model", "method", "variant", "task", "seed")


# ---------------------------------------------------------------- grid expansion and the row filter


def _key(override: str) -> tuple[str, str]:
    key, _, value = override.partition("=")
    return key.lstrip("+~"), value


def job_dict(job: list[str]) -> dict[str, str]:
    return dict(_key(o) for o in job)


@functools.cache
def method_names() -> tuple[str, ...]:
    """Every method option (conf/method/*.yaml)."""
    from repro import CONF_DIR

    return tuple(sorted(p.stem for p in (CONF_DIR / "method").glob("*.yaml")))


def row_variants(table: DictConfig) -> dict[tuple[str, str], list[str]]:
    """(model, method) -> its rows' variants. A stand-in model takes the rows of the model it stands in for, and runs
    every other method too (variant default: the method's own config), so baselines the paper did not run on that
    model can be compared under the same CPU schedule."""
    out: dict[tuple[str, str], list[str]] = OrderedDict()
    for row in table.rows:
        out.setdefault((row.model, row.method), []).append(row.get("variant", "default"))
    for small, big in (table.get("stand_ins") or {}).items():
        for (model, method), variants in list(out.items()):
            if model == big:
                out.setdefault((small, method), list(variants))
        for method in method_names():
            if method not in VARIANT_METHODS:   # the LoRA variants run only where a table lists them
                out.setdefault((small, method), ["default"])
    return out


def row_seeds(table: DictConfig) -> dict[tuple[str, str, str], set[str]]:
    """(model, method, variant) -> the seeds of a row that runs fewer seeds than the table (`seeds:` on the row)."""
    return {(r.model, r.method, r.get("variant", "default")): {str(x) for x in r.seeds}
            for r in table.rows if r.get("seeds") is not None}


@dataclass
class Expansion:
    kept: list[list[str]] = field(default_factory=list)
    dropped: Counter = field(default_factory=Counter)   # reason -> number of jobs

    @property
    def n_dropped(self) -> int:
        return sum(self.dropped.values())


def filter_jobs(jobs: list[list[str]], cfg: DictConfig) -> Expansion:
    """Keep the jobs whose (model, method, variant) is a row of cfg.table (or a stand-in for one) and whose task is
    one of the table's tasks; expand a missing variant axis to the rows' variants. Nothing is dropped silently:
    the reasons are counted."""
    table = cfg.table
    allowed = row_variants(table)
    seeds_of = row_seeds(table)
    tasks = set(table.get("tasks") or [])
    out = Expansion()

    def keep(job: list[str], variant: str) -> None:
        seeds = seeds_of.get((d["model"], d["method"], variant))
        if seeds is not None and d["seed"] not in seeds:
            out.dropped[f"{d['model']} x {d['method']} seed {d['seed']}: the row runs seeds {', '.join(sorted(seeds))}"] += 1
        else:
            out.kept.append(job)

    for job in jobs:
        d = job_values(cfg, job)
        has_variant = any(_key(o)[0] == "variant" for o in job)
        pair = (d["model"], d["method"])
        if pair not in allowed:
            out.dropped[f"{d['model']} x {d['method']}: not a row of table {table.name}"] += 1
            continue
        if tasks and d["task"] not in tasks:
            out.dropped[f"task {d['task']}: not a task of table {table.name}"] += 1
            continue
        if has_variant:
            if d["variant"] in allowed[pair]:
                keep(list(job), d["variant"])
            else:
                out.dropped[f"{d['model']} x {d['method']} variant {d['variant']}: not a row (rows: {', '.join(allowed[pair])})"] += 1
            continue
        for variant in allowed[pair]:
            keep(list(job) if variant == "default" else [*job, f"variant={variant}"], variant)
    return out


def cartesian(overrides) -> list[list[str]]:
    """Hydra's BasicSweeper product of parsed overrides, as one flat list of jobs."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper

    return BasicSweeper.split_arguments(overrides, None)[0]


# ---------------------------------------------------------------- cost estimate


def backbone_params(model: DictConfig) -> int:
    """Non-embedding parameters of a transformer from its `arch`: L * (4 d^2 + 2 d d_ff)."""
    arch = model.get("arch") or {}
    layers = arch.get("num_hidden_layers") or arch.get("n_layer") or 0
    d = arch.get("hidden_size") or arch.get("n_embd") or 0
    d_ff = arch.get("intermediate_size") or arch.get("n_inner") or 4 * d
    return int(layers * (4 * d * d + 2 * d * d_ff))


def estimate(cfg: DictConfig) -> dict:
    """The cost of one resolved cell (see the module docstring for the formula)."""
    n = backbone_params(cfg.model)
    seq = int(cfg.data.max_seq_length)
    n_train, n_dev = DATASET_SIZES.get(cfg.task.name, (None, None))
    n_train = cfg.task.get("num_train_examples") or n_train
    n_dev = cfg.task.get("num_dev_examples") or n_dev
    if n_train is None:
        return {"params": n, "seq": seq, "examples": None, "gpu_hours": None, "note": f"no dataset size for {cfg.task.name}"}
    if cfg.data.get("max_train_samples"):
        n_train = min(n_train, int(cfg.data.max_train_samples))
    if cfg.data.get("max_eval_samples"):
        n_dev = min(n_dev, int(cfg.data.max_eval_samples))
    t = cfg.train
    if t.max_steps and t.max_steps > 0:
        examples = int(t.max_steps) * int(t.global_batch_size)
        evals = max(1, math.ceil(examples / n_train))
    else:
        examples = int(math.ceil(n_train * float(t.num_train_epochs)))
        evals = max(1, math.ceil(float(t.num_train_epochs)))
    k = 6 if cfg.method.name in FULL_UPDATE_METHODS else 4
    flops = k * n * examples * seq + 2 * n * n_dev * seq * evals
    tflops = V100_TFLOPS.get(str(t.get("precision", "fp32")), V100_TFLOPS["fp32"])
    return {"params": n, "seq": seq, "examples": examples, "flops": flops, "gpu_hours": flops / (tflops * 1e12) / 3600}


# ---------------------------------------------------------------- memory per GPU and scratch disk


@functools.cache
def slurm_config() -> DictConfig:
    from repro import CONF_DIR

    return OmegaConf.load(CONF_DIR / "hydra" / "launcher" / "slurm.yaml")


def slurm_gpu() -> tuple[str, float]:
    """(the GPU, its memory in GiB) that conf/hydra/launcher/slurm.yaml's `constraint` names; the paper's V100 32 GB
    when it names none (or one not in GPU_MEMORY_GIB)."""
    constraint = slurm_config().get("constraint")
    name = str(constraint).lower() if constraint else DEFAULT_GPU
    if name not in GPU_MEMORY_GIB:
        name = DEFAULT_GPU
    return name, float(GPU_MEMORY_GIB[name])


def _arch(model: DictConfig) -> dict:
    arch = model.get("arch") or {}
    h = arch.get("hidden_size") or arch.get("n_embd") or 0
    rel = list(arch.get("pos_att_type") or []) if arch.get("relative_attention") else []
    buckets = arch.get("position_buckets") or 0
    span = 2 * (buckets if buckets > 0 else (arch.get("max_position_embeddings") or 512))
    return {"L": arch.get("num_hidden_layers") or arch.get("n_layer") or 0, "h": h,
            "a": arch.get("num_attention_heads") or arch.get("n_head") or 1,
            "V": arch.get("vocab_size") or 50257, "rel_terms": len(rel), "rel_span": span}


@functools.lru_cache(maxsize=None)
def _counts(model_yaml: str, method_yaml: str, task_kind: str, num_labels: int) -> tuple[int, int]:
    """(all, trainable) parameters of the model with its method and head, built on the meta device."""
    import copy

    import torch

    from repro.methods import apply_method, parameter_counts

    net = copy.deepcopy(_meta(model_yaml, task_kind, num_labels))
    with torch.device("meta"):
        net = apply_method(net, OmegaConf.create(method_yaml))
    c = parameter_counts(net)
    return c["total_params"], c["trainable_params"]


@functools.lru_cache(maxsize=4)
def _meta(model_yaml: str, task_kind: str, num_labels: int):
    from repro.models import build_on_meta

    return build_on_meta(OmegaConf.create(model_yaml), task_kind, num_labels=num_labels)


def param_counts(cfg: DictConfig) -> tuple[int, int]:
    """(P, P_t) of the cell; FT when the method does not build (e.g. its config is not written yet: all trainable
    only for ft, else the backbone's non-embedding count as P and 0 trainable)."""
    kind = cfg.task.get("kind", "classification")
    labels = int(cfg.task.get("num_labels") or 2) if kind == "classification" else 2
    model_yaml = OmegaConf.to_yaml(OmegaConf.masked_copy(cfg.model, [k for k in ("name", "model_type", "kind", "arch") if k in cfg.model]))
    try:
        return _counts(model_yaml, OmegaConf.to_yaml(cfg.method), kind, labels)
    except Exception:  # noqa: BLE001 - an estimate for a row whose method does not build yet
        n = backbone_params(cfg.model)
        return n, n if cfg.method.get("name") in FULL_UPDATE_METHODS else 0


def per_device_batch(cfg: DictConfig) -> int:
    from repro.train import batch_plan

    return batch_plan(cfg.train)[0]


def memory_estimate(cfg: DictConfig) -> dict:
    """Peak memory per GPU of one cell, in bytes, by the formula of the module docstring."""
    p, pt = param_counts(cfg)
    a = _arch(cfg.model)
    s, b, h, L = int(cfg.data.max_seq_length), per_device_batch(cfg), a["h"], a["L"]
    precision = str(cfg.train.get("precision", "fp32"))
    half = precision in ("fp16", "bf16")
    static = 4 * p + (2 * p if half else 0) + 12 * pt
    layer = s * b * h * 34 + 5 * a["a"] * s * s * b
    layer += a["rel_terms"] * (2 * a["a"] * b * s * a["rel_span"] + 2 * a["a"] * b * s * s)
    layer *= 1 if half else 2
    checkpointing = bool(cfg.model.get("gradient_checkpointing", False))
    act = L * 4 * s * b * h + layer if checkpointing else L * layer
    logits = 3 * 4 * s * b * a["V"] if cfg.model.get("kind") == "decoder" else 0
    peak = static + act + logits + CUDA_OVERHEAD
    return {"mem_bytes": peak, "per_device_batch": b, "checkpointing": checkpointing, "total_params": p,
            "trainable_params": pt}


def disk_estimate(cfg: DictConfig, checkpoints: int = 2) -> dict:
    """Scratch disk of one job, in bytes: `checkpoints` Trainer checkpoints while it runs + its final weights file."""
    _, pt = param_counts(cfg)
    ckpt = 12 * pt   # trainable weights (4 B) + Adam's two moments (8 B): ReproTrainer._save
    final = 4 * pt
    return {"ckpt_bytes": ckpt, "final_bytes": final, "disk_bytes": checkpoints * ckpt + final}


# ---------------------------------------------------------------- the dry-run report


def describe_cell(cfg: DictConfig) -> dict:
    from repro import records

    est = estimate(cfg)
    try:
        est |= memory_estimate(cfg) | disk_estimate(cfg)
    except Exception as exc:  # noqa: BLE001 - a cell the formula cannot size still gets its FLOPs line
        est |= {"mem_bytes": None, "disk_bytes": None, "mem_note": f"{type(exc).__name__}: {exc}"}
    done = records.finished_record(cfg)
    return {"model": cfg.model.name, "method": cfg.method.name, "variant": cfg.variant, "task": cfg.task.name,
            "seed": cfg.seed, "record": str(records.record_path(cfg)),
            "status": "skip (ok record, same fingerprint)" if done is not None and not cfg.force else "run",
            **est}


def _fmt_n(n) -> str:
    if n is None:
        return "?"
    for unit, div in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= div:
            return f"{n / div:.1f}{unit}"
    return str(n)


def _gib(n) -> str:
    return "?" if n is None else f"{n / GiB:.1f}"


def _fmt_bytes(n) -> str:
    if n is None:
        return "?"
    for unit, div in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6)):
        if n >= div:
            return f"{n / div:.1f} {unit}"
    return f"{n / 1e3:.1f} KB"


def render(table_name: str, cells: list[dict], expansion: Expansion, notes: list[str] | None = None) -> str:
    """The dry-run report: one line per (model, method, variant, task) with its seeds, then totals."""
    gpu, gpu_gib = slurm_gpu()
    lines = [f"Dry run of table {table_name}: nothing is launched.", ""]
    groups: OrderedDict = OrderedDict()
    for c in cells:
        groups.setdefault((c["model"], c["method"], c["variant"], c["task"]), []).append(c)
    head = (f"{'model':<20} {'method':<10} {'variant':<8} {'task':<6} {'seeds':<11} {'N':>7} {'seq':>4} {'examples':>10} "
            f"{'GPU-h/job':>9} {'GiB/GPU':>7} {'b/dev':>5} {'GC':>4} {'disk/job':>9} {'run/skip':>8}")
    lines += [head, "-" * len(head)]
    for (model, method, variant, task), cs in groups.items():
        c = cs[0]
        seeds = ",".join(str(x["seed"]) for x in cs)
        gh = "?" if c.get("gpu_hours") is None else f"{c['gpu_hours']:.2f}"
        n_run = sum(x["status"] == "run" for x in cs)
        ex = "?" if c.get("examples") is None else f"{c['examples']:,}"
        gc = "?" if c.get("mem_bytes") is None else ("yes" if c["checkpointing"] else "no")
        lines.append(f"{model:<20} {method:<10} {variant:<8} {task:<6} {seeds:<11} {_fmt_n(c['params']):>7} {c['seq']:>4} "
                     f"{ex:>10} {gh:>9} {_gib(c.get('mem_bytes')):>7} {c.get('per_device_batch', '?'):>5} {gc:>4} "
                     f"{_fmt_bytes(c.get('disk_bytes')):>9} {n_run:>3}/{len(cs) - n_run:<4}")
    rows = OrderedDict()
    for c in cells:
        rows.setdefault((c["model"], c["method"], c["variant"]), []).append(c)
    total = sum(c.get("gpu_hours") or 0 for c in cells)
    to_run = [c for c in cells if c["status"] == "run"]
    lines += ["", f"rows ({len(rows)}): GPU-hours, peak memory per GPU (the row's largest cell, {gpu} {gpu_gib:.0f} GiB), "
                  "scratch disk (2 checkpoints + final weights per job, all jobs)"]
    for (model, method, variant), cs in rows.items():
        gh = sum(c.get("gpu_hours") or 0 for c in cs)
        mems = [c["mem_bytes"] for c in cs if c.get("mem_bytes") is not None]
        peak = max(mems) if mems else None
        fits = "" if peak is None else ("  fits" if peak <= GPU_MARGIN * gpu_gib * GiB else "  DOES NOT FIT")
        disk = sum(c.get("disk_bytes") or 0 for c in cs)
        lines.append(f"  {model:<20} {method:<10} {variant:<8} {len(cs):>4} jobs  {gh:>10.1f} GPU-h  "
                     f"{_gib(peak):>6} GiB/GPU{fits:<14} {_fmt_bytes(disk):>9} disk")
    if expansion.dropped:
        lines += ["", f"left out of the cartesian product: {expansion.n_dropped} jobs"]
        lines += [f"  {n:>5}  {reason}" for reason, n in sorted(expansion.dropped.items())]
    for note in notes or []:
        lines.append(f"note: {note}")
    lines += [
        "",
        f"jobs: {len(cells)} ({len(to_run)} to run, {len(cells) - len(to_run)} already done and would be skipped)",
        f"estimated GPU-hours (V100): {total:,.1f} in all, {sum(c.get('gpu_hours') or 0 for c in to_run):,.1f} still to run",
        "formula: FLOPs = k*N*T_train + 2*N*T_eval, k=6 (FT) or 4 (frozen backbone); N = non-embedding params;",
        "         T = examples x max_seq_length (padded); V100 at 30 TFLOP/s (fp16) or 10 TFLOP/s (fp32) sustained",
    ]
    mems = [c["mem_bytes"] for c in cells if c.get("mem_bytes") is not None]
    if mems:
        over = sum(m > GPU_MARGIN * gpu_gib * GiB for m in mems)
        lines += [
            f"peak memory per GPU: largest cell {_gib(max(mems))} GiB on a {gpu} ({gpu_gib:.0f} GiB, cells fit under "
            f"{GPU_MARGIN:.0%} of it): {len(mems) - over} of {len(mems)} jobs fit",
            "formula: 4 B x P (+2 B x P fp16 autocast copy) + 12 B x trainable (grads, Adam) + L x (34sbh + 5as^2b) B per "
            "layer (x2 fp32; checkpointing: L x 4sbh + one layer) + decoder logits + 1 GiB (repro/plan.py docstring)",
        ]
    disks = [c for c in cells if c.get("disk_bytes") is not None]
    if disks:
        ckpt_all = sum(c["disk_bytes"] for c in disks)
        final = sum(c["final_bytes"] for c in disks)
        biggest = sorted((c["disk_bytes"] - c["final_bytes"] for c in disks), reverse=True)
        at_once = int(slurm_config().get("array_parallelism") or len(disks))
        lines.append(f"scratch disk: {_fmt_bytes(ckpt_all)} in all (every job's 2 checkpoints + final weights); final "
                     f"weights kept after the grid {_fmt_bytes(final)}; checkpoints are deleted when a cell ends, so with "
                     f"{at_once} jobs at once (slurm array_parallelism) at most {_fmt_bytes(sum(biggest[:at_once]) + final)}")
    return "\n".join(lines)


FAST_GROUPS = ("model", "method", "task")


_BASES: dict[int, DictConfig] = {}


def _base(primary: DictConfig) -> DictConfig:
    """The primary config less its `hydra` node (copied once per primary config: copies are slow)."""
    if id(primary) not in _BASES:
        base = primary.copy()
        with open_dict(base):
            base.pop("hydra", None)
        _BASES.clear()
        _BASES[id(primary)] = base
    return _BASES[id(primary)]


def job_values(primary: DictConfig, job: list[str]) -> dict[str, str]:
    """The job's model, method, variant, task and seed (the primary config's where the job does not set them), and
    any other override it has."""
    return {"model": primary.model.name, "method": primary.method.name, "variant": primary.variant,
            "task": primary.task.name, "seed": str(primary.seed), **job_dict(job)}


def cell_key(primary: DictConfig, job: list[str]) -> tuple:
    """What identifies a job's cell up to its seed: (model, method, variant, task) and any other override."""
    return tuple(sorted((k, v) for k, v in job_values(primary, job).items() if k != "seed"))


def resolve_jobs(config_loader, primary: DictConfig, jobs: list[list[str]], fallback: bool = True):
    """Yield (job, cfg, note) with cfg resolved once per cell and only its seed set per job (cfg is shared: read it,
    do not keep it)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    cache: dict[tuple, tuple] = {}
    for job in jobs:
        key = cell_key(primary, job)
        if key not in cache:
            try:
                cache[key] = resolve_job(config_loader, primary, job, fallback=fallback, parser=parser)
            except Exception as exc:  # noqa: BLE001 - only without fallback: the caller decides
                cache[key] = (None, f"{type(exc).__name__}: {exc}")
        cfg, note = cache[key]
        if cfg is not None:
            with open_dict(cfg):
                cfg.seed = int(job_dict(job).get("seed", primary.seed))
        yield job, cfg, note


def fast_compose(primary: DictConfig, job: list[str], parser=None) -> DictConfig | None:
    """The job's config without Hydra's full composition (which takes ~0.5 s a job): the primary config with the
    job's model/method/task files swapped in and its values set, as Hydra would. None when the job needs more than
    that (another table, a deletion, a group file with its own defaults list); the caller then composes for real.
    Used only for planning and for skipping done cells: a difference can only change a fingerprint, so at worst a
    done cell is launched and skips itself."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from repro import CONF_DIR

    parser = parser or OverridesParser.create()
    cfg = _base(primary).copy()
    values = []
    for o in parser.parse_overrides(list(job)):
        key = o.key_or_group
        if o.is_delete() or o.package:
            return None
        if key.startswith("hydra"):
            continue
        if key == "table":
            if o.value() != cfg.table.name:
                return None
            continue
        if key in FAST_GROUPS:
            path = CONF_DIR / key / f"{o.value()}.yaml"
            if not path.exists():
                if key != "method":
                    return None
                # a method whose config is not written yet: its name only (the table row gives its settings)
                node = OmegaConf.create({"name": o.value(), "_missing_config": str(path.relative_to(CONF_DIR.parent))})
                with open_dict(cfg):
                    cfg[key] = node
                continue
            text = path.read_text()
            if "@package _global_" in text:   # e.g. task/e2e.yaml also sets `decode:`: Hydra's loader places it
                return None
            node = OmegaConf.create(text)
            if "defaults" in node:
                return None
            with open_dict(cfg):
                cfg[key] = node
            continue
        if key.split("/")[0] in ("local", "paths"):
            return None
        values.append(o)
    with open_dict(cfg):
        for o in values:
            OmegaConf.update(cfg, o.key_or_group, o.value(), merge=True, force_add=o.is_add() or o.is_force_add())
    return cfg


def resolve_job(config_loader, primary: DictConfig, job: list[str], fallback: bool = True,
                parser=None) -> tuple[DictConfig, str | None]:
    """One job's resolved cell, as the launcher would compose it: (cfg, None). With `fallback`, a job whose method
    config does not compose yet, or whose cell does not resolve, gives (an estimate-only cfg, a note saying why)."""
    from repro.cell import resolve_cell

    note = None
    cfg = fast_compose(primary, job, parser)
    if cfg is not None and "_missing_config" in cfg.method:
        if not fallback:
            raise FileNotFoundError(f"{cfg.method._missing_config} does not exist")
        note = f"method={cfg.method.name}: {cfg.method._missing_config} does not exist yet; estimated from the table row"
        OmegaConf.set_struct(cfg, False)
        with open_dict(cfg):
            del cfg.method["_missing_config"]
    if cfg is None:
        try:
            cfg = config_loader.load_sweep_config(primary, list(job))
        except Exception as exc:  # e.g. conf/method/<name>.yaml not written yet: estimate from the table row
            if not fallback:
                raise
            d = job_dict(job)
            cfg = config_loader.load_sweep_config(primary, [o for o in job if _key(o)[0] != "method"])
            OmegaConf.set_struct(cfg, False)
            cfg.method = {"name": d.get("method", primary.method.name)}
            note = f"method={d.get('method')} does not compose ({str(exc).splitlines()[0]}): estimated from the table row"
        with open_dict(cfg):
            cfg.pop("hydra", None)
    try:
        return resolve_cell(cfg, list(job), check=note is None), note
    except Exception as exc:
        if not fallback:
            raise
        note = (f"{cfg.model.name}/{cfg.method.name}: cells do not resolve "
                f"({type(exc).__name__}: {str(exc).splitlines()[0]}); estimated without struct or schema checks")
        OmegaConf.set_struct(cfg, False)
        return resolve_cell(cfg, list(job), check=False), note


def plan_jobs(config_loader, primary: DictConfig, jobs: list[list[str]], expansion: Expansion) -> str:
    """Resolve each cell once (the seed changes nothing the estimate reads) and render the dry-run report."""
    cells, notes = [], []
    for _job, cfg, note in resolve_jobs(config_loader, primary, jobs):
        if note and note not in notes:
            notes.append(note)
        cells.append(describe_cell(cfg))
    return render(primary.table.name, cells, expansion, notes)


# ---------------------------------------------------------------- launch order: train.init_from chains


def init_sources(config_loader, primary: DictConfig, jobs: list[list[str]]) -> dict[int, int]:
    """{job index: index of the job whose weights its train.init_from loads} (Table 2: RTE, MRPC and STS-B LoRA start
    from the MNLI cell of the same model and seed). A job whose init_from no job of `jobs` writes has no entry."""
    import os

    from repro import records

    writes, reads = {}, {}
    for i, (_job, cfg, _note) in enumerate(resolve_jobs(config_loader, primary, jobs, fallback=False)):
        if cfg is None:   # does not resolve: launched in the first wave, to fail there with its reason
            continue
        writes[os.path.abspath(records.weights_path(cfg))] = i
        if cfg.train.get("init_from"):
            reads[i] = os.path.abspath(cfg.train.init_from)
    return {i: writes[path] for i, path in reads.items() if writes.get(path, i) != i}


def launch_waves(n_jobs: int, sources: dict[int, int]) -> list[list[int]]:
    """Job indices in waves, grid order kept within each: a job is one wave after the job it starts from."""
    depth: dict[int, int] = {}

    def wave(i: int, chain: tuple = ()) -> int:
        if i in chain:
            raise ValueError(f"train.init_from cycle between jobs {chain}")
        if i not in depth:
            depth[i] = 0 if i not in sources else 1 + wave(sources[i], (*chain, i))
        return depth[i]

    waves: list[list[int]] = []
    for i in range(n_jobs):
        while len(waves) <= wave(i):
            waves.append([])
        waves[wave(i)].append(i)
    return waves


def _with(job: list[str], **values) -> list[str]:
    """The job's overrides with these keys set (replaced where present, appended where not)."""
    out = [o for o in job if _key(o)[0] not in values]
    return out + [f"{k}={v}" for k, v in values.items()]


def deferred_jobs(jobs: list[list[str]], primary: DictConfig) -> list[int]:
    """Indices of the jobs that wait for a tuning choice (repro.tune): a tune group's candidate on a seed other than
    the table's selection seed. They run only if their candidate is chosen, after the selection seed's jobs."""
    from repro import tune

    table = primary.get("table")
    seed = tune.selection_seed(table) if table is not None else None
    if seed is None:
        return []
    out = []
    for i, job in enumerate(jobs):
        d = job_values(primary, job)
        if int(d["seed"]) != seed and tune.group_of(table, d["model"], d["method"], d["variant"]) is not None:
            out.append(i)
    return out


def tuning_choices(config_loader, primary: DictConfig, jobs: list[list[str]]) -> dict[int, tuple[bool | None, str]]:
    """{index into jobs: (run it?, why)} for deferred jobs: each runs iff its candidate is the one repro.tune.choose
    picks from the finished records (same config fingerprint) of every candidate on the selection seed; None: no
    choice can be made yet (why says which candidate is missing)."""
    from repro import records, tune
    from repro.results import record_score

    table = primary.table
    seed = tune.selection_seed(table)
    probes, slots = [], []   # every candidate on the selection seed, once per (job, candidate)
    for i, job in enumerate(jobs):
        d = job_values(primary, job)
        group = tune.group_of(table, d["model"], d["method"], d["variant"])
        for v in tune.groups(table)[group]:
            probes.append(_with(job, variant=v, seed=seed))
            slots.append((i, v))
    scores: dict[int, dict] = {i: {} for i in range(len(jobs))}
    for (i, v), (_job, cfg, _note) in zip(slots, resolve_jobs(config_loader, primary, probes, fallback=False)):
        done = records.finished_record(cfg) if cfg is not None else None
        if done is not None:
            scores[i][v] = record_score(done)
        else:
            previous = records.read_record(records.record_path(cfg)) if cfg is not None else None
            scores[i][v] = None if previous and previous.get("status") not in (None, "ok", "busy") else tune.NOT_RUN
    out = {}
    for i, job in enumerate(jobs):
        d = job_values(primary, job)
        chosen, why = tune.choose(scores[i])
        out[i] = (None, why) if chosen is None else (chosen == d["variant"], f"{d['task']}: {chosen} chosen, {why}")
    return out


def describe_waves(waves: list[list[int]]) -> str:
    if len(waves) < 2:
        return "launch order: one wave (no job starts from another job's weights)"
    parts = [f"wave {k + 1}: {len(w)} jobs" for k, w in enumerate(waves)]
    return ("launch order: " + "; ".join(parts) + ". A job that starts from another job's weights (train.init_from) "
            "is in a later wave; each wave is launched when the one before it has ended")


def _launch_nothing(cfg: DictConfig) -> None:
    """The task function of `python -m repro.plan`: never called, since with dry_run=true the table sweeper prints
    the plan and launches no job."""
    raise RuntimeError("repro.plan launches no job: the table sweeper's dry run should have stopped before this")


def main(argv: list[str] | None = None) -> None:
    """`python -m repro.plan <overrides>`: the table sweeper's dry run (`--multirun ... dry_run=true`), under the
    runner's config but with a task function of its own, so the planner never imports the runner (repro.run
    imports this module for a single cell's dry run)."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not any(a.split("=")[0].lstrip("+") == "table" for a in args):
        print("usage: python -m repro.plan +table=<name> [axis=v1,v2 ...]  (e.g. +table=glue model=roberta-base)", file=sys.stderr)
        sys.exit(2)
    sys.argv = [sys.argv[0], "--multirun", *args, "dry_run=true", "hydra/sweeper=table"]
    import hydra

    from repro import CONF_DIR

    hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")(_launch_nothing)()


if __name__ == "__main__":
    main()
