"""LoRA (Hu et al. 2021, Section 4.1, Eq. 3): h = W0 x + ΔW x = W0 x + (alpha / r) * B A x, and its small variants.

W0 is frozen; A (r × d_in) starts random, B (d_out × r) starts at zero, so ΔW = 0 and the adapted model equals the
pre-trained one at step 0. Only the matrices named in `targets` (Section 4.2: W_q, W_v in most experiments; or
`all_linear`, every linear layer of each block, see targets.py) get a pair (A, B); the task head (GLUE classifier,
DeBERTa/BERT pooler) is trained too but is not counted in |Θ|.

Variants that are options of this module (their method configs: conf/method/{rslora,pissa}.yaml):
* rsLoRA (`rslora: true`): scaling γ_r = alpha / √r instead of alpha / r (Kalajdzievski 2023), see `lora_scaling`.
* PiSSA (`init: pissa`, Meng et al. 2024): A, B from the top-r SVD of W, the frozen weight becomes the residual
  W_res = W − (alpha/r) B0 A0; see `_pissa_init`. ΔW relative to the pretrained W is (alpha/r)(B A − B0 A0).
DoRA (a magnitude vector on top of this module) lives in repro/methods/dora.py.

Tensor keys (checkpoints and `state_dict`) -- the analysis module relies on them:

* a plain nn.Linear (RoBERTa/BERT `query`/`value`, DeBERTa-v2 `query_proj`/`value_proj`, Llama `q_proj`, ...) keeps
  its own key and gets two more, as in loralib:  `<module>.weight` (W0), `<module>.lora_A` (r × d_in),
  `<module>.lora_B` (d_out × r).
* GPT-2's fused `attn.c_attn` (transformers Conv1D: weight stored (d_in, 3·d_model), i.e. transposed, q|k|v column
  blocks) gets one independent rank-r pair per adapted projection, as loralib's
  `MergedLinear(enable_lora=[True, False, True], fan_in_fan_out=True)`: `<...>.c_attn.lora_A.q`, `.lora_B.q`,
  `.lora_A.v`, `.lora_B.v`; W_k gets no update. Other GPT-2 Conv1D targets use the same layout with one part
  (`attn.c_proj.lora_A.o`, `mlp.c_fc.lora_A.mlp_in`, `mlp.c_proj.lora_A.mlp_out`).

`delta_weight(module)` returns ΔW (relative to the pretrained W) in fp32 in the paper's orientation (d_out × d_in,
so h = ΔW x): a Tensor for a plain Linear, a dict {target: Tensor} for a Conv1D module (GPT-2: {"q": ΔW_q, ...}).
`delta_weights(model)` yields (layer index, target, ΔW) for every adapted matrix of a model, for every variant.
A module's `factored` says whether ΔW = scaling · B A exactly (LoRA, rsLoRA), i.e. whether (A, B, scaling) alone,
as repro.analysis.factors reads them from a checkpoint, give ΔW.

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
from repro.methods.adalora import delta_weights as adalora_delta_weights
from repro.methods.common import freeze_all_but_head
from repro.methods.targets import FUSED_QKV, find_targets, model_type


@dataclass
class LoRAConfig:
    """conf/method/lora.yaml (rslora.yaml, pissa.yaml, lora_all_linear.yaml: the same fields)."""

    r: int = 8
    alpha: float = 8  # scaling alpha / r (Section 4.1), or alpha / √r with rslora
    dropout: float = 0.0  # on the LoRA path only (Table 11: 0.1 for E2E/WebNLG; NLU scripts: 0)
    targets: list[str] | str = field(default_factory=lambda: ["q", "v"])  # or "all_linear"
    init: str = "kaiming"  # A: loralib's kaiming_uniform(a=sqrt 5), "gaussian" N(0, 1/r) (the paper's text),
    # or "pissa" (A, B from W's top-r SVD; W0 <- the residual)
    rslora: bool = False  # scaling alpha / √r (Kalajdzievski 2023)


INITS = ("kaiming", "gaussian", "pissa")


def lora_scaling(alpha: float, r: int, rslora: bool = False) -> float:
    """γ_r in h = W0 x + γ_r · B A x.

    LoRA (Hu et al. 2021, Eq. 3):   γ_r = alpha / r.
    rsLoRA (Kalajdzievski 2023, "A Rank Stabilization Scaling Factor for Fine-Tuning with LoRA", Sec. 3):
                                    γ_r = alpha / √r  -- the scaling γ_r ∈ Θ(1/√r) under which the adapter's outputs and
    gradients stay Θ(1) as r grows, so that a larger rank keeps learning (with alpha / r they vanish as 1/√r)."""
    return alpha / math.sqrt(r) if rslora else alpha / r


def _check_rank(r: int, d_in: int, d_out: int, where: str) -> None:
    if not isinstance(r, int) or not 0 < r <= min(d_in, d_out):
        raise CellMismatch(f"LoRA rank r={r} at {where}: must satisfy 0 < r <= min(d_in, d_out) = {min(d_in, d_out)}")


def _init_A(A: torch.Tensor, r: int, init: str) -> None:
    if init == "kaiming" or init == "pissa":  # pissa: overwritten by _pissa_init
        nn.init.kaiming_uniform_(A, a=math.sqrt(5))  # loralib.Linear.reset_parameters
    elif init == "gaussian":
        nn.init.normal_(A, std=1 / r)  # "random Gaussian initialization for A" (Section 4.1)
    else:
        raise CellMismatch(f"method.init={init!r}; allowed: {', '.join(INITS)}")


def _add_in_fp32(weight: torch.Tensor, update: torch.Tensor) -> None:
    """weight += update (an fp32 ΔW), in place; a weight of lower precision is summed in fp32 and cast back."""
    if weight.dtype == torch.float32:
        weight.add_(update)
    else:
        weight.copy_((weight.float() + update).to(weight.dtype))


class _LoRAMath:
    """What every LoRA module shares, written once per target t in the paper's (d_out × d_in) orientation:
    `w0(t)` is a view of the frozen weight of t, `lora_AB(t)` its (A, B)."""

    def update(self, t: str) -> torch.Tensor:
        """(alpha/r) B A (or alpha/√r B A), fp32, d_out × d_in: what the LoRA path adds to W0."""
        A, B = self.lora_AB(t)
        return self.scaling * (B.float() @ A.float())

    def pretrained_factors(self, t: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(A', B'), fp32, with ΔW relative to the *pretrained* W = scaling · B' A' exactly: (A, B) for LoRA and rsLoRA;
        for PiSSA, whose frozen W0 is the residual W − s B0 A0, the rank-2r pair A' = [A; A0], B' = [B, −B0]
        (PEFT's conversion of a PiSSA adapter into a LoRA on the original W, `path_initial_model_for_weight_conversion`).
        What serving on the plain pretrained model (repro.serve) and the PEFT export (repro.export) start from."""
        A, B = (x.float() for x in self.lora_AB(t))
        if self.init != "pissa":
            return A, B
        A0, B0 = getattr(self, f"pissa_A0_{t}"), getattr(self, f"pissa_B0_{t}")
        return torch.cat([A, A0.float()], 0), torch.cat([B, -B0.float()], 1)

    def delta_weights(self) -> dict[str, torch.Tensor]:
        """{target: ΔW} relative to the pretrained W; PiSSA: (alpha/r)(B A − B0 A0), since W0 here is W_res."""
        out = {}
        for t in self.targets:
            A, B = self.pretrained_factors(t)
            out[t] = self.scaling * (B @ A)
        return out

    @property
    def factored(self) -> bool:
        return self.init != "pissa"

    def _fold(self, sign: int) -> None:
        """W0 += sign (alpha/r) B A for each target, in fp32."""
        with torch.no_grad():
            for t in self.targets:
                _add_in_fp32(self.w0(t), sign * self.update(t))

    def _pissa_init(self) -> None:
        """PiSSA (Meng et al. 2024, Sec. 3): W = U S Vᵀ; A = √(S_r/γ) V_rᵀ, B = U_r √(S_r/γ) (so γ B A is the top-r part
        of W), and the frozen weight becomes W_res = W − γ B A. The model is unchanged at init: W_res + γ B A = W.
        (PEFT's init_lora_weights="pissa": the full SVD, in fp32.) B0, A0 are kept (buffers) for ΔW."""
        if self.weight.is_meta:  # repro.params counts on the meta device: shapes only
            return
        with torch.no_grad():
            for t in self.targets:
                W = self.w0(t).float()
                U, S, Vh = torch.linalg.svd(W, full_matrices=False)
                sr = torch.sqrt(S[: self.r] / self.scaling)
                A, B = sr[:, None] * Vh[: self.r], U[:, : self.r] * sr[None, :]
                A_, B_ = self.lora_AB(t)
                A_.copy_(A), B_.copy_(B)
                self.register_buffer(f"pissa_A0_{t}", A.clone(), persistent=False)
                self.register_buffer(f"pissa_B0_{t}", B.clone(), persistent=False)
                self.w0(t).copy_((W - self.scaling * (B @ A)).to(self.weight.dtype))


