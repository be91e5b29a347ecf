"""QLoRA: the base's block linears in bitsandbytes NF4; dequantized values are NF4 levels × the block absmax; loss
and gradients equal LoRA over the dequantized fp32 weight; no CPU repacking; checkpoints; PEFT LoRA over bnb agrees."""

from __future__ import annotations

import copy

import pytest
import torch
from omegaconf import OmegaConf

from repro.errors import CellMismatch
from repro.methods import apply_method, parameter_counts
from repro.methods.checkpoint import load_delta_weights, load_trainable, save_trainable
from repro.methods.lora import delta_weights, lora_modules, merge
from repro.methods.qlora import QLoRALinear, dequantize_weight, dequantized, is_4bit
from tests.methods.conftest import batch, method, randomize_B
from tests.methods.conftest import tiny as tiny32


def tiny(arch, **kw):
    """d_in a multiple of bitsandbytes' 64-weight block (its CPU NF4 is wrong otherwise: test_d_in_not_multiple_of_64)."""
    return tiny32(arch, hidden=64, ffn=128, **kw)


bnb = pytest.importorskip("bitsandbytes")

NF4 = torch.tensor(
    [
        -1.0,
        -0.6961928009986877,
        -0.5250730514526367,
        -0.39491748809814453,
        -0.28444138169288635,
        -0.18477343022823334,
        -0.09105003625154495,
        0.0,
        0.07958029955625534,
        0.16093020141124725,
        0.24611230194568634,
        0.33791524171829224,
        0.44070982933044434,
        0.5626170039176941,
        0.7229568362236023,
        1.0,
    ]
)  # QLoRA's NF4 code (bitsandbytes' quant_state.code)


def four_bit_layers(model):
    return [(n, m) for n, m in model.named_modules() if is_4bit(m)]


@pytest.mark.parametrize("arch", ["roberta", "llama"])
def test_every_block_linear_is_nf4_and_only_lora_head_train(arch):
    model = apply_method(tiny(arch), method("qlora", r=2))
    n_lin = {"roberta": 6, "llama": 7}[
        arch
    ] * model.config.num_hidden_layers  # every block linear (all_linear targets: each has LoRA)
    assert len(four_bit_layers(model)) == len(list(lora_modules(model))) == n_lin
    for _, m in four_bit_layers(model):
        assert m.weight.quant_state.quant_type == "nf4" and m.support_avx512bf16_for_cpu is False
    for n, p in model.named_parameters():
        assert p.requires_grad == (".lora_" in n or n.startswith("classifier.")), n


@pytest.mark.parametrize("double_quant", [True, False])
def test_dequantized_weight_is_nf4_levels_times_block_absmax(double_quant):
    base = tiny("llama")
    model = apply_method(copy.deepcopy(base), method("qlora", r=2, double_quant=double_quant))
    pre = dict(base.named_modules())
    for name, m in four_bit_layers(model):
        W = dequantize_weight(m)
        blocks = W.flatten().view(-1, m.weight.quant_state.blocksize)  # 64 consecutive weights per absmax
        absmax = blocks.abs().amax(dim=1, keepdim=True)  # the largest attains level ±1
        levels = blocks / absmax
        assert (levels[:, :, None] - NF4).abs().amin(-1).max() < 1e-6, name
        W_pre = pre[name.removesuffix(".base_layer")].weight.detach()
        rel = (W - W_pre).norm() / W_pre.norm()
        assert rel < 0.12, (name, rel)  # ~9% relative error for NF4
        if not double_quant:  # exactly the nearest NF4 level of w / absmax(block of the pretrained w), × absmax
            b = W_pre.flatten().view(-1, 64)
            am = b.abs().amax(dim=1, keepdim=True)
            ref = NF4[((b / am)[:, :, None] - NF4).abs().argmin(-1)] * am
            assert torch.allclose(blocks, ref, atol=1e-6), name


