"""LoRA (Hu et al. 2021, Section 4.1, Eq. 3): h = W0 x + ΔW x = W0 x + (alpha / r) * B A x.

W0 is frozen; A (r × d_in) starts random, B (d_out × r) starts at zero, so ΔW = 0 and the adapted model equals the
pre-trained one at step 0. Only the matrices named in `targets` (Section 4.2: W_q, W_v in most experiments) get a
pair (A, B); the task head (GLUE classifier, DeBERTa/BERT pooler) is trained too but is not counted in |Θ|.

Tensor keys (checkpoints and `state_dict`) -- the analysis module relies on them:

* a plain nn.Linear (RoBERTa/BERT `query`/`value`, DeBERTa-v2 `query_proj`/`value_proj`, ...) keeps its own key
  and gets two more, as in loralib:  `<module>.weight` (W0), `<module>.lora_A` (r × d_in), `<module>.lora_B` (d_out × r).
* GPT-2's fused `attn.c_attn` (transformers Conv1D: weight stored (d_in, 3·d_model), i.e. transposed, q|k|v column
  blocks) gets one independent rank-r pair per adapted projection, as loralib's
  `MergedLinear(enable_lora=[True, False, True], fan_in_fan_out=True)`: `<...>.c_attn.lora_A.q`, `.lora_B.q`,
  `.lora_A.v`, `.lora_B.v`; W_k gets no update. Other GPT-2 Conv1D targets use the same layout with one part
  (`attn.c_proj.lora_A.o`, `mlp.c_fc.lora_A.mlp_in`, `mlp.c_proj.lora_A.mlp_out`).

`delta_weight(module)` returns ΔW = (alpha/r)·B A in fp32 in the paper's orientation (d_out × d_in, so h = ΔW x):
a Tensor for a plain Linear, a dict {target: Tensor} for a Conv1D module (GPT-2: {"q": ΔW_q, "v": ΔW_v}).
`delta_weights(model)` yields (layer index, target, ΔW) for every adapted matrix of a model.

Merging is explicit (`merge`, `unmerge`, `with merged(model):`), never a side effect of `.eval()` (anchors D1, C5.3);
it is done in fp32 and cast back to W0's dtype.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from omegaconf import DictConfig
from torch import nn
from transformers.pytorch_utils import Conv1D

from repro.errors import CellMismatch
from repro.methods.common import freeze_all_but_head
from repro.methods.targets import FUSED_QKV, find_targets, model_type


@dataclass
class LoRAConfig:
    """conf/method/lora.yaml."""

    r: int = 8
    alpha: float = 8            # scaling alpha / r (Section 4.1)
    dropout: float = 0.0        # on the LoRA path only (Table 11: 0.1 for E2E/WebNLG; NLU scripts: 0)
    targets: list[str] = field(default_factory=lambda: ["q", "v"])
    init: str = "kaiming"       # A: loralib's kaiming_uniform(a=sqrt 5), or "gaussian" N(0, 1/r) (the paper's text)


def _check_rank(r: int, d_in: int, d_out: int, where: str) -> None:
    if not isinstance(r, int) or not 0 < r <= min(d_in, d_out):
        raise CellMismatch(f"LoRA rank r={r} at {where}: must satisfy 0 < r <= min(d_in, d_out) = {min(d_in, d_out)}")


def _init_A(A: torch.Tensor, r: int, init: str) -> None:
    if init == "kaiming":
        nn.init.kaiming_uniform_(A, a=math.sqrt(5))   # loralib.Linear.reset_parameters
    elif init == "gaussian":
        nn.init.normal_(A, std=1 / r)                  # "random Gaussian initialization for A" (Section 4.1)
    else:
        raise CellMismatch(f"method.init={init!r}; allowed: kaiming, gaussian")


def _add_in_fp32(weight: torch.Tensor, update: torch.Tensor) -> None:
    """weight += update (an fp32 ΔW), in place; a weight of lower precision is summed in fp32 and cast back."""
    if weight.dtype == torch.float32:
        weight.add_(update)
    else:
        weight.copy_((weight.float() + update).to(weight.dtype))


class LoRALinear(nn.Linear):
    """nn.Linear with h = W0 x + b + (alpha/r) · B A dropout(x). W0 and b are the base layer's own Parameters."""

    def __init__(self, base: nn.Linear, target: str, r: int, alpha: float, dropout: float = 0.0, init: str = "kaiming"):
        nn.Module.__init__(self)
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight, self.bias = base.weight, base.bias
        _check_rank(r, self.in_features, self.out_features, target)
        self.targets, self.r, self.alpha, self.scaling = (target,), r, alpha, alpha / r
        like = {"device": self.weight.device, "dtype": self.weight.dtype}
        self.lora_A = nn.Parameter(torch.zeros(r, self.in_features, **like))
        self.lora_B = nn.Parameter(torch.zeros(self.out_features, r, **like))
        _init_A(self.lora_A, r, init)
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.merged = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = nn.functional.linear(x, self.weight, self.bias)                       # W0 x + b
        if self.merged:
            return h
        return h + self.scaling * (self.lora_dropout(x) @ self.lora_A.T @ self.lora_B.T)   # + (alpha/r) B A x

    def delta_weights(self) -> dict[str, torch.Tensor]:
        return {self.targets[0]: self.scaling * (self.lora_B.float() @ self.lora_A.float())}

    def _fold(self, sign: int) -> None:
        """W += sign (alpha/r) B A, in fp32."""
        with torch.no_grad():
            _add_in_fp32(self.weight, sign * self.delta_weights()[self.targets[0]])

    def extra_repr(self) -> str:
        return f"{self.in_features}, {self.out_features}, target={self.targets[0]}, r={self.r}, alpha={self.alpha}"


