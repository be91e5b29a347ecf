"""Where the paper's weight matrices live in each transformers architecture (Section 4.2: W_q, W_k, W_v, W_o, and the
MLP's two matrices), and the block-level places adapters hook into.

Targets are named in the paper's words: q, k, v, o (attention) and mlp_in, mlp_out (the MLP, ablations only);
Llama's gated MLP has a third matrix, mlp_gate (gate_proj; up_proj is mlp_in, down_proj mlp_out).
GPT-2 fuses W_q, W_k, W_v into one `attn.c_attn` Conv1D (weight stored (d_in, 3 d_model)); q, k, v name its
three column blocks, in that order. Llama (SmolLM2) has separate bias-free nn.Linear projections, with grouped-query
attention: W_k and W_v map d_model to n_kv_heads x head_dim (SmolLM2-135M: 576 -> 192), not d_model -> d_model;
its MLP is gated (gate_proj and up_proj in, down_proj out): mlp_in names up_proj, mlp_gate gate_proj.

`targets: all_linear` (QLoRA's choice, Dettmers et al. 2023, Sec. 4: "LoRA on all linear transformer block layers")
means every linear layer of each block: ALL_LINEAR[model_type]. The task head and the LM head are never targets
(PEFT's target_modules="all-linear" picks the same block matrices).
"""

from __future__ import annotations

from torch import nn

from repro.errors import CellMismatch

# target -> module path inside one transformer block
BLOCK_MODULES = {
    "roberta": {
        "q": "attention.self.query",
        "k": "attention.self.key",
        "v": "attention.self.value",
        "o": "attention.output.dense",
        "mlp_in": "intermediate.dense",
        "mlp_out": "output.dense",
    },
    "deberta-v2": {
        "q": "attention.self.query_proj",
        "k": "attention.self.key_proj",
        "v": "attention.self.value_proj",
        "o": "attention.output.dense",
        "mlp_in": "intermediate.dense",
        "mlp_out": "output.dense",
    },
    "gpt2": {
        "q": "attn.c_attn",
        "k": "attn.c_attn",
        "v": "attn.c_attn",
        "o": "attn.c_proj",
        "mlp_in": "mlp.c_fc",
        "mlp_out": "mlp.c_proj",
    },
    "llama": {
        "q": "self_attn.q_proj",
        "k": "self_attn.k_proj",
        "v": "self_attn.v_proj",
        "o": "self_attn.o_proj",
        "mlp_in": "mlp.up_proj",
        "mlp_gate": "mlp.gate_proj",
        "mlp_out": "mlp.down_proj",
    },
}
BLOCK_MODULES["bert"] = BLOCK_MODULES["roberta"]
ALL_LINEAR = {mt: list(names) for mt, names in BLOCK_MODULES.items()}  # every linear layer of a block
FUSED_QKV = {"gpt2": ("attn.c_attn", ("q", "k", "v"))}  # module path, the order of its column blocks

# Adapter sites, the output projection of each sub-layer (before dropout, the residual add and the LayerNorm):
# attention output W_o and MLP output; and the LayerNorms of a block (Houlsby et al. train them).
ADAPTER_SITES = {
    "roberta": {
        "attn": "attention.output.dense",
        "mlp": "output.dense",
        "layernorms": ("attention.output.LayerNorm", "output.LayerNorm"),
    },
    "deberta-v2": {
        "attn": "attention.output.dense",
        "mlp": "output.dense",
        "layernorms": ("attention.output.LayerNorm", "output.LayerNorm"),
    },
    "gpt2": {"attn": "attn.c_proj", "mlp": "mlp.c_proj", "layernorms": ("ln_1", "ln_2")},
    # Llama: the block's norms are RMSNorms (a weight, no bias: d parameters each, not 2d)
    "llama": {
        "attn": "self_attn.o_proj",
        "mlp": "mlp.down_proj",
        "layernorms": ("input_layernorm", "post_attention_layernorm"),
    },
}
ADAPTER_SITES["bert"] = ADAPTER_SITES["roberta"]


def model_type(model: nn.Module) -> str:
    mt = model.config.model_type
    if mt not in BLOCK_MODULES:
        raise CellMismatch(f"no module names for model_type={mt}; known: {sorted(BLOCK_MODULES)}")
    return mt


def blocks(model: nn.Module) -> list[nn.Module]:
    """The transformer blocks, bottom (index 0) to top."""
    base = model.base_model
    if hasattr(base, "encoder"):
        return list(base.encoder.layer)
    if hasattr(base, "layers"):  # Llama
        return list(base.layers)
    return list(base.h)  # GPT-2


def block_prefix(model: nn.Module) -> str:
    """The parameter-name prefix of block i is f'{block_prefix(model)}.{i}.'."""
    for name, module in model.named_modules():
        if module is blocks(model)[0]:
            return name.rsplit(".", 1)[0]
    raise CellMismatch("cannot locate the transformer blocks")


def target_names(mt: str, targets) -> list[str]:
    """A method config's `targets` for model_type `mt`: a list of target names, or "all_linear" (every linear layer of
    each block). By model_type, so that the config schema (repro.schema) resolves them before any model is built."""
    if isinstance(targets, str):
        if targets != "all_linear":
            raise CellMismatch(f"targets={targets!r}: a list of target names or 'all_linear'")
        if mt not in ALL_LINEAR:
            raise CellMismatch(f"no module names for model_type={mt}; known: {sorted(BLOCK_MODULES)}")
        return list(ALL_LINEAR[mt])
    return list(targets)


def resolve_targets(model: nn.Module, targets) -> list[str]:
    """target_names for this model."""
    return target_names(model.config.model_type, targets)


def check_targets(model: nn.Module, targets: list[str]) -> None:
    names = BLOCK_MODULES[model_type(model)]
    unknown = [t for t in targets if t not in names]
    if unknown or not targets:
        raise CellMismatch(
            f"target(s) {unknown or targets} do not exist in {model.config.model_type}; allowed: {list(names)}"
        )


def find_targets(model: nn.Module, targets: list[str]):
    """Yield (parent module, attribute name, layer index, [targets in that module]) for every block; a fused module
    (GPT-2 c_attn) is yielded once with all of its requested targets."""
    targets = resolve_targets(model, targets)
    check_targets(model, targets)
    names = BLOCK_MODULES[model_type(model)]
    for i, block in enumerate(blocks(model)):
        by_path: dict[str, list[str]] = {}
        for t in targets:
            by_path.setdefault(names[t], []).append(t)
        for path, ts in by_path.items():
            *parent, attr = path.split(".")
            yield block.get_submodule(".".join(parent)), attr, i, ts
