"""What one cell would cost on the paper's hardware, by stated formulas (estimates, not measurements of the cell):
compute in GPU-hours, peak memory per GPU, scratch disk, and how often it saves a resumable checkpoint.

Cost estimate per job (`estimate`):
    FLOPs  = k * N * T_train + 2 * N * T_eval
    k      = 6 for full fine-tuning (forward 2N, backward 4N per token), 4 when the backbone is frozen
             (LoRA, adapters, BitFit, prefix: the weight-gradient half of the backward pass is skipped)
    N      = the backbone's non-embedding parameters, 12 * L * d^2 for d_ff = 4d (from the model's `arch`)
    T_train = examples seen * padded length at the per-device batch b; T_eval = dev size * padded length at the eval
             batch * number of evaluations (one per epoch). Batches are padded dynamically, to their longest example:
             the padded length is E[max of b example lengths] capped at max_seq_length, from the task's measured
             length distribution (repro/plan/lengths.py; MNLI and QQP, not offline: a stated expectation), and
             max_seq_length for a task without one (the paper's run_glue.py padded every batch to it)
    GPU-h  = FLOPs / (sustained throughput) / 3600: a quarter of the GPU's 16-bit tensor-core peak for fp16/bf16, two
             thirds of its fp32 peak (SUSTAINED_TFLOPS); the plan states V100 hours (30 and 10 TFLOP/s)

Peak memory per GPU (`memory_estimate`), for the GPU that conf/hydra/launcher/slurm.yaml's `constraint` names
(volta32gb, the paper's V100 32 GB, when it names none), with `world_size` processes (torchrun):
    static = 4 B x P                (weights: fp32, also under fp16/bf16 mixed precision, which keeps fp32 masters)
           + 2 B x P                (fp16/bf16 only: autocast's half-precision copy of the weights)
           + 4 B x P_t + 8 B x P_t  (fp32 gradients and Adam's two moments, trainable parameters P_t only)
           + 4 B x P_t              (world_size > 1: DDP's gradient buckets, a second fp32 copy of the gradients)
    P, P_t = all and trainable parameters of the model with its method and task head, counted on the meta device
    act    = L x A_layer (no checkpointing), or L x 4 B x s*b*h + A_layer (gradient checkpointing: each layer keeps its
             fp32 input, one layer's activations live again during its recomputation)
    A_layer = the saved activations of one layer of the model's architecture, in its precision, with a trained or a
             frozen backbone: α·s·b·h + β·s·b·f + γ·a·s²·b + δ·a·s·b·2k, the constants fit to saved-tensor bytes
             measured on the CPU (repro/plan/activations.py; Korthikanti et al.'s 34sbh + 5as^2b counts Megatron's
             layer: GPT-2's keeps 128·s·b·h in fp32 at f = 4h)
    logits = decoders only: 3 x 4 B x s*b*V (fp32 logits, their log-softmax and its gradient)
    train  = static + act + logits
    eval   = static less the gradients (freed before each evaluation; DDP's buckets stay) + one layer's activations
             at the eval batch b_e (a forward pass keeps no more than a training one) + decoders' 2 x 4 B x s*b_e*V
    peak   = max(train, eval) + 1 GiB (CUDA context, cuBLAS workspace)
    s = max_seq_length (padded), b = the per-device batch of repro.train.batch_plan (the model's
    max_per_device_batch_size cap, accumulation for the rest), b_e = repro.train.eval_batch, h, f, a, L, V, k from the
    model's `arch`.
A cell fits when peak <= 90% of the GPU's memory (the margin: allocator fragmentation and caching). Each
conf/model/*.yaml sets max_per_device_batch_size and gradient_checkpointing so that every paper cell fits on one GPU;
on the GPU it runs on, `fit_to_gpu` (repro.run, before the cell's lock) turns on gradient checkpointing where the cell
is over (not in the fingerprint), and refuses a cell still over, naming the per-device batch that would fit (that
cap is part of the fingerprint: the user's choice).

Checkpoints (`checkpoint_every`): train.save_every_steps, or the steps train.save_every_minutes covers at the
estimated step time, whichever is fewer; the plan warns where one epoch takes longer than the SLURM job's time limit.

Scratch disk per job (`disk_estimate`): a Trainer checkpoint holds the trainable tensors (repro.train.ReproTrainer
saves a frozen backbone's trainable tensors only; FT's are all P) in fp32 + Adam's two moments for them: 12 B x P_t, +
scheduler/RNG/state files (~0); save_total_limit keeps one, but the best and the last may coexist: 2 checkpoints
per running job, deleted when the cell ends (unless train.keep_checkpoints). The final weights file holds the
trainable tensors only (repro.methods.checkpoint.save_trainable, 4 B x P_t) and stays.
"""

from __future__ import annotations

import copy
import functools
import math