@pytest.mark.parametrize("arch,compute", [("roberta", "float32"), ("llama", "float32"), ("llama", "bfloat16")])
def test_loss_and_grads_equal_lora_over_dequantized_fp32(arch, compute):
    model = apply_method(tiny(arch), method("qlora", r=2, alpha=4, compute_dtype=compute))
    randomize_B(model)
    ref = dequantized(model)
    assert not four_bit_layers(ref)
    b = batch(arch)
    model.eval(), ref.eval()
    with torch.no_grad():  # the first eval no-grad forward: the avx512-bf16 repacking trap
        model(**b)
    assert all(getattr(m.weight.quant_state, "packing_format_for_cpu", None) is None for _, m in four_bit_layers(model))
    lq, lr = model(**b), ref(**b)
    tol = 1e-5 if compute == "float32" else 5e-2
    assert torch.allclose(lq.loss, lr.loss, atol=tol, rtol=tol)
    lq.loss.backward(), lr.loss.backward()
    rp = dict(ref.named_parameters())
    checked = 0
    for n, p in model.named_parameters():
        if ".lora_" in n:
            assert p.grad is not None, n
            if compute == "float32":
                assert torch.allclose(p.grad, rp[n].grad, atol=1e-5), n
            else:
                assert torch.nn.functional.cosine_similarity(p.grad.flatten(), rp[n].grad.flatten(), dim=0) > 0.98, n
            checked += 1
    assert checked == 2 * len(list(lora_modules(model)))
    with pytest.raises(CellMismatch, match="re-quantizes"):
        merge(model)


def test_matches_peft_lora_over_the_same_4bit_layers():
    peft = pytest.importorskip("peft")
    model = apply_method(tiny("llama"), method("qlora", r=2, alpha=4, targets=["q", "v"]))
    randomize_B(model)
    # PEFT LoRA around the very same Linear4bit modules
    plain = copy.deepcopy(model)
    for name, m in list(plain.named_modules()):
        if isinstance(m, QLoRALinear):
            parent, _, attr = name.rpartition(".")
            setattr(plain.get_submodule(parent), attr, m.base_layer)
    theirs = peft.get_peft_model(
        plain, peft.LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    )
    tp = dict(theirs.named_parameters())
    with torch.no_grad():
        for n, p in model.named_parameters():
            if ".lora_" in n:
                key = f"base_model.model.{n}".replace(".lora_A", ".lora_A.default.weight").replace(
                    ".lora_B", ".lora_B.default.weight"
                )
                tp[key].copy_(p)
    b = batch("llama")
    assert torch.allclose(model(**b).logits, theirs(**b).logits, atol=1e-5)


def test_checkpoint_round_trip_and_delta(tmp_path):
    m = method("qlora", r=2, alpha=4)
    base = tiny("roberta")
    model = apply_method(copy.deepcopy(base), m).eval()
    randomize_B(model)
    path = tmp_path / "w.safetensors"
    save_trainable(
        model,
        path,
        OmegaConf.create(
            {"method": OmegaConf.to_container(m), "model": {"name": "tiny-roberta"}, "task": {"name": "rte"}}
        ),
    )
    fresh = apply_method(copy.deepcopy(base), m).eval()
    load_trainable(fresh, path, m)
    b = batch("roberta")
    assert torch.equal(fresh(input_ids=b["input_ids"]).logits, model(input_ids=b["input_ids"]).logits)
    got = load_delta_weights(path)  # ΔW = s B A from the factors alone
    assert all(torch.allclose(a[2], e[2]) for a, e in zip(got, sorted(delta_weights(model), key=lambda x: x[:2])))
    assert parameter_counts(model)["adapter_params"] == 3 * (4 * 2 * 64 * 2 + 2 * 2 * (64 + 128))


def test_d_in_not_multiple_of_64_refused():
    with pytest.raises(CellMismatch, match="multiple of 64"):
        apply_method(tiny32("llama"), method("qlora"))


def test_gpt2_refused():
    with pytest.raises(CellMismatch, match="Conv1D"):
        apply_method(tiny32("gpt2"), method("qlora"))
