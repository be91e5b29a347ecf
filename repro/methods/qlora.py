"""QLoRA (Dettmers et al. 2023, Sec. 3): the frozen base held in 4-bit NormalFloat (NF4), LoRA on top in fp32:

    Y = dequant(W_NF4) X + s · B A X,        s = alpha / r (alpha / √r with rslora),

with W_NF4 quantized block-wise (64 weights per block share an absmax; NF4's 16 levels are the quantiles of N(0, 1)
scaled to [-1, 1]); double quantization (`double_quant`) quantizes the absmaxes too. The quantization is bitsandbytes'
(the official package, CPU backend): every linear layer of each block becomes a `bnb.nn.Linear4bit` computing in
`compute_dtype` (float32 or bfloat16); embeddings, LayerNorms and the task head stay in fp32. LoRA goes on `targets`
(QLoRA's recipe: all_linear) as a `QLoRALinear` around the 4-bit layer: keys `<module>.lora_A`, `<module>.lora_B`
(the base weight at `<module>.base_layer.weight`), ΔW = s B A as for LoRA (the analysis reads it from the factors).

Traps (shared/research/variants.md): on CPUs with avx512_bf16, the first eval-mode no-grad forward of a Linear4bit
repacks its weight in place into a CPU layout, after which dequantization is wrong and training loses autograd; so
`support_avx512bf16_for_cpu = False` on every Linear4bit. And bitsandbytes 0.50.2's CPU NF4 quantizes wrongly when a
layer's d_in is not a multiple of the 64-weight block (measured: 17-37% relative error instead of ~9%, the values no
longer the nearest NF4 level of their block; real models' 576, 768, 1024, ... are fine): such layers are refused. Merging into a 4-bit weight re-quantizes it: `merge` is
refused; `dequantized(model)` gives an fp32 copy (nn.Linear over dequant(W_NF4), LoRALinear on top) to merge or analyse.
GPT-2's Conv1D is not converted here (refused). PiSSA and DoRA over the 4-bit base are not offered.
"""

from __future__ import annotations

import copy

import torch
from omegaconf import DictConfig
from torch import nn

from repro.errors import CellMismatch
from repro.methods.common import freeze_all_but_head
from repro.methods.lora import LoRALinear, _check_rank, _init_A, _LoRAMath, lora_scaling, replace_targets
from repro.methods.targets import ALL_LINEAR, blocks, find_targets, model_type

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
BLOCK = 64  # weights per absmax (bitsandbytes' 4-bit blocksize)


def _bnb():
    import bitsandbytes as bnb  # optional (pip install .[qlora]); logs a failed optional `kernels` load: harmless

    return bnb


def to_4bit(
    linear: nn.Linear, quant_type: str = "nf4", double_quant: bool = True, compute_dtype: torch.dtype = torch.float32
) -> nn.Module:
    """A frozen bnb Linear4bit holding `linear`'s weight quantized (bias kept in fp32), never repacked for the CPU."""
    bnb = _bnb()
    if linear.in_features % BLOCK:
        raise CellMismatch(
            f"qlora: d_in={linear.in_features} is not a multiple of {BLOCK}; bitsandbytes' CPU NF4 "
            "quantizes such layers wrongly"
        )
    q = bnb.nn.Linear4bit(
        linear.in_features,
        linear.out_features,
        bias=linear.bias is not None,
        compute_dtype=compute_dtype,
        quant_type=quant_type,
        compress_statistics=double_quant,
        device="cpu",
    )
    q.weight = bnb.nn.Params4bit(
        linear.weight.data.detach().float().cpu().clone(),
        requires_grad=False,
        quant_type=quant_type,
        compress_statistics=double_quant,
    )
    if linear.bias is not None:
        q.bias = nn.Parameter(linear.bias.data.detach().clone(), requires_grad=False)
    q = q.to("cpu")  # quantizes
    q.support_avx512bf16_for_cpu = False  # the repacking trap
    return q


def dequantize_weight(module: nn.Module) -> torch.Tensor:
    """dequant(W_NF4), fp32, d_out × d_in."""
    w = module.weight
    return _bnb().functional.dequantize_4bit(w.data, w.quant_state).float()


def is_4bit(module: nn.Module) -> bool:
    return type(module).__name__ == "Linear4bit"


