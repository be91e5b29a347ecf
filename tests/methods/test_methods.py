"""FT, FTTop2, BitFit, adapters and prefix tuning: the right parameters train, adapters start as the identity."""

from __future__ import annotations

import copy

import pytest
import torch
from omegaconf import OmegaConf

from repro.config import load_group, options
from repro.errors import CellMismatch
from repro.method_traits import DECODER_ONLY, FULL_UPDATE_METHODS, TRAITS, VARIANT_METHODS
from repro.methods import METHODS, apply_method, parameter_counts
from repro.methods.adapters import Adapter
from tests.methods.conftest import ARCHS, DECODERS, ENCODERS, batch, method, tiny

HEAD = ("classifier.", "pooler.", "bert.pooler.")


def grads_of(model, arch):
    model.train()
    model(**batch(arch)).loss.backward()
    return {n for n, p in model.named_parameters() if p.grad is not None}


def check_only(model, arch, intended):
    got = grads_of(model, arch)
    names = {n for n, _ in model.named_parameters()}
    want = {n for n in names if intended(n) or n.startswith(HEAD)}
    assert {n for n, p in model.named_parameters() if p.requires_grad} == want
    assert got == want, (sorted(got ^ want))[:5]


@pytest.mark.parametrize("arch", ARCHS)
def test_ft_bitfit_fttop2(arch):
    check_only(apply_method(tiny(arch), method("ft")), arch, lambda n: True)
    if arch == "llama":  # no bias anywhere: BitFit is refused, saying why
        with pytest.raises(
            CellMismatch,
            match=r"^method=bitfit: model llama has no bias parameters \(Llama: "
            r"attention_bias=False, mlp_bias=False\); BitFit trains biases only$",
        ):
            apply_method(tiny(arch), method("bitfit"))
    else:
        check_only(apply_method(tiny(arch), method("bitfit")), arch, lambda n: "bias" in n)
    top = {"gpt2": ".h.2.", "llama": ".layers.2."}.get(arch, ".layer.2.")
    model = apply_method(tiny(arch), method("fttop2", top_layers=1))
    check_only(model, arch, lambda n: top in n)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("name", ["adapter_h", "adapter_l", "adapter_p", "adapter_d"])
def test_adapters_identity_at_init_and_gradients(arch, name):
    base = tiny(arch)
    b = batch(arch)
    ref = base(input_ids=b["input_ids"]).logits
    cfg = method(name, r=4, robust_drop=False, drop=1 if name == "adapter_d" else 0)
    model = apply_method(copy.deepcopy(base), cfg)
    assert torch.allclose(model(input_ids=b["input_ids"]).logits, ref, atol=1e-6)
    n_blocks = 3 - (1 if name == "adapter_d" else 0)
    per_block = 2 if name == "adapter_h" else 1
    adapters = [m for m in model.modules() if isinstance(m, Adapter)]
    assert len(adapters) == n_blocks * per_block
    d, r = 32, 4
    per_norm = d if arch == "llama" else 2 * d  # RMSNorm: a weight only; LayerNorm: weight and bias
    ln = (2 * d * n_blocks if name == "adapter_l" else 0) + (2 * per_norm * 3 if name == "adapter_h" else 0)
    assert parameter_counts(model)["adapter_params"] == n_blocks * per_block * (2 * d * r + r + d) + ln
    with torch.no_grad():  # make W_up non-zero so every adapter parameter gets a gradient
        for a in adapters:
            a.up.weight.normal_(std=0.1)
    ln_names = ("LayerNorm", "ln_1", "ln_2", "input_layernorm", "post_attention_layernorm")
    check_only(
        model,
        arch,
        lambda n: (
            ".adapter." in n
            or (
                name == "adapter_h" and any(s in n for s in ln_names) and ".adapter." not in n and "embeddings" not in n
            )
        ),
    )
    assert torch.allclose(
        copy.deepcopy(model).eval()(input_ids=b["input_ids"]).logits, model.eval()(input_ids=b["input_ids"]).logits
    )


def test_adapter_sits_before_residual():
    model = apply_method(tiny("roberta"), method("adapter_p", r=4))
    layer = model.roberta.encoder.layer[0]
    assert isinstance(layer.output.dense.adapter, Adapter)
    x = torch.randn(1, 3, 64)
    with torch.no_grad():
        layer.output.dense.adapter.up.weight.normal_()
    a = layer.output.dense.adapter
    assert torch.allclose(
        layer.output.dense(x), a(torch.nn.functional.linear(x, layer.output.dense.weight, layer.output.dense.bias))
    )