import torch
from omegaconf import DictConfig, OmegaConf, open_dict

from repro.config import load_group
from repro.errors import ReproError
from repro.method_traits import FULL_UPDATE_METHODS
from repro.methods import apply_method, parameter_counts
from repro.models import build_on_meta
from repro.plan.activations import layer_bytes
from repro.plan.lengths import padded_length
from repro.tasks import traits
from repro.train import batch_plan, eval_batch

# Train / dev examples per task (GLUE: the official dev split; MNLI dev = matched). Sources: GLUE (Wang et al. 2019)
# Table 1, E2E (Novikova et al. 2017), WebNLG 2017 and DART as prepared by microsoft/LoRA examples/NLG.
DATASET_SIZES = {
    "mnli": (392_702, 9_815),
    "sst2": (67_349, 872),
    "mrpc": (3_668, 408),
    "cola": (8_551, 1_043),
    "qnli": (104_743, 5_463),
    "qqp": (363_846, 40_430),
    "rte": (2_490, 277),
    "stsb": (5_749, 1_500),
    "e2e": (42_061, 4_672),
    "webnlg": (18_025, 872),
    "dart": (62_659, 2_768),
}
# Sustained TFLOP/s by GPU and precision: a quarter of the 16-bit tensor-core peak, two thirds of the fp32 peak (V100:
# 125 and 15.7; A100: 312 and 19.5; H100 SXM: 989 and 67; H200: as H100)
SUSTAINED_TFLOPS = {
    "v100": {"fp16": 30.0, "bf16": 30.0, "fp32": 10.0},
    "a100": {"fp16": 78.0, "bf16": 78.0, "fp32": 13.0},
    "h100": {"fp16": 247.0, "bf16": 247.0, "fp32": 45.0},
}
V100_TFLOPS = SUSTAINED_TFLOPS["v100"]  # the plan's GPU-hours are V100 hours, the paper's GPU
# GPU memory (GiB) by SLURM constraint (conf/hydra/launcher/slurm.yaml); the paper's GPU when none is named
GPU_MEMORY_GIB = {
    "volta32gb": 32,
    "volta16gb": 16,
    "v100": 32,
    "a100": 40,
    "a100_40gb": 40,
    "a100_80gb": 80,
    "h100": 80,
    "h200": 141,
}
DEFAULT_GPU = "volta32gb"
GPU_MARGIN = 0.9  # a cell fits when its estimate is at most this share of the GPU's memory
CUDA_OVERHEAD = 1 << 30  # CUDA context and cuBLAS workspace
DDP_WORLD_SIZE = 8  # the plan's torchrun column: the paper's 8 GPUs (buckets, and the per-device batch of 8 processes)
GiB = float(1 << 30)


# ---------------------------------------------------------------- compute


def backbone_params(model: DictConfig) -> int:
    """Non-embedding parameters of a transformer from its `arch`: L * (4 d^2 + 2 d d_ff)."""
    arch = model.get("arch") or {}
    layers = arch.get("num_hidden_layers") or arch.get("n_layer") or 0
    d = arch.get("hidden_size") or arch.get("n_embd") or 0
    d_ff = arch.get("intermediate_size") or arch.get("n_inner") or 4 * d
    return int(layers * (4 * d * d + 2 * d * d_ff))


def tokens_per_example(cfg: DictConfig, batch: int) -> tuple[float, str]:
    """(the expected padded length of a batch of `batch` examples of the cell's task, where it comes from)."""
    seq = int(cfg.data.max_seq_length)
    found = padded_length(cfg.task.name, batch, seq)
    return found if found is not None else (float(seq), f"max_seq_length: no lengths for {cfg.task.name}")


def estimate(cfg: DictConfig) -> dict:
    """The cost of one resolved cell (see the module docstring for the formula): FLOPs, V100 GPU-hours, optimizer
    steps and epochs."""
    n = backbone_params(cfg.model)
    seq = int(cfg.data.max_seq_length)
    n_train, n_dev = DATASET_SIZES.get(cfg.task.name, (None, None))
    n_train = cfg.task.get("num_train_examples") or n_train
    n_dev = cfg.task.get("num_dev_examples") or n_dev
    if n_train is None:
        return {
            "params": n,
            "seq": seq,
            "examples": None,
            "gpu_hours": None,
            "note": f"no dataset size for {cfg.task.name}",
        }
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
    tokens, lengths = tokens_per_example(cfg, batch_plan(t, 1)[0])
    eval_tokens, _ = tokens_per_example(cfg, eval_batch(cfg.train, eval_floor(cfg), 1))
    k = 6 if cfg.method.name in FULL_UPDATE_METHODS else 4
    train_flops = k * n * examples * tokens
    flops = train_flops + 2 * n * n_dev * eval_tokens * evals
    precision = str(t.get("precision", "fp32"))
    return {
        "params": n,
        "seq": seq,
        "tokens": tokens,
        "lengths": lengths,
        "examples": examples,
        "steps": math.ceil(examples / int(t.global_batch_size)),
        "epochs": examples / n_train,
        "flops": flops,
        "train_flops": train_flops,
        "gpu_hours": hours(flops, "v100", precision),
    }