class LoRAConv1D(Conv1D):
    """transformers Conv1D (h = x W + b, W stored d_in × d_out, i.e. fan_in_fan_out) whose output columns are split into
    `parts` (GPT-2 c_attn: q | k | v); each part in `targets` gets its own rank-r pair, the others no update:
    h = x W0 + b + concat_part[(alpha/r) · dropout(x) A_partᵀ B_partᵀ  or 0]   (loralib MergedLinear)."""

    def __init__(self, base: Conv1D, parts: tuple[str, ...], targets: list[str], r: int, alpha: float,
                 dropout: float = 0.0, init: str = "kaiming"):
        nn.Module.__init__(self)
        self.nf, self.nx = base.nf, base.nx
        self.weight, self.bias = base.weight, base.bias
        self.parts, self.targets = tuple(parts), tuple(t for t in parts if t in targets)
        self.d_part = self.nf // len(parts)
        _check_rank(r, self.nx, self.d_part, "/".join(self.targets))
        self.r, self.alpha, self.scaling = r, alpha, alpha / r
        like = {"device": self.weight.device, "dtype": self.weight.dtype}
        self.lora_A = nn.ParameterDict({t: nn.Parameter(torch.zeros(r, self.nx, **like)) for t in self.targets})
        self.lora_B = nn.ParameterDict({t: nn.Parameter(torch.zeros(self.d_part, r, **like)) for t in self.targets})
        for t in self.targets:
            _init_A(self.lora_A[t], r, init)
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.merged = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = super().forward(x)                                                     # x W0 + b
        if self.merged:
            return h
        xd = self.lora_dropout(x)
        zero = h.new_zeros(*h.shape[:-1], self.d_part)
        update = [self.scaling * (xd @ self.lora_A[t].T @ self.lora_B[t].T) if t in self.targets else zero
                  for t in self.parts]
        return h + torch.cat(update, dim=-1)

    def delta_weights(self) -> dict[str, torch.Tensor]:
        """{target: (alpha/r) B A} in the paper's orientation (d_part × d_in), fp32."""
        return {t: self.scaling * (self.lora_B[t].float() @ self.lora_A[t].float()) for t in self.targets}

    def _fold(self, sign: int) -> None:
        """W[:, block] += sign (alpha/r) (B A)ᵀ for each adapted block, computed as Aᵀ Bᵀ (Conv1D stores Wᵀ) in fp32."""
        with torch.no_grad():
            for t in self.targets:
                lo = self.parts.index(t) * self.d_part
                update = (sign * self.scaling) * (self.lora_A[t].float().T @ self.lora_B[t].float().T)
                _add_in_fp32(self.weight[:, lo:lo + self.d_part], update)

    def extra_repr(self) -> str:
        return f"nf={self.nf}, nx={self.nx}, parts={self.parts}, targets={self.targets}, r={self.r}, alpha={self.alpha}"