def test_adapter_drop_robust_skips_lowest_layers():
    model = apply_method(tiny("roberta"), method("adapter_d", r=4, drop=0, robust_drop=True))
    torch.manual_seed(3)
    model.train()
    seen = set()
    for _ in range(12):
        model(**batch("roberta"))
        seen.add(tuple(m.active for m in model.modules() if isinstance(m, Adapter)))
    assert len(seen) > 1 and all(s == tuple(sorted(s)) for s in seen)  # active = a suffix of the blocks
    model.eval()
    model(**batch("roberta"))
    assert all(m.active for m in model.modules() if isinstance(m, Adapter))


def test_adapter_drop_too_many_refused():
    with pytest.raises(CellMismatch, match="drop"):
        apply_method(tiny("bert"), method("adapter_d", drop=3))


@pytest.mark.parametrize("arch", DECODERS)
@pytest.mark.parametrize("name,count", [("prefix_embed", 32 * 5), ("prefix_layer", 3 * 32 * 5)])
def test_prefix_decoders(arch, name, count):
    model = apply_method(tiny(arch), method(name, l_p=3, l_i=2))
    assert parameter_counts(model)["adapter_params"] == count
    check_only(model, arch, lambda n: n.startswith("prefix_tuning."))
    b = batch(arch)
    out = model(**b)
    assert out.logits.shape[1] == b["input_ids"].shape[1] + 5 and torch.isfinite(out.loss)


@pytest.mark.parametrize("arch", DECODERS)
@pytest.mark.parametrize("name", ["prefix_embed", "prefix_layer"])
def test_prefix_cached_decoding_matches_full_forward(arch, name):
    """Greedy decoding with the KV cache equals re-running the whole sequence (positions, mask, infix consistent)."""
    model = apply_method(tiny(arch), method(name, l_p=2, l_i=2)).eval()
    prompt = torch.randint(2, 120, (1, 5), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = model.generate(
            input_ids=prompt,
            attention_mask=torch.ones_like(prompt),
            max_new_tokens=4,
            do_sample=False,
            pad_token_id=0,
            eos_token_id=None,
        )
        seq = prompt
        for _ in range(4):
            nxt = model(input_ids=seq).logits[:, -1].argmax(-1, keepdim=True)
            # without labels the infix goes after the whole input: re-run the prompt + generated with the infix
            # after the prompt, as in training (labels mark the completion)
            labels = torch.full_like(seq, -100)
            labels[:, prompt.shape[1] :] = seq[:, prompt.shape[1] :]
            if seq.shape[1] > prompt.shape[1]:
                nxt = model(input_ids=seq, labels=labels).logits[:, -1].argmax(-1, keepdim=True)
            seq = torch.cat([seq, nxt], dim=1)
    assert torch.equal(out[:, -4:], seq[:, -4:])


def test_prefix_keys_values_have_the_grouped_kv_shape():
    """Llama with grouped-query attention (4 query heads, 2 key/value heads of 8): the prefix positions' keys and values
    in every layer's cache have the key/value-head shape, and the trained activations reach them."""
    model = apply_method(tiny("llama"), method("prefix_layer", l_p=3, l_i=0)).eval()
    ids = torch.randint(2, 120, (2, 5), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = model(input_ids=ids, use_cache=True)
        cache = out.past_key_values
        assert len(cache.layers) == 3
        for layer in cache.layers:
            assert layer.keys.shape == layer.values.shape == (2, 2, 3 + 5, 8)
        model.prefix_tuning.activations[1].add_(1.0)  # the layer-1 prefix changes layer 1's keys, not layer 0's
        moved = model(input_ids=ids, use_cache=True).past_key_values
    assert torch.equal(moved.layers[0].keys, cache.layers[0].keys)
    assert not torch.allclose(moved.layers[1].keys[:, :, :3], cache.layers[1].keys[:, :, :3])


@pytest.mark.parametrize("arch", ENCODERS)
@pytest.mark.parametrize("name", ["prefix_embed", "prefix_layer"])
def test_prefix_refused_on_encoders(arch, name):
    with pytest.raises(CellMismatch, match="decoder"):
        apply_method(tiny(arch), method(name))


def test_registry_and_configs():
    """Every conf/method/<name>.yaml is named <name> and registered; the registry's names are the trait table's, in its
    order, and each trait list is the names that carry it."""
    for name in options("method"):
        assert load_group("method", name).name == name and name in METHODS
    assert list(METHODS) == list(TRAITS)
    assert VARIANT_METHODS == ("rslora", "pissa", "dora", "lora_all_linear", "qlora", "adalora")
    assert DECODER_ONLY == ("prefix_embed", "prefix_layer") and FULL_UPDATE_METHODS == ("ft",)
    with pytest.raises(CellMismatch, match="allowed"):
        apply_method(tiny("roberta"), OmegaConf.create({"name": "nope"}))