class LoRALinear(_LoRAMath, nn.Linear):
    """nn.Linear with h = W0 x + b + (alpha/r) · B A dropout(x). W0 and b are the base layer's own Parameters."""

    def __init__(
        self,
        base: nn.Linear,
        target: str,
        r: int,
        alpha: float,
        dropout: float = 0.0,
        init: str = "kaiming",
        rslora: bool = False,
    ):
        nn.Module.__init__(self)
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight, self.bias = base.weight, base.bias
        _check_rank(r, self.in_features, self.out_features, target)
        self.targets, self.r, self.alpha, self.rslora = (target,), r, alpha, rslora
        self.scaling, self.init = lora_scaling(alpha, r, rslora), init
        like = {"device": self.weight.device, "dtype": self.weight.dtype}
        self.lora_A = nn.Parameter(torch.zeros(r, self.in_features, **like))
        self.lora_B = nn.Parameter(torch.zeros(self.out_features, r, **like))
        _init_A(self.lora_A, r, init)
        if init == "pissa":
            self._pissa_init()
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.merged = False

    def w0(self, t: str) -> torch.Tensor:
        return self.weight

    def lora_AB(self, t: str) -> tuple[torch.Tensor, torch.Tensor]:
        return self.lora_A, self.lora_B

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = nn.functional.linear(x, self.weight, self.bias)  # W0 x + b
        if self.merged:
            return h
        return h + self.scaling * (self.lora_dropout(x) @ self.lora_A.T @ self.lora_B.T)  # + (alpha/r) B A x

    def extra_repr(self) -> str:
        return (
            f"{self.in_features}, {self.out_features}, target={self.targets[0]}, r={self.r}, alpha={self.alpha}, "
            f"scaling={self.scaling:.4g}, init={self.init}"
        )


