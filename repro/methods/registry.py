"""Method name (the Hydra option under conf/method/) -> the function that adapts a model."""

from __future__ import annotations

from omegaconf import DictConfig
from torch import nn

from repro.errors import CellMismatch
from repro.methods.finetune import apply_ft
from repro.methods.lora import apply_lora

METHODS = {
    "ft": apply_ft,
    "lora": apply_lora,
}


def apply_method(model: nn.Module, cfg: DictConfig) -> nn.Module:
    if cfg.name not in METHODS:
        raise CellMismatch(f"unknown method {cfg.name!r}; allowed: {sorted(METHODS)}")
    return METHODS[cfg.name](model, cfg)
