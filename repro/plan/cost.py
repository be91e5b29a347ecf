"""What one cell would cost on the paper's hardware, by stated formulas (estimates, not measurements): compute in
GPU-hours, peak memory per GPU, scratch disk.

Cost estimate per job (`estimate`):
    FLOPs  = k * N * T_train + 2 * N * T_eval
    k      = 6 for full fine-tuning (forward 2N, backward 4N per token), 4 when the backbone is frozen
             (LoRA, adapters, BitFit, prefix: the weight-gradient half of the backward pass is skipped)
    N      = the backbone's non-embedding parameters, 12 * L * d^2 for d_ff = 4d (from the model's `arch`)
    T_train = examples seen * max_seq_length   (examples seen = max_steps * global batch, or train size * epochs;
             every sequence counted at max_seq_length: the paper's run_glue.py pads to it)
    T_eval = dev size * max_seq_length * number of evaluations (one per epoch)
    GPU-h  = FLOPs / (sustained V100 throughput) / 3600, with 30 TFLOP/s for fp16 (a quarter of the tensor-core
             peak, 125) and 10 TFLOP/s for fp32 (two thirds of the 15.7 peak)

Peak memory per GPU (`memory_estimate`), for the GPU that conf/hydra/launcher/slurm.yaml's `constraint` names
(volta32gb, the paper's V100 32 GB, when it names none):
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

import copy
import functools
import math

import torch
from omegaconf import DictConfig, OmegaConf

from repro.config import load_group
from repro.method_traits import FULL_UPDATE_METHODS
from repro.methods import apply_method, parameter_counts
from repro.models import build_on_meta
from repro.train import batch_plan

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
V100_TFLOPS = {"fp16": 30.0, "bf16": 30.0, "fp32": 10.0}
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
GiB = float(1 << 30)


# ---------------------------------------------------------------- compute


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
    k = 6 if cfg.method.name in FULL_UPDATE_METHODS else 4
    flops = k * n * examples * seq + 2 * n * n_dev * seq * evals
    tflops = V100_TFLOPS.get(str(t.get("precision", "fp32")), V100_TFLOPS["fp32"])
    return {"params": n, "seq": seq, "examples": examples, "flops": flops, "gpu_hours": flops / (tflops * 1e12) / 3600}


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
    rel = list(arch.get("pos_att_type") or []) if arch.get("relative_attention") else []
    buckets = arch.get("position_buckets") or 0
    span = 2 * (buckets if buckets > 0 else (arch.get("max_position_embeddings") or 512))
    return {
        "L": arch.get("num_hidden_layers") or arch.get("n_layer") or 0,
        "h": h,
        "a": arch.get("num_attention_heads") or arch.get("n_head") or 1,
        "V": arch.get("vocab_size") or 50257,
        "rel_terms": len(rel),
        "rel_span": span,
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


def per_device_batch(cfg: DictConfig) -> int:
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
    return {
        "mem_bytes": peak,
        "per_device_batch": b,
        "checkpointing": checkpointing,
        "total_params": p,
        "trainable_params": pt,
    }


def disk_estimate(cfg: DictConfig, checkpoints: int = 2) -> dict:
    """Scratch disk of one job, in bytes: `checkpoints` Trainer checkpoints while it runs + its final weights file."""
    _, pt = param_counts(cfg)
    ckpt = 12 * pt  # trainable weights (4 B) + Adam's two moments (8 B): ReproTrainer._save
    final = 4 * pt
    return {"ckpt_bytes": ckpt, "final_bytes": final, "disk_bytes": checkpoints * ckpt + final}