def hours(flops: float, gpu: str, precision: str) -> float:
    """GPU-hours of `flops` at the GPU's sustained throughput in that precision."""
    rates = SUSTAINED_TFLOPS[gpu]
    return flops / (rates.get(precision, rates["fp32"]) * 1e12) / 3600


# ---------------------------------------------------------------- checkpoints


def checkpoint_every(cfg: DictConfig, est: dict) -> dict:
    """How long the cell goes between two resumable checkpoints, the most a pre-emption loses: the Trainer saves at
    each evaluation (once per epoch) and repro.train.CheckpointCadence every train.save_every_steps or every
    train.save_every_minutes, whichever comes first. `ckpt_steps` (None: at evaluations only), `ckpt_hours` on a V100,
    and `epoch_hours`, the V100 hours of one epoch's training."""
    steps, every_steps = est.get("steps"), cfg.train.get("save_every_steps")
    minutes = cfg.train.get("save_every_minutes")
    if not steps or est.get("gpu_hours") is None:
        return {"ckpt_steps": every_steps, "ckpt_hours": None, "epoch_hours": None}
    step_h = hours(est["train_flops"], "v100", str(cfg.train.precision)) / steps
    epoch_steps = min(steps, max(1, math.ceil(steps / max(est["epochs"], 1e-9))))
    candidates = [int(every_steps)] if every_steps else []
    if minutes:
        candidates.append(max(1, math.floor(float(minutes) / 60 / step_h)))
    every = min(candidates) if candidates and min(candidates) < epoch_steps else None
    return {"ckpt_steps": every, "ckpt_hours": (every or epoch_steps) * step_h, "epoch_hours": epoch_steps * step_h}


# ---------------------------------------------------------------- memory per GPU and scratch disk


@functools.cache
def slurm_config() -> DictConfig:
    return load_group("hydra/launcher", "slurm")


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
    buckets = arch.get("position_buckets") or 0
    return {
        "type": model.get("model_type"),
        "L": arch.get("num_hidden_layers") or arch.get("n_layer") or 0,
        "h": h,
        "f": arch.get("intermediate_size") or arch.get("n_inner") or 4 * h,
        "a": arch.get("num_attention_heads") or arch.get("n_head") or 1,
        "V": arch.get("vocab_size") or 50257,
        "k": buckets if buckets > 0 else (arch.get("max_position_embeddings") or 512),
    }


@functools.cache
def _counts(model_yaml: str, method_yaml: str, task_kind: str, num_labels: int) -> tuple[int, int]:
    """(all, trainable) parameters of the model with its method and head, built on the meta device."""
    net = copy.deepcopy(_meta(model_yaml, task_kind, num_labels))
    with torch.device("meta"):
        net = apply_method(net, OmegaConf.create(method_yaml))
    c = parameter_counts(net)
    return c["total_params"], c["trainable_params"]


@functools.lru_cache(maxsize=4)
def _meta(model_yaml: str, task_kind: str, num_labels: int):
    return build_on_meta(OmegaConf.create(model_yaml), task_kind, num_labels=num_labels)


def param_counts(cfg: DictConfig) -> tuple[int, int]:
    """(P, P_t) of the cell; FT when the method does not build (e.g. its config is not written yet: all trainable
    only for ft, else the backbone's non-embedding count as P and 0 trainable)."""
    kind = cfg.task.kind
    labels = int(cfg.task.get("num_labels") or 2)  # a head without labels (a causal LM) ignores it
    model_yaml = OmegaConf.to_yaml(
        OmegaConf.masked_copy(cfg.model, [k for k in ("name", "model_type", "kind", "arch") if k in cfg.model])
    )
    try:
        return _counts(model_yaml, OmegaConf.to_yaml(cfg.method), kind, labels)
    except Exception:  # noqa: BLE001 - an estimate for a row whose method does not build yet
        n = backbone_params(cfg.model)
        return n, n if cfg.method.get("name") in FULL_UPDATE_METHODS else 0


def eval_floor(cfg: DictConfig) -> int:
    """The task family's least per-device eval batch (repro.tasks.Traits)."""
    return traits(cfg.task.kind).eval_batch_floor


def per_device_batch(cfg: DictConfig, world_size: int = 1) -> int:
    return batch_plan(cfg.train, world_size)[0]