class LoRAConv1D(_LoRAMath, Conv1D):
    """transformers Conv1D (h = x W + b, W stored d_in × d_out, i.e. fan_in_fan_out) whose output columns are split into
    `parts` (GPT-2 c_attn: q | k | v); each part in `targets` gets its own rank-r pair, the others no update:
    h = x W0 + b + concat_part[(alpha/r) · dropout(x) A_partᵀ B_partᵀ  or 0]   (loralib MergedLinear)."""

    def __init__(
        self,
        base: Conv1D,
        parts: tuple[str, ...],
        targets: list[str],
        r: int,
        alpha: float,
        dropout: float = 0.0,
        init: str = "kaiming",
        rslora: bool = False,
    ):
        nn.Module.__init__(self)
        self.nf, self.nx = base.nf, base.nx
        self.weight, self.bias = base.weight, base.bias
        self.parts, self.targets = tuple(parts), tuple(t for t in parts if t in targets)
        self.d_part = self.nf // len(parts)
        _check_rank(r, self.nx, self.d_part, "/".join(self.targets))
        self.r, self.alpha, self.rslora = r, alpha, rslora
        self.scaling, self.init = lora_scaling(alpha, r, rslora), init
        like = {"device": self.weight.device, "dtype": self.weight.dtype}
        self.lora_A = nn.ParameterDict({t: nn.Parameter(torch.zeros(r, self.nx, **like)) for t in self.targets})
        self.lora_B = nn.ParameterDict({t: nn.Parameter(torch.zeros(self.d_part, r, **like)) for t in self.targets})
        for t in self.targets:
            _init_A(self.lora_A[t], r, init)
        if init == "pissa":
            self._pissa_init()
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.merged = False

    def w0(self, t: str) -> torch.Tensor:
        """W0 of part t as a (d_part × d_in) view of the stored (d_in × nf) weight (writes go through)."""
        lo = self.parts.index(t) * self.d_part
        return self.weight[:, lo : lo + self.d_part].T

    def lora_AB(self, t: str) -> tuple[torch.Tensor, torch.Tensor]:
        return self.lora_A[t], self.lora_B[t]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = super().forward(x)  # x W0 + b
        if self.merged:
            return h
        xd = self.lora_dropout(x)
        zero = h.new_zeros(*h.shape[:-1], self.d_part)
        update = [
            self.scaling * (xd @ self.lora_A[t].T @ self.lora_B[t].T) if t in self.targets else zero for t in self.parts
        ]
        return h + torch.cat(update, dim=-1)

    def extra_repr(self) -> str:
        return (
            f"nf={self.nf}, nx={self.nx}, parts={self.parts}, targets={self.targets}, r={self.r}, "
            f"alpha={self.alpha}, scaling={self.scaling:.4g}, init={self.init}"
        )


