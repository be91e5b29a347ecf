"""LoRA (Section 4.1): identity at init, merge == unmerged, merge/unmerge restores W, GPT-2 fused q,v, PEFT parity."""

from __future__ import annotations

import copy

import pytest
import torch

from repro.errors import CellMismatch
from repro.methods import apply_method, parameter_counts
from repro.methods.lora import LoRAConv1D, LoRALinear, delta_weight, delta_weights, lora_modules, merge, merged, unmerge
from tests.methods.conftest import ARCHS, ENCODERS, batch, method, randomize_B, tiny


def logits(model, b):
    return model(input_ids=b["input_ids"]).logits


@pytest.mark.parametrize("arch", ARCHS)
def test_init_equals_base_and_merge_agrees(arch):
    base = tiny(arch)
    b = batch(arch)
    ref = logits(base, b)
    model = apply_method(copy.deepcopy(base), method("lora", r=4, alpha=8, targets=["q", "v"]))
    assert torch.equal(logits(model, b), ref) or torch.allclose(logits(model, b), ref, atol=1e-6)
    randomize_B(model)
    unmerged = logits(model, b)
    assert (unmerged - ref).abs().max() > 1e-5  # B != 0 really changes the model
    w0 = {n: p.detach().clone() for n, p in model.named_parameters() if not n.count("lora")}
    with merged(model):
        assert (logits(model, b) - unmerged).abs().max() <= 1e-5
        assert any(not torch.equal(p, w0[n]) for n, p in model.named_parameters() if n in w0)
    for n, p in model.named_parameters():
        if n in w0:
            assert torch.allclose(p, w0[n], atol=1e-6), n
    assert torch.allclose(logits(model, b), unmerged, atol=1e-6)
    for mode in (model.eval, model.train, model.eval):  # never merges as a side effect
        mode()
    assert not any(m.merged for _, _, m in lora_modules(model))


@pytest.mark.parametrize("arch", ARCHS)
def test_only_lora_and_head_get_gradients(arch):
    model = apply_method(tiny(arch), method("lora", r=2, alpha=4, targets=["q", "v"]))
    randomize_B(model)
    model.train()
    model(**batch(arch)).loss.backward()
    for n, p in model.named_parameters():
        intended = ".lora_" in n or n.startswith(("classifier.", "pooler.", "bert.pooler."))
        assert p.requires_grad == intended, n
        assert (p.grad is not None) == intended, n
    layers = len(list(lora_modules(model)))
    assert layers == (3 if arch == "gpt2" else 6)


def test_counts_qv():
    model = apply_method(tiny("roberta"), method("lora", r=4, targets=["q", "v"]))
    assert parameter_counts(model)["adapter_params"] == 2 * (2 * 3) * 32 * 4  # 2 · L̂ · d · r


def test_gpt2_fused_qv_equals_separate_updates():
    base = tiny("gpt2")
    model = apply_method(copy.deepcopy(base), method("lora", r=2, alpha=6, targets=["q", "v"]))
    randomize_B(model)
    c_attn = model.transformer.h[0].attn.c_attn
    assert isinstance(c_attn, LoRAConv1D) and set(c_attn.lora_A) == {"q", "v"}
    x = torch.randn(2, 5, 32)
    W, bias = base.transformer.h[0].attn.c_attn.weight, base.transformer.h[0].attn.c_attn.bias
    d = 32
    s = 6 / 2
    expect = x @ W + bias
    for part, lo in (("q", 0), ("v", 2 * d)):
        A, B = c_attn.lora_A[part], c_attn.lora_B[part]
        expect[..., lo : lo + d] += s * x @ (B @ A).T
    assert torch.allclose(c_attn(x), expect, atol=1e-6)
    # k untouched, ΔW per projection in d_out × d_in orientation
    dw = delta_weight(c_attn)
    assert set(dw) == {"q", "v"} and dw["q"].shape == (d, d)
    assert torch.allclose(dw["v"], s * c_attn.lora_B["v"] @ c_attn.lora_A["v"])
    out_k = c_attn(x)[..., d : 2 * d]
    assert torch.allclose(out_k, (x @ W + bias)[..., d : 2 * d], atol=1e-6)
    keys = [k for k in model.state_dict() if "lora" in k and ".h.0." in k]
    assert sorted(keys) == sorted(f"transformer.h.0.attn.c_attn.lora_{m}.{p}" for m in "AB" for p in "qv")
    assert [(l, t) for l, t, _ in delta_weights(model)][:2] == [(0, "q"), (0, "v")]


