"""Saved activations per transformer layer: what autograd keeps from a layer's forward pass for its backward, by
architecture, as the memory plan counts it (repro/plan/cost.py), and the measurement it is fit to and checked against.

    python -m repro.plan.activations        # measure every architecture on this CPU, fit, print the table

The formula, bytes per layer (`layer_bytes`):
    A_layer = α·s·b·h + β·s·b·f + γ·a·s²·b + δ·a·s·b·2k
s the padded sequence length, b the per-device batch, h the width, f the MLP width, a the attention heads, 2k
DeBERTa's relative-position span (2 x position_buckets); one (α, β, γ, δ) per model_type, precision (fp32, or 16-bit
mixed precision) and backbone (trained: FT; frozen: LoRA, adapters, prefixes, BitFit) in LAYER_BYTES.

Why per architecture: Korthikanti et al. (2022, eq. 2)'s 34·s·b·h + 5·a·s²·b counts Megatron's layer (16-bit, f = 4h);
transformers' layers keep other tensors. GPT-2's gelu_new is the tanh formula written out and keeps about five
tensors of s·b·f; a frozen weight keeps no input for its weight gradient; scaled_dot_product_attention (RoBERTa, BERT,
GPT-2, Llama) keeps no s x s matrix (γ = 0) where DeBERTa's eager attention keeps its scores, probabilities, dropout
mask and the relative-position scores (c2p, p2c: δ). Measured on GPT-2 in fp32, FT: 48·s·b·h + 20·s·b·f, 128·s·b·h at
f = 4h, against the 68 of Korthikanti's formula doubled for fp32.

The measurement (`measure`): random-weight models of 1 and 3 layers of the architecture, one training forward pass of
a random batch under `torch.autograd.graph.saved_tensors_hooks`, the bytes of every distinct storage saved for the
backward; a layer is half the difference (embeddings, head and loss cancel). Left out: the parameters and, in half
precision, their half-precision copies (the plan's static 2 B x P term). Attention-probability dropout is 0 for the
SDPA architectures, so that the CPU takes its flash kernel, which keeps no s x s matrix, as CUDA's flash and
memory-efficient kernels do with or without dropout; DeBERTa keeps its dropout. 16-bit is measured as bf16 autocast on
the CPU: CUDA's fp16 autocast casts the same matrix products, its list of ops it keeps in fp32 differs in places (the
GPU check, scripts/gpu_check.sh, records torch.cuda.max_memory_allocated beside the plan's estimate). The fit is least
squares over SHAPES; tests/test_plan_memory.py measures other shapes and holds the formula to TOLERANCE.
"""

from __future__ import annotations

import sys

import numpy as np
import torch
from omegaconf import OmegaConf
from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification

from repro.methods import apply_method

