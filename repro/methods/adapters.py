"""Adapter baselines (Section 5.1; |Θ| = L̂_Adpt × (2 d_model r + r + d_model) + 2 L̂_LN d_model).

One bottleneck module, four presets (conf/method/adapter_{h,l,p,d}.yaml):

    adapter(x) = x + W_up act(W_down LN(x))      down: d → r, up: r → d, both with biases; LN only in AdapterL

W_up (weight and bias) starts at zero, so every adapter starts as the identity and the model starts unchanged.
An adapter sits on the output of a sub-layer's projection, i.e. between the sub-layer and its residual add
(and LayerNorm): RoBERTa/BERT/DeBERTa `attention.output.dense` and `output.dense`, GPT-2 `attn.c_proj` and
`mlp.c_proj`. It is a child module `<projection>.adapter` applied by a forward hook, so the base weights keep
their names (`...output.dense.weight`) and the adapter's are `...output.dense.adapter.{down,up}.{weight,bias}`.

* AdapterH (Houlsby et al. 2019): after the attention sub-layer and after the MLP (2 per block); the block's
  LayerNorms are trained too (`train_layernorm`; they add 2·L̂_LN·d_model with L̂_LN = 2 per block).
* AdapterL (Lin et al. 2020): one adapter per block after the MLP, with its own trainable LayerNorm on its input.
* AdapterP (Pfeiffer et al. 2021): one adapter per block after the MLP.
* AdapterD (AdapterDrop, Rücklé et al. 2020): AdapterP without adapters in the lowest `drop` blocks; with
  `robust_drop`, training also skips the adapters of the lowest n ~ U{0..L-1} blocks at every step (eval uses all).
"""

from __future__ import annotations

import random

import torch
from omegaconf import DictConfig
from torch import nn

from repro.errors import CellMismatch
from repro.methods.common import mark_trainable
from repro.methods.targets import ADAPTER_SITES, blocks, model_type

ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "swish": nn.SiLU, "tanh": nn.Tanh}


class Adapter(nn.Module):
    """x + up(act(down(LN(x)))) -- the bottleneck of size r; identity at init (up = 0)."""

    def __init__(
        self,
        d_model: int,
        r: int,
        activation: str = "relu",
        layernorm: bool = False,
        init_std: float = 1e-2,
        layer: int = 0,
        like: torch.Tensor | None = None,
    ):
        super().__init__()
        if not 0 < r:
            raise CellMismatch(f"adapter bottleneck r={r} must be a positive integer")
        if activation not in ACTIVATIONS:
            raise CellMismatch(f"method.activation={activation!r}; allowed: {sorted(ACTIVATIONS)}")
        kw = {"device": like.device, "dtype": like.dtype} if like is not None else {}
        self.layer_norm = nn.LayerNorm(d_model, **kw) if layernorm else None
        self.down = nn.Linear(d_model, r, **kw)
        self.act = ACTIVATIONS[activation]()
        self.up = nn.Linear(r, d_model, **kw)
        self.layer, self.active = layer, True
        if self.down.weight.device.type != "meta":
            nn.init.normal_(self.down.weight, std=init_std)
            nn.init.zeros_(self.down.bias)
            nn.init.zeros_(self.up.weight)
            nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.active:
            return x
        z = self.layer_norm(x) if self.layer_norm is not None else x
        return x + self.up(self.act(self.down(z)))


def _adapter_hook(module: nn.Module, inputs, output):
    return module.adapter(output)


def _robust_drop_hook(model: nn.Module, args, kwargs):
    """Robust AdapterDrop: in training, skip the adapters of the lowest n blocks, n ~ U{0, ..., L-1}, per step."""
    n = random.randrange(model.adapter_num_layers) if model.training else 0
    for m in model.modules():
        if isinstance(m, Adapter):
            m.active = m.layer >= n


def d_model(model: nn.Module) -> int:
    c = model.config
    return getattr(c, "hidden_size", None) or c.n_embd


def apply_adapter(model: nn.Module, cfg: DictConfig) -> nn.Module:
    """Insert adapters at cfg.sites (attn, mlp) of every block >= cfg.drop; train them (+ LNs, + head) only."""
    sites = ADAPTER_SITES[model_type(model)]
    wanted = list(cfg.sites)
    bad = [s for s in wanted if s not in ("attn", "mlp")]
    if bad or not wanted:
        raise CellMismatch(f"method.sites={wanted}; allowed: attn, mlp")
    L, d = len(blocks(model)), d_model(model)
    drop = int(cfg.get("drop", 0) or 0)
    if not 0 <= drop < L:
        raise CellMismatch(f"method.drop={drop}: must be in 0..{L - 1} (the model has {L} blocks)")
    trained_ln: set[int] = set()
    for i, block in enumerate(blocks(model)):
        if i < drop:
            continue
        for site in wanted:
            proj = block.get_submodule(sites[site])
            if hasattr(proj, "adapter"):
                raise CellMismatch(f"block {i} {sites[site]} already has an adapter")
            proj.adapter = Adapter(
                d,
                int(cfg.r),
                cfg.get("activation", "relu"),
                bool(cfg.get("adapter_layernorm", False)),
                float(cfg.get("init_std", 1e-2)),
                layer=i,
                like=proj.weight,
            )
            proj.register_forward_hook(_adapter_hook)
        if cfg.get("train_layernorm", False):
            trained_ln |= {id(p) for ln in sites["layernorms"] for p in block.get_submodule(ln).parameters()}
    params = dict(model.named_parameters())
    mark_trainable(model, lambda name: ".adapter." in name or id(params[name]) in trained_ln)
    if cfg.get("robust_drop", False):
        model.adapter_num_layers = L
        model.register_forward_pre_hook(_robust_drop_hook, with_kwargs=True)
    return model
