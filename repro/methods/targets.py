"""Names of the paper's weight matrices (Wq, Wk, Wv, Wo, and the MLP's two) in each transformers architecture."""

from __future__ import annotations

from torch import nn

from repro.errors import CellMismatch

# target -> module path inside one transformer block
BLOCK_MODULES = {
    "roberta": {"q": "attention.self.query", "k": "attention.self.key", "v": "attention.self.value",
                "o": "attention.output.dense", "mlp_in": "intermediate.dense", "mlp_out": "output.dense"},
    "deberta-v2": {"q": "attention.self.query_proj", "k": "attention.self.key_proj", "v": "attention.self.value_proj",
                   "o": "attention.output.dense", "mlp_in": "intermediate.dense", "mlp_out": "output.dense"},
}
BLOCK_MODULES["bert"] = BLOCK_MODULES["roberta"]


def blocks(model: nn.Module) -> list[nn.Module]:
    """The transformer blocks, bottom to top."""
    base = model.base_model
    if hasattr(base, "encoder"):
        return list(base.encoder.layer)
    return list(base.h)  # GPT-2


def find_targets(model: nn.Module, targets: list[str]):
    """Yield (parent module, attribute name, layer index) for every target matrix in every block."""
    model_type = model.config.model_type
    names = BLOCK_MODULES.get(model_type)
    if names is None:
        raise CellMismatch(f"no target names for model_type={model_type}; known: {sorted(BLOCK_MODULES)}")
    unknown = [t for t in targets if t not in names]
    if unknown:
        raise CellMismatch(f"target(s) {unknown} do not exist in {model_type}; allowed: {sorted(names)}")
    for i, block in enumerate(blocks(model)):
        for t in targets:
            *path, attr = names[t].split(".")
            parent = block.get_submodule(".".join(path))
            yield parent, attr, i