# (α, β, γ, δ) bytes per layer, by (model_type, "fp32" | "half", "full" | "frozen"): `python -m repro.plan.activations`
# on this 2-core CPU, torch 2.13.0, transformers 5.23.0
LAYER_BYTES: dict[tuple[str, str, str], tuple[float, float, float, float]] = {
    ("roberta", "fp32", "full"): (40.1, 8.08, 0.02, 0.0),
    ("roberta", "fp32", "frozen"): (36.21, 4.16, 0.03, 0.0),
    ("roberta", "half", "full"): (28.1, 4.08, 0.02, 0.0),
    ("roberta", "half", "frozen"): (24.15, 2.12, 0.02, 0.0),
    ("bert", "fp32", "full"): (40.1, 8.08, 0.02, 0.0),
    ("bert", "fp32", "frozen"): (36.21, 4.16, 0.03, 0.0),
    ("bert", "half", "full"): (28.1, 4.08, 0.02, 0.0),
    ("bert", "half", "frozen"): (24.15, 2.12, 0.02, 0.0),
    ("deberta-v2", "fp32", "full"): (52.7, 6.66, 13.77, 9.08),
    ("deberta-v2", "fp32", "frozen"): (43.65, 2.99, 13.85, 8.69),
    ("deberta-v2", "half", "full"): (36.85, 2.66, 8.07, 4.34),
    ("deberta-v2", "half", "frozen"): (29.15, 1.09, 8.18, 3.7),
    ("gpt2", "fp32", "full"): (48.1, 20.08, 0.02, 0.0),
    ("gpt2", "fp32", "frozen"): (44.21, 16.16, 0.03, 0.0),
    ("gpt2", "half", "full"): (28.1, 10.08, 0.02, 0.0),
    ("gpt2", "half", "frozen"): (28.15, 8.12, 0.02, 0.0),
    ("llama", "fp32", "full"): (36.07, 16.06, 0.02, 0.0),
    ("llama", "fp32", "frozen"): (24.18, 12.14, 0.03, 0.0),
    ("llama", "half", "full"): (32.07, 8.06, 0.02, 0.0),
    ("llama", "half", "frozen"): (18.12, 6.1, 0.02, 0.0),
}
TOLERANCE = 0.10  # the formula within 10% of a measurement at shapes it was not fit on
# (h, a, f, s, b, k) the fit measures: widths, head counts, MLP ratios, lengths, batches and (DeBERTa) spans varied
SHAPES = [
    (64, 4, 256, 64, 2, 16),
    (64, 4, 128, 64, 2, 16),
    (128, 4, 256, 64, 2, 16),
    (64, 8, 256, 64, 2, 16),
    (64, 4, 256, 128, 2, 16),
    (64, 4, 256, 64, 4, 16),
    (64, 4, 256, 64, 2, 32),
]
ARCHS = ("roberta", "bert", "deberta-v2", "gpt2", "llama")
FROZEN = OmegaConf.create({"name": "lora", "r": 4, "alpha": 8, "targets": ["q", "v"]})  # a frozen backbone
FULL = OmegaConf.create({"name": "ft"})


def precision_class(precision: str) -> str:
    """ "half" for the 16-bit mixed precisions (fp16, bf16), else "fp32"."""
    return "half" if precision in ("fp16", "bf16") else "fp32"


def layer_bytes(model_type: str, precision: str, full: bool, s: int, b: int, h: int, a: int, f: int, k: int = 0) -> int:
    """Saved activations of one layer, in bytes (the module docstring's formula)."""
    alpha, beta, gamma, delta = LAYER_BYTES[(model_type, precision_class(precision), "full" if full else "frozen")]
    return int(alpha * s * b * h + beta * s * b * f + gamma * a * s * s * b + delta * a * s * b * 2 * k)


# ---------------------------------------------------------------- the measurement


def tiny_model(model_type: str, layers: int, h: int, a: int, f: int, k: int) -> torch.nn.Module:
    """A random-weight model of the architecture (a classifier for encoders, a causal LM for decoders)."""
    torch.manual_seed(0)
    if model_type == "gpt2":
        cfg = AutoConfig.for_model(
            "gpt2", n_layer=layers, n_embd=h, n_head=a, n_inner=f, vocab_size=100, n_positions=512, attn_pdrop=0.0
        )
        cfg.bos_token_id = cfg.eos_token_id = 0
        return AutoModelForCausalLM.from_config(cfg)
    if model_type == "llama":
        cfg = AutoConfig.for_model(
            "llama",
            num_hidden_layers=layers,
            hidden_size=h,
            num_attention_heads=a,
            num_key_value_heads=a // 2,
            intermediate_size=f,
            vocab_size=100,
            max_position_embeddings=512,
            bos_token_id=0,
            eos_token_id=0,
            pad_token_id=0,
        )
        return AutoModelForCausalLM.from_config(cfg)
    kw = {
        "num_hidden_layers": layers,
        "hidden_size": h,
        "num_attention_heads": a,
        "intermediate_size": f,
        "vocab_size": 100,
        "max_position_embeddings": 514,
        "num_labels": 2,
    }
    if model_type == "deberta-v2":  # DeBERTa V2 XXLarge's attention (conf/model/deberta-v2-xxlarge.yaml)
        kw |= {
            "relative_attention": True,
            "position_buckets": k,
            "pos_att_type": ["p2c", "c2p"],
            "share_att_key": True,
            "max_relative_positions": -1,
            "norm_rel_ebd": "layer_norm",
            "position_biased_input": False,
            "type_vocab_size": 0,
        }
    else:  # SDPA: no attention-probability dropout, so that the CPU's flash kernel runs (as CUDA's kernels keep no s^2)
        kw["attention_probs_dropout_prob"] = 0.0
    return AutoModelForSequenceClassification.from_config(AutoConfig.for_model(model_type, **kw))


