"""LoRA (Section 4.1, Eq. 3): h = W0 x + (alpha / r) * B A x, with W0 frozen, A random, B = 0."""

from __future__ import annotations

import math

import torch
from omegaconf import DictConfig
from torch import nn

from repro.methods.common import freeze_all_but_head
from repro.methods.targets import find_targets


class LoRALinear(nn.Module):
    """A frozen nn.Linear W0 plus a trainable rank-r update ΔW = (alpha / r) * B A."""

    def __init__(self, base: nn.Linear, r: int, alpha: float, dropout: float = 0.0, init: str = "kaiming"):
        super().__init__()
        d_out, d_in = base.weight.shape
        if not 0 < r <= min(d_in, d_out):
            raise ValueError(f"LoRA rank r={r} must satisfy 0 < r <= min(d_in, d_out) = {min(d_in, d_out)}")
        self.base, self.r, self.alpha, self.scaling = base, r, alpha, alpha / r
        self.lora_A = nn.Parameter(base.weight.new_empty(r, d_in))
        self.lora_B = nn.Parameter(base.weight.new_zeros(d_out, r))
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        if init == "gaussian":
            nn.init.normal_(self.lora_A, std=1 / r)
        else:
            nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + self.scaling * (self.lora_dropout(x) @ self.lora_A.T @ self.lora_B.T)


def apply_lora(model: nn.Module, cfg: DictConfig) -> nn.Module:
    freeze_all_but_head(model)
    for parent, attr, _ in find_targets(model, list(cfg.targets)):
        base = getattr(parent, attr)
        setattr(parent, attr, LoRALinear(base, cfg.r, cfg.alpha, cfg.dropout, cfg.init))
    return model