def memory_estimate(cfg: DictConfig, world_size: int = 1) -> dict:
    """Peak memory per GPU of one cell with `world_size` processes, in bytes, by the formula of the module docstring,
    and its parts."""
    p, pt = param_counts(cfg)
    a = _arch(cfg.model)
    s, h, L = int(cfg.data.max_seq_length), a["h"], a["L"]
    b, b_eval = per_device_batch(cfg, world_size), eval_batch(cfg.train, eval_floor(cfg), world_size)
    precision = str(cfg.train.get("precision", "fp32"))
    half = precision in ("fp16", "bf16")
    full = cfg.method.get("name") in FULL_UPDATE_METHODS

    def layer(batch: int) -> int:
        return layer_bytes(
            a["type"], precision, full, s, batch, h, a["a"], a["f"], a["k"] if a["type"] == "deberta-v2" else 0
        )

    buckets = 4 * pt if world_size > 1 else 0
    weights = 4 * p + (2 * p if half else 0)
    static = weights + 12 * pt + buckets
    checkpointing = bool(cfg.model.get("gradient_checkpointing", False))
    act = L * 4 * s * b * h + layer(b) if checkpointing else L * layer(b)
    decoder = cfg.model.get("kind") == "decoder"
    logits = 3 * 4 * s * b * a["V"] if decoder else 0
    train = static + act + logits
    evaluation = weights + 8 * pt + buckets + layer(b_eval) + (2 * 4 * s * b_eval * a["V"] if decoder else 0)
    return {
        "mem_bytes": max(train, evaluation) + CUDA_OVERHEAD,
        "per_device_batch": b,
        "eval_batch": b_eval,
        "checkpointing": checkpointing,
        "world_size": world_size,
        "ddp_bucket_bytes": buckets,
        "activation_bytes": act,
        "peak_in": "eval" if evaluation > train else "train",
        "total_params": p,
        "trainable_params": pt,
    }


def fits(mem_bytes: float, gpu_bytes: float) -> bool:
    return mem_bytes <= GPU_MARGIN * gpu_bytes


def fit_to_gpu(cfg: DictConfig, gpu_bytes: float, world_size: int = 1) -> list[str]:
    """Make the cell fit a GPU of `gpu_bytes` (its estimate at most GPU_MARGIN of it) without changing what it computes
    or its fingerprint: gradient checkpointing on (model.gradient_checkpointing, left out of the fingerprint) where it
    is over. Changes cfg in place and returns what it changed. A cell still over is refused (ReproError) with the
    largest per-device batch that would fit: train.max_per_device_batch_size is part of the fingerprint (the table's
    cap resolves into it), so lowering it is the user's choice, not the runner's."""
    changed = []
    with open_dict(cfg):
        mem = memory_estimate(cfg, world_size)["mem_bytes"]
        if not fits(mem, gpu_bytes) and not cfg.model.get("gradient_checkpointing", False):
            cfg.model.gradient_checkpointing = True
            changed.append("model.gradient_checkpointing=true")
            mem = memory_estimate(cfg, world_size)["mem_bytes"]
    if fits(mem, gpu_bytes):
        return changed
    cell = f"model={cfg.model.name} method={cfg.method.name} task={cfg.task.name}"
    over = f"over {GPU_MARGIN:.0%} of this GPU's {gpu_bytes / GiB:.0f} GiB (repro/plan/cost.py)"
    b = per_device_batch(cfg, world_size)
    for smaller in range(b - 1, 0, -1):
        trial = copy.deepcopy(cfg)
        with open_dict(trial):
            trial.train.max_per_device_batch_size = smaller
        if fits(memory_estimate(trial, world_size)["mem_bytes"], gpu_bytes):
            raise ReproError(
                f"{cell}: about {mem / GiB:.1f} GiB per GPU with {world_size} process(es), gradient checkpointing on, "
                f"{over}; train.max_per_device_batch_size={smaller} fits (the same optimization, by accumulation; a "
                "new fingerprint, as the per-device cap is part of it)"
            )
    trial = copy.deepcopy(cfg)
    with open_dict(trial):
        trial.train.max_per_device_batch_size = 1
    least = memory_estimate(trial, world_size)["mem_bytes"]
    raise ReproError(
        f"{cell}: about {least / GiB:.1f} GiB per GPU with {world_size} process(es) even at per-device batch 1 with "
        f"gradient checkpointing, {over}: run it on a larger GPU"
        + (" or on one process (no DDP gradient buckets)" if world_size > 1 else "")
    )


def disk_estimate(cfg: DictConfig, checkpoints: int = 2) -> dict:
    """Scratch disk of one job, in bytes: `checkpoints` Trainer checkpoints while it runs + its final weights file."""
    _, pt = param_counts(cfg)
    ckpt = 12 * pt  # trainable weights (4 B) + Adam's two moments (8 B): ReproTrainer._save
    final = 4 * pt
    return {"ckpt_bytes": ckpt, "final_bytes": final, "disk_bytes": checkpoints * ckpt + final}
