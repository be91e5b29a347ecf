"""The full- and partial-fine-tuning baselines of Section 5.1.

* FT: every parameter is trained.
* FTTop2 (Li & Liang 2021): only the last two transformer blocks (all their weights, biases and LayerNorms) and the
  task head. Counted: the two blocks, nothing else -- GPT-2 M: 2 × 12,596,224 = 25,192,448 = Table 3's "25.19M"
  (Tables 13/14 print "24M" = 25,192,448 / 2^20). The final LayerNorm ln_f and the tied LM head/embedding stay frozen.
* BitFit (Zaken et al. 2021): bias terms only, i.e. every parameter whose name contains "bias", LayerNorm biases
  included, as microsoft/LoRA `run_glue.py --apply_bitfit`. A model without any bias (Llama/SmolLM2:
  attention_bias=False, mlp_bias=False, RMSNorm) is refused: there is nothing for BitFit to train.
"""

from __future__ import annotations

from omegaconf import DictConfig
from torch import nn

from repro.errors import CellMismatch
from repro.methods.common import mark_trainable
from repro.methods.targets import block_prefix, blocks


def apply_ft(model: nn.Module, cfg: DictConfig) -> nn.Module:
    return mark_trainable(model, lambda name: True)


def apply_fttop(model: nn.Module, cfg: DictConfig) -> nn.Module:
    n = int(cfg.get("top_layers", 2))
    L = len(blocks(model))
    if not 0 < n <= L:
        raise CellMismatch(f"method.top_layers={n}: must be in 1..{L} (the model's number of blocks)")
    prefix = block_prefix(model)
    top = tuple(f"{prefix}.{i}." for i in range(L - n, L))
    return mark_trainable(model, lambda name: name.startswith(top))


def model_label(model: nn.Module) -> str:
    """Our model name (conf/model/<name>.yaml, set by repro.models.load_model) or else the architecture."""
    return getattr(model, "repro_model_name", None) or model.config.model_type


def apply_bitfit(model: nn.Module, cfg: DictConfig) -> nn.Module:
    if not any("bias" in name for name, _ in model.named_parameters()):
        c = model.config
        flags = ", ".join(f"{k}={getattr(c, k)}" for k in ("attention_bias", "mlp_bias") if hasattr(c, k))
        arch = type(model).__name__.removesuffix("ForCausalLM").removesuffix("ForSequenceClassification")
        raise CellMismatch(
            f"method=bitfit: model {model_label(model)} has no bias parameters ({arch}"
            + (f": {flags}" if flags else "")
            + "); BitFit trains biases only"
        )
    return mark_trainable(model, lambda name: "bias" in name)