def test_linear_keys_and_delta_weight():
    model = apply_method(tiny("roberta"), method("lora", r=2, alpha=4, targets=["q", "v"]))
    q = model.roberta.encoder.layer[1].attention.self.query
    assert isinstance(q, LoRALinear) and q.lora_A.shape == (2, 32) and q.lora_B.shape == (32, 2)
    assert "roberta.encoder.layer.1.attention.self.query.lora_A" in model.state_dict()
    assert "roberta.encoder.layer.1.attention.self.query.weight" in model.state_dict()
    randomize_B(model)
    assert delta_weight(q).dtype == torch.float32
    assert torch.allclose(delta_weight(q), 2 * q.lora_B @ q.lora_A)


@pytest.mark.parametrize("r", [0, -1, 33])
def test_bad_rank_refused(r):
    with pytest.raises(CellMismatch, match="rank"):
        apply_method(tiny("roberta"), method("lora", r=r))


@pytest.mark.parametrize("arch", ENCODERS)
def test_unknown_target_refused(arch):
    with pytest.raises(CellMismatch, match="allowed"):
        apply_method(tiny(arch), method("lora", targets=["q", "qkv"]))


def test_llama_grouped_query_shapes():
    """SmolLM2's layout in small: W_q d -> d, W_v d -> n_kv_heads * head_dim (32 -> 16 here; 576 -> 192 in SmolLM2)."""
    model = apply_method(tiny("llama"), method("lora", r=2, alpha=4, targets=["q", "v"]))
    attn = model.model.layers[0].self_attn
    assert isinstance(attn.q_proj, LoRALinear) and isinstance(attn.v_proj, LoRALinear)
    assert attn.q_proj.lora_B.shape == (32, 2) and attn.v_proj.lora_B.shape == (16, 2)
    assert attn.v_proj.lora_A.shape == (2, 32) and attn.v_proj.bias is None
    assert parameter_counts(model)["adapter_params"] == 3 * 2 * ((32 + 32) + (32 + 16))  # L · r · Σ (d_in + d_out)
    assert "model.layers.2.self_attn.v_proj.lora_B" in model.state_dict()


def test_all_targets_decoders_and_encoder():
    for arch in ("gpt2", "llama", "deberta-v2"):
        base = tiny(arch)
        b = batch(arch)
        extra = ["mlp_gate"] if arch == "llama" else []
        model = apply_method(
            copy.deepcopy(base), method("lora", r=2, targets=["q", "k", "v", "o", "mlp_in", "mlp_out", *extra])
        )
        randomize_B(model)
        out = logits(model, b)
        merge(model)
        assert (logits(model, b) - out).abs().max() <= 1e-5
        unmerge(model)


@pytest.mark.parametrize(
    "arch,peft_targets,task_type",
    [("roberta", ["query", "value"], "SEQ_CLS"), ("llama", ["q_proj", "v_proj"], "CAUSAL_LM")],
)
def test_matches_peft_outputs_and_gradients(arch, peft_targets, task_type):
    peft = pytest.importorskip("peft")
    base = tiny(arch)
    ours = apply_method(copy.deepcopy(base), method("lora", r=4, alpha=16, targets=["q", "v"]))
    randomize_B(ours)
    theirs = peft.get_peft_model(
        copy.deepcopy(base), peft.LoraConfig(r=4, lora_alpha=16, target_modules=peft_targets, task_type=task_type)
    )
    sd = {}
    for n, p in ours.named_parameters():
        if ".lora_" in n:
            sd[
                f"base_model.model.{n}.weight".replace(".lora_A.weight", ".lora_A.default.weight").replace(
                    ".lora_B.weight", ".lora_B.default.weight"
                )
            ] = p.detach()
    missing = theirs.load_state_dict(sd, strict=False)
    assert not missing.unexpected_keys
    b = batch(arch)
    ours.eval(), theirs.eval()  # same dropout-free forward; gradients still flow
    lo, lt = ours(**b), theirs(**b)
    assert torch.allclose(lo.logits, lt.logits, atol=1e-6)
    lo.loss.backward()
    lt.loss.backward()
    tp = dict(theirs.named_parameters())
    for n, p in ours.named_parameters():
        if ".lora_" in n:
            key = f"base_model.model.{n}".replace(".lora_A", ".lora_A.default.weight").replace(
                ".lora_B", ".lora_B.default.weight"
            )
            assert torch.allclose(p.grad, tp[key].grad, atol=1e-6), n