class QLoRALinear(_LoRAMath, nn.Module):
    """h = base_layer(x) + s · B A dropout(x): base_layer a frozen Linear4bit (dequant(W_NF4) x + b), A, B in fp32."""

    def __init__(
        self,
        base: nn.Module,
        target: str,
        r: int,
        alpha: float,
        dropout: float = 0.0,
        init: str = "kaiming",
        rslora: bool = False,
    ):
        super().__init__()
        if init == "pissa":
            raise CellMismatch("qlora: init pissa is not offered over a 4-bit base")
        self.in_features, self.out_features = base.in_features, base.out_features
        self.base_layer = base
        _check_rank(r, self.in_features, self.out_features, target)
        self.targets, self.r, self.alpha, self.rslora = (target,), r, alpha, rslora
        self.scaling, self.init = lora_scaling(alpha, r, rslora), init
        device = base.weight.device
        self.lora_A = nn.Parameter(torch.zeros(r, self.in_features, device=device))
        self.lora_B = nn.Parameter(torch.zeros(self.out_features, r, device=device))
        _init_A(self.lora_A, r, init)
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.merged = False

    def w0(self, t: str) -> torch.Tensor:
        """dequant(W_NF4) (a copy, fp32): the weight the LoRA path is added to."""
        return dequantize_weight(self.base_layer) if is_4bit(self.base_layer) else self.base_layer.weight.float()

    def lora_AB(self, t: str):
        return self.lora_A, self.lora_B

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.base_layer(x)  # dequant(W) x + b
        return h + self.scaling * (self.lora_dropout(x) @ self.lora_A.T @ self.lora_B.T).to(h.dtype)  # + s B A x

    def _fold(self, sign: int) -> None:
        raise CellMismatch("merging into a 4-bit weight re-quantizes it: merge into `dequantized(model)` instead")


def apply_qlora(model: nn.Module, cfg: DictConfig) -> nn.Module:
    """Quantize every linear layer of each block to 4 bits (frozen), then LoRA on `targets` over the 4-bit layers."""
    mt = model_type(model)
    if mt == "gpt2":
        raise CellMismatch("qlora: GPT-2's Conv1D layers are not converted to 4 bits here; use an nn.Linear model")
    if cfg.get("compute_dtype", "float32") not in DTYPES or cfg.get("quant_type", "nf4") not in ("nf4", "fp4"):
        raise CellMismatch(f"qlora: compute_dtype in {list(DTYPES)}, quant_type in [nf4, fp4]")
    freeze_all_but_head(model)
    if not next(model.parameters()).is_meta:  # repro.params counts on the meta device: shapes only
        for parent, attr, _, _ in find_targets(model, ALL_LINEAR[mt]):
            setattr(
                parent,
                attr,
                to_4bit(
                    getattr(parent, attr),
                    cfg.get("quant_type", "nf4"),
                    bool(cfg.get("double_quant", True)),
                    DTYPES[cfg.get("compute_dtype", "float32")],
                ),
            )
    return replace_targets(model, cfg, QLoRALinear)


def dequantized(model: nn.Module) -> nn.Module:
    """An fp32 copy: each Linear4bit -> nn.Linear(dequant(W_NF4)), each QLoRALinear -> LoRALinear with the same A, B
    (merge, analysis, and the reference for QLoRA's gradients)."""
    out = copy.deepcopy(model)

    def fp32_linear(q):
        lin = nn.Linear(q.in_features, q.out_features, bias=q.bias is not None)
        lin.weight = nn.Parameter(dequantize_weight(q), requires_grad=False)
        if q.bias is not None:
            lin.bias = nn.Parameter(q.bias.detach().float().clone(), requires_grad=False)
        return lin

    for block in blocks(out):
        for name, module in list(block.named_modules()):
            parent, _, attr = name.rpartition(".")
            holder = block.get_submodule(parent) if parent else block
            if isinstance(module, QLoRALinear):
                base = fp32_linear(module.base_layer) if is_4bit(module.base_layer) else module.base_layer
                new = LoRALinear(base, module.targets[0], module.r, module.alpha, init="kaiming", rslora=module.rslora)
                new.lora_A, new.lora_B, new.lora_dropout = module.lora_A, module.lora_B, module.lora_dropout
                setattr(holder, attr, new)
            elif is_4bit(module) and not isinstance(holder, QLoRALinear):
                setattr(holder, attr, fp32_linear(module))
    return out