LORA_LAYERS = (LoRALinear, LoRAConv1D)


def replace_targets(model: nn.Module, cfg: DictConfig, linear_cls=None, conv_cls=None) -> nn.Module:
    """Freeze everything but the task head, then give every target matrix of every block its LoRA module
    (`linear_cls` / `conv_cls`: LoRALinear / LoRAConv1D or a variant's subclasses, same constructor)."""
    linear_cls, conv_cls = linear_cls or LoRALinear, conv_cls or LoRAConv1D
    freeze_all_but_head(model)
    fused = FUSED_QKV.get(model_type(model))
    kw = {
        "dropout": cfg.get("dropout", 0.0),
        "init": cfg.get("init", "kaiming"),
        "rslora": bool(cfg.get("rslora", False)),
    }
    targets = cfg.targets if isinstance(cfg.targets, str) else list(cfg.targets)
    for parent, attr, i, ts in find_targets(model, targets):
        base = getattr(parent, attr)
        where = f"layer {i} {attr}"
        if isinstance(base, LORA_LAYERS):
            raise CellMismatch(f"{where} already carries LoRA")
        if isinstance(base, nn.Linear):
            new = linear_cls(base, ts[0], cfg.r, cfg.alpha, **kw)
        elif isinstance(base, Conv1D):
            parts = fused[1] if fused and attr == fused[0].split(".")[-1] else tuple(ts)
            new = conv_cls(base, parts, ts, cfg.r, cfg.alpha, **kw)
        else:
            raise CellMismatch(f"{where} is a {type(base).__name__}; LoRA adapts nn.Linear or Conv1D only")
        setattr(parent, attr, new)
    return model


def apply_lora(model: nn.Module, cfg: DictConfig) -> nn.Module:
    """LoRA, rsLoRA (`rslora: true`), PiSSA (`init: pissa`), on `targets` (a list, or `all_linear`)."""
    if cfg.name == "rslora" and not cfg.get("rslora", False):
        raise CellMismatch("method rslora needs rslora: true")
    if cfg.name == "pissa" and cfg.get("init") != "pissa":
        raise CellMismatch("method pissa needs init: pissa")
    return replace_targets(model, cfg)


def delta_weight(module: nn.Module) -> torch.Tensor | dict[str, torch.Tensor]:
    """ΔW (LoRA: (alpha/r) B A) in fp32, d_out × d_in: a Tensor for LoRALinear, {target: Tensor} for a Conv1D module."""
    dws = module.delta_weights()
    return next(iter(dws.values())) if isinstance(module, LoRALinear) else dws


def lora_modules(model: nn.Module):
    """Yield (qualified name, layer index, module) for every LoRA module, bottom block first."""
    for name, module in model.named_modules():
        if isinstance(module, _LoRAMath):  # LoRA, rsLoRA, PiSSA, DoRA, QLoRA modules
            layer = next(int(p) for p in name.split(".") if p.isdigit())
            yield name, layer, module


def delta_weights(model: nn.Module):
    """Yield (layer index, target, ΔW) for every adapted weight matrix (ΔW: d_out × d_in, fp32), any LoRA variant
    (AdaLoRA's PEFT modules included)."""
    if hasattr(model, "_adalora_tuner"):
        yield from adalora_delta_weights(model)
        return
    for _, layer, module in lora_modules(model):
        for target, dw in module.delta_weights().items():
            yield layer, target, dw


def merge(model: nn.Module) -> nn.Module:
    """W <- W0 + (alpha/r) B A in every LoRA module (DoRA: m ⊙ (W0 + s B A)/‖·‖_row), in fp32, cast back; the forward
    then skips the LoRA path."""
    for _, _, m in lora_modules(model):
        if not m.merged:
            m._fold(+1)
            m.merged = True
    return model


def unmerge(model: nn.Module) -> nn.Module:
    """Undoes `merge` (LoRA: W <- W - (alpha/r) B A)."""
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
