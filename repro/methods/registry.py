"""Method name (the Hydra option under conf/method/, its field `name`) -> the function that adapts a model.

Every function is `apply(model, method_cfg) -> model`: it performs the model surgery and marks exactly the right
parameters trainable (the task head always, counted apart: repro.methods.common.parameter_counts). What kind of
method each name is (a LoRA variant, decoder-only, a full update) is plain data in repro.method_traits."""

from __future__ import annotations

from omegaconf import DictConfig
from torch import nn

from repro.errors import CellMismatch
from repro.methods.adalora import apply_adalora
from repro.methods.adapters import apply_adapter
from repro.methods.dora import apply_dora
from repro.methods.finetune import apply_bitfit, apply_ft, apply_fttop
from repro.methods.lora import apply_lora
from repro.methods.prefix import apply_prefix
from repro.methods.qlora import apply_qlora

# the names are exactly repro.method_traits.TRAITS's, in its order
METHODS = {
    "ft": apply_ft,
    "fttop2": apply_fttop,
    "bitfit": apply_bitfit,
    "adapter_h": apply_adapter,
    "adapter_l": apply_adapter,
    "adapter_p": apply_adapter,
    "adapter_d": apply_adapter,
    "prefix_embed": apply_prefix,
    "prefix_layer": apply_prefix,
    "lora": apply_lora,  # also with `targets: all_linear`
    "rslora": apply_lora,  # rslora: true -- scaling alpha/√r
    "pissa": apply_lora,  # init: pissa -- A, B from W's top-r SVD, W0 <- the residual
    "dora": apply_dora,
    "lora_all_linear": apply_lora,  # the same as lora, targets: all_linear as its default
    "qlora": apply_qlora,  # base in 4-bit NF4 (bitsandbytes), LoRA on top
    "adalora": apply_adalora,  # PEFT's AdaLoRA injected in place; its Trainer callback: trainer_callbacks(model)
}


def trainer_callbacks(model: nn.Module) -> list:
    """Trainer callbacks a method needs in the training loop (AdaLoRA: the rank allocation after each optimizer step)."""
    return list(getattr(model, "repro_callbacks", []))


def loss_term(model: nn.Module):
    """A term the method adds to the training loss (AdaLoRA: orth_reg_weight · R(P, Q)), or None. ReproTrainer adds it
    to each training micro-batch's loss (repro.train.ReproTrainer.compute_loss: once per optimizer step)."""
    term = getattr(model, "repro_loss_term", None)
    return term(model) if term is not None else None


def apply_method(model: nn.Module, cfg: DictConfig) -> nn.Module:
    if cfg.name not in METHODS:
        raise CellMismatch(f"unknown method {cfg.name!r}; allowed: {sorted(METHODS)}")
    return METHODS[cfg.name](model, cfg)
