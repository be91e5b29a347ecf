"""DoRA (Liu et al. 2024, "DoRA: Weight-Decomposed Low-Rank Adaptation", Eq. 5):

    W' = m ⊙ (W0 + s B A) / ‖W0 + s B A‖_row,        h = W' x + b,        s = alpha / r (or alpha/√r with rslora)

the pretrained weight split into a magnitude m (one entry per output row, d_out) and a direction (W0 + s B A, each row
normalised), LoRA on the direction. m is trained and initialised to the row norms of W0, so W' = W0 at init (B = 0).
The norm is computed from W0 + s B A with B A detached and is itself detached from the graph (the paper's Sec. 4.3,
"treat ‖V + ΔV‖_c as a constant"; PEFT's `use_dora` does the same), so with n = m / ‖W0 + s B A‖_row the forward is

    h = W0 x + (n − 1) ⊙ W0 dropout(x) + n ⊙ s B A dropout(x) + b

as the DoRA authors' code (nbasyl/DoRA, `dora.py` Linear.forward) and PEFT's `use_dora` write it: the LoRA dropout
enters the magnitude's rescaling of W0 x as well as the LoRA path. Without dropout (eval, or dropout 0) it is
n ⊙ (W0 x + s B A x) + b, Eq. 5 applied to x.

"Row" is one output unit: dim 1 of the (d_out × d_in) weight (GPT-2's Conv1D stores Wᵀ: per column there, per part of
the fused c_attn). Keys: `<module>.lora_magnitude` (d_out), or `<module>.lora_magnitude.<part>` for a Conv1D.
ΔW for the analysis is W' − W0 (not s B A; `factored` is False). merge: W0 <- W'; unmerge uses the norm kept at merge.
"""

from __future__ import annotations

import torch
from omegaconf import DictConfig
from torch import nn

from repro.errors import CellMismatch
from repro.methods.lora import LoRAConv1D, LoRALinear, _add_in_fp32, replace_targets


class _DoRAMath:
    def _init_magnitude(self) -> None:
        """m = ‖W0‖_row for every target: `lora_magnitude` (Linear) or `lora_magnitude.<part>` (Conv1D)."""
        m = {t: nn.Parameter(self._row_norm(self.w0(t).float()).to(self.weight.dtype)) for t in self.targets}
        self.lora_magnitude = m[self.targets[0]] if isinstance(self, LoRALinear) else nn.ParameterDict(m)
        self._merge_norm: dict[str, torch.Tensor] = {}

    @staticmethod
    def _row_norm(W: torch.Tensor) -> torch.Tensor:
        return torch.linalg.norm(W, dim=1)

    def _dropout_active(self) -> bool:
        return self.training and isinstance(self.lora_dropout, nn.Dropout) and self.lora_dropout.p > 0

    def magnitude(self, t: str) -> torch.Tensor:
        return self.lora_magnitude if isinstance(self.lora_magnitude, nn.Parameter) else self.lora_magnitude[t]

    def norm_scale(self, t: str) -> torch.Tensor:
        """m / ‖W0 + s B A‖_row, detached norm (d_out)."""
        with torch.no_grad():
            norm = self._row_norm(self.w0(t).float() + self.update(t))
        return self.magnitude(t) / norm.to(self.magnitude(t).dtype)

    def merged_weight(self, t: str) -> torch.Tensor:
        """W' = m ⊙ (W0 + s B A) / ‖W0 + s B A‖_row, fp32, d_out × d_in (W0 = the unmerged frozen weight)."""
        V = self.w0(t).float() + self.update(t)
        return (self.magnitude(t).float() / self._row_norm(V))[:, None] * V

    def delta_weights(self) -> dict[str, torch.Tensor]:
        """{target: W' − W0}, fp32 (W0 as currently stored must be the unmerged one)."""
        if self.merged:
            raise RuntimeError("DoRA ΔW of a merged module: unmerge first")
        return {t: self.merged_weight(t) - self.w0(t).float() for t in self.targets}

    @property
    def factored(self) -> bool:
        return False

    def _fold(self, sign: int) -> None:
        """merge: W0 <- W'; unmerge: W0 = W' ⊙ ‖W0 + s B A‖_row / m − s B A (the norm kept at merge time)."""
        with torch.no_grad():
            for t in self.targets:
                if sign > 0:
                    V = self.w0(t).float() + self.update(t)
                    self._merge_norm[t] = self._row_norm(V)
                    _add_in_fp32(self.w0(t), self.merged_weight(t) - self.w0(t).float())
                else:
                    norm = self._merge_norm.pop(t)
                    W0 = self.w0(t).float() * (norm / self.magnitude(t).float())[:, None] - self.update(t)
                    _add_in_fp32(self.w0(t), W0 - self.w0(t).float())


class DoRALinear(_DoRAMath, LoRALinear):
    """h = W0 x + (n − 1) ⊙ W0 dropout(x) + n ⊙ s B A dropout(x) + b,  n = m / ‖W0 + s B A‖_row."""

    def __init__(self, base: nn.Linear, target: str, r: int, alpha: float, **kw):
        super().__init__(base, target, r, alpha, **kw)
        self._init_magnitude()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.merged:
            return nn.functional.linear(x, self.weight, self.bias)
        n = self.norm_scale(self.targets[0])
        Wx = nn.functional.linear(x, self.weight)  # W0 x
        xd = self.lora_dropout(x)
        Wxd = nn.functional.linear(xd, self.weight) if self._dropout_active() else Wx  # W0 dropout(x)
        BAx = self.scaling * (xd @ self.lora_A.T @ self.lora_B.T)  # s B A dropout(x)
        h = Wx + (n - 1) * Wxd + n * BAx
        return h if self.bias is None else h + self.bias


class DoRAConv1D(_DoRAMath, LoRAConv1D):
    """Per adapted part t of the output columns, n_t = m_t / ‖W0_t + s B_t A_t‖_row and x' = dropout(x):
    h_t = x W0_t + (n_t − 1) ⊙ x' W0_t + n_t ⊙ s x' A_tᵀ B_tᵀ + b_t; parts without a target (GPT-2's k) stay x W0_t + b_t."""

    def __init__(self, base, parts, targets, r: int, alpha: float, **kw):
        super().__init__(base, parts, targets, r, alpha, **kw)
        self._init_magnitude()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = super(LoRAConv1D, self).forward(x)  # x W0 + b (Conv1D)
        if self.merged:
            return h
        xd = self.lora_dropout(x)
        xd_W = xd @ self.weight if self._dropout_active() else None  # x' W0, every part (no bias)
        out = []
        for i, t in enumerate(self.parts):
            cols = slice(i * self.d_part, (i + 1) * self.d_part)
            h_t = h[..., cols]
            if t not in self.targets:
                out.append(h_t)
                continue
            Wx = h_t if self.bias is None else h_t - self.bias[cols]  # x W0_t
            Wxd = Wx if xd_W is None else xd_W[..., cols]
            n = self.norm_scale(t)
            BAx = self.scaling * (xd @ self.lora_A[t].T @ self.lora_B[t].T)
            out.append(h_t + (n - 1) * Wxd + n * BAx)
        return torch.cat(out, dim=-1)


def apply_dora(model: nn.Module, cfg: DictConfig) -> nn.Module:
    """DoRA on `targets` (a list or all_linear): LoRA's A, B plus a trained magnitude per output row."""
    if cfg.get("init") == "pissa":
        raise CellMismatch("DoRA with init: pissa is not implemented; init: kaiming or gaussian")
    return replace_targets(model, cfg, DoRALinear, DoRAConv1D)
