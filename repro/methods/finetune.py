"""FT (Section 5.1): every parameter is trained."""

from __future__ import annotations

from omegaconf import DictConfig
from torch import nn


def apply_ft(model: nn.Module, cfg: DictConfig) -> nn.Module:
    for p in model.parameters():
        p.requires_grad = True
    return model