LORA_LAYERS = (LoRALinear, LoRAConv1D)


def apply_lora(model: nn.Module, cfg: DictConfig) -> nn.Module:
    """Freeze everything but the task head, then give every target matrix of every block its (A, B) pair."""
    freeze_all_but_head(model)
    fused = FUSED_QKV.get(model_type(model))
    for parent, attr, i, targets in find_targets(model, list(cfg.targets)):
        base = getattr(parent, attr)
        where = f"layer {i} {attr}"
        if isinstance(base, LORA_LAYERS):
            raise CellMismatch(f"{where} already carries LoRA")
        if isinstance(base, nn.Linear):
            new = LoRALinear(base, targets[0], cfg.r, cfg.alpha, cfg.get("dropout", 0.0), cfg.get("init", "kaiming"))
        elif isinstance(base, Conv1D):
            parts = fused[1] if fused and attr == fused[0].split(".")[-1] else tuple(targets)
            new = LoRAConv1D(base, parts, targets, cfg.r, cfg.alpha, cfg.get("dropout", 0.0), cfg.get("init", "kaiming"))
        else:
            raise CellMismatch(f"{where} is a {type(base).__name__}; LoRA adapts nn.Linear or Conv1D only")
        setattr(parent, attr, new)
    return model


def delta_weight(module: nn.Module) -> torch.Tensor | dict[str, torch.Tensor]:
    """ΔW = (alpha/r) B A in fp32, d_out × d_in: a Tensor for LoRALinear, {target: Tensor} for a Conv1D module."""
    dws = module.delta_weights()
    return next(iter(dws.values())) if isinstance(module, LoRALinear) else dws


def lora_modules(model: nn.Module):
    """Yield (qualified name, layer index, module) for every LoRA module, bottom block first."""
    for name, module in model.named_modules():
        if isinstance(module, LORA_LAYERS):
            layer = next(int(p) for p in name.split(".") if p.isdigit())
            yield name, layer, module


def delta_weights(model: nn.Module):
    """Yield (layer index, target, ΔW) for every adapted weight matrix (ΔW: d_out × d_in, fp32)."""
    for _, layer, module in lora_modules(model):
        for target, dw in module.delta_weights().items():
            yield layer, target, dw


def merge(model: nn.Module) -> nn.Module:
    """W <- W0 + (alpha/r) B A in every LoRA module (fp32, cast back); the forward then skips the LoRA path."""
    for _, _, m in lora_modules(model):
        if not m.merged:
            m._fold(+1)
            m.merged = True
    return model


def unmerge(model: nn.Module) -> nn.Module:
    """W <- W - (alpha/r) B A: undoes `merge`."""
    for _, _, m in lora_modules(model):
        if m.merged:
            m._fold(-1)
            m.merged = False
    return model


@contextmanager
def merged(model: nn.Module):
    """with merged(model): ...  -- zero-latency inference (Section 4.1), unmerged again on exit."""
    merge(model)
    try:
        yield model
    finally:
        unmerge(model)