def saved_bytes(model: torch.nn.Module, s: int, b: int, precision: str) -> int:
    """Bytes of the distinct storages one training forward pass saves for its backward, less the parameters and their
    half-precision copies."""
    model.train()
    params = list(model.parameters())
    own = {p.untyped_storage().data_ptr() for p in params}
    seen: dict[int, int] = {}

    def copy_of_a_weight(t: torch.Tensor) -> bool:  # autocast's half-precision copy of a parameter (or its transpose)
        if t.dtype not in (torch.bfloat16, torch.float16) or t.dim() > 2:
            return False
        return any(
            p.numel() == t.numel() and (torch.equal(t, p.to(t.dtype)) or torch.equal(t.t(), p.to(t.dtype)))
            for p in params
            if p.dim() == t.dim()
        )

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in own and storage.data_ptr() not in seen and not copy_of_a_weight(t):
            seen[storage.data_ptr()] = storage.nbytes()
        return t

    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, 100, (b, s), generator=g)
    decoder = model.config.model_type in ("gpt2", "llama")
    labels = ids if decoder else torch.zeros(b, dtype=torch.long)
    half = precision_class(precision) == "half"
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), torch.autocast("cpu", torch.bfloat16, half):
        model(input_ids=ids, labels=labels)
    return sum(seen.values())


def measure(model_type: str, precision: str, full: bool, h: int, a: int, f: int, s: int, b: int, k: int = 16) -> float:
    """Saved activations of one layer, in bytes: half the difference between 3 layers and 1."""
    found = []
    for layers in (1, 3):
        model = apply_method(tiny_model(model_type, layers, h, a, f, k), FULL if full else FROZEN)
        found.append(saved_bytes(model, s, b, precision))
    return (found[1] - found[0]) / 2


def fit(model_type: str, precision: str, full: bool) -> tuple[float, float, float, float]:
    """(α, β, γ, δ) by least squares over SHAPES (δ only for DeBERTa's relative attention)."""
    rows, target = [], []
    for h, a, f, s, b, k in SHAPES:
        rows.append([s * b * h, s * b * f, a * s * s * b, a * s * b * 2 * k])
        target.append(measure(model_type, precision, full, h, a, f, s, b, k))
    x = np.array(rows, dtype=float)
    if model_type != "deberta-v2":
        x[:, 3] = 0.0
    coef = np.linalg.lstsq(x, np.array(target), rcond=None)[0]
    return tuple(round(float(c), 2) + 0.0 for c in coef)  # type: ignore[return-value]


def main() -> None:
    """Measure and fit every architecture; print LAYER_BYTES as Python."""
    print("LAYER_BYTES = {")
    for model_type in ARCHS:
        for precision in ("fp32", "bf16"):
            for full in (True, False):
                coef = fit(model_type, precision, full)
                key = (model_type, precision_class(precision), "full" if full else "frozen")
                print(f"    {key!r}: {coef!r},", flush=True)
    print("}")


if __name__ == "__main__":
    sys.exit(main())
