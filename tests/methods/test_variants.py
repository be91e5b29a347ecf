"""LoRA variants against their papers' definitions and against PEFT 0.21 (the oracle, test-only):
rsLoRA (scaling alpha/√r), all-linear targets, DoRA (magnitude = row norms of the merged weight), PiSSA
(W_res + s B A = W at init)."""

from __future__ import annotations

import copy
import math
import re

import pytest
import torch
from omegaconf import OmegaConf

from repro.analysis.factors import adapter_from_model, load_adapter
from repro.errors import CellMismatch
from repro.method_traits import VARIANT_METHODS
from repro.methods import apply_method, parameter_counts
from repro.methods.checkpoint import load_delta_weights, load_trainable, save_trainable
from repro.methods.dora import DoRAConv1D, DoRALinear
from repro.methods.lora import LoRAConv1D, LoRALinear, delta_weights, lora_modules, merge, merged, unmerge
from repro.methods.targets import ALL_LINEAR
from repro.plan.grid import filter_jobs
from tests.conftest import compose_cfg
from tests.methods.conftest import DECODERS, batch, method, randomize_B, tiny

peft = pytest.importorskip("peft")
from peft.tuners.lora import LoraLayer  # noqa: E402  -- after the skip: peft is optional (the test extra)

OURS = re.compile(r"^(?P<mod>.+)\.lora_(?P<w>A|B|magnitude)(?:\.\w+)?$")


def peft_key(name: str) -> str:
    m = OURS.match(name)
    leaf = "lora_magnitude_vector.default.weight" if m["w"] == "magnitude" else f"lora_{m['w']}.default.weight"
    return f"base_model.model.{m['mod']}.{leaf}"


def peft_model(base, arch, **kw):
    task = "CAUSAL_LM" if arch in DECODERS else "SEQ_CLS"
    return peft.get_peft_model(copy.deepcopy(base), peft.LoraConfig(task_type=task, **kw))


def perturb(model, seed=0, std=0.1):
    """B random (the LoRA path on) and the DoRA magnitude moved off ‖W0‖_row."""
    randomize_B(model, std=std, seed=seed)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_magnitude" in n:
                p.mul_(1 + 0.2 * torch.rand(p.shape, generator=g))


def copy_to_peft(ours, theirs):
    sd = {peft_key(n): p.detach() for n, p in ours.named_parameters() if ".lora_" in n}
    res = theirs.load_state_dict(sd, strict=False)
    assert not res.unexpected_keys
    return sd


def assert_same_outputs_and_grads(ours, theirs, arch, atol=1e-5):
    b = batch(arch)
    ours.eval(), theirs.eval()
    lo, lt = ours(**b), theirs(**b)
    assert torch.allclose(lo.logits, lt.logits, atol=atol)
    lo.loss.backward()
    lt.loss.backward()
    tp = dict(theirs.named_parameters())
    n_checked = 0
    for n, p in ours.named_parameters():
        if ".lora_" in n:
            assert torch.allclose(p.grad, tp[peft_key(n)].grad, atol=atol), n
            n_checked += 1
    assert n_checked > 0


# ---------------------------------------------------------------- rsLoRA


@pytest.mark.parametrize("r", [2, 8])
def test_rslora_scaling_is_alpha_over_sqrt_r(r):
    model = apply_method(tiny("roberta"), method("rslora", r=r, alpha=16))
    randomize_B(model)
    q = model.roberta.encoder.layer[0].attention.self.query
    assert q.scaling == pytest.approx(16 / math.sqrt(r)) and q.factored
    (_, _, dw), *_ = delta_weights(model)
    assert torch.allclose(dw, 16 / math.sqrt(r) * q.lora_B @ q.lora_A)


def test_rslora_matches_peft_use_rslora():
    base = tiny("roberta")
    ours = apply_method(copy.deepcopy(base), method("rslora", r=4, alpha=16))
    randomize_B(ours)
    theirs = peft_model(base, "roberta", r=4, lora_alpha=16, target_modules=["query", "value"], use_rslora=True)
    copy_to_peft(ours, theirs)
    assert_same_outputs_and_grads(ours, theirs, "roberta")
    with merged(ours):  # merge agrees with the unmerged forward
        assert torch.allclose(ours(**batch("roberta")).logits, theirs(**batch("roberta")).logits, atol=1e-5)


# ---------------------------------------------------------------- all-linear


def adapted_paths(model):
    return sorted(n for n, _ in model.named_modules() if isinstance(_, (LoRALinear, LoRAConv1D)))


@pytest.mark.parametrize("arch", ["roberta", "deberta-v2", "gpt2", "llama"])
def test_all_linear_targets_the_modules_peft_targets(arch):
    base = tiny(arch)
    ours = apply_method(copy.deepcopy(base), method("lora_all_linear", r=2))
    theirs = peft_model(base, arch, r=2, target_modules="all-linear")
    peft_paths = sorted(
        n.removeprefix("base_model.model.") for n, m in theirs.named_modules() if isinstance(m, LoraLayer)
    )
    peft_paths = [p for p in peft_paths if ".layer." in p or ".h." in p or ".layers." in p]  # blocks only
    assert adapted_paths(ours) == peft_paths
    assert set(ALL_LINEAR[base.config.model_type]) == {t for _, t, _ in delta_weights(ours)}


@pytest.mark.parametrize("arch", ["roberta", "llama"])
def test_all_linear_matches_peft(arch):
    base = tiny(arch)
    ours = apply_method(copy.deepcopy(base), method("lora", r=2, alpha=4, targets="all_linear"))
    randomize_B(ours)
    theirs = peft_model(base, arch, r=2, lora_alpha=4, target_modules="all-linear")
    copy_to_peft(ours, theirs)
    assert_same_outputs_and_grads(ours, theirs, arch)


def test_all_linear_gpt2_c_attn_holds_peft_shared_pair():
    """PEFT puts one pair on the whole fused c_attn (A shared by q, k, v; B of 3d rows); ours has one pair per
    projection (the paper's layout). With A_q = A_k = A_v = A and B split in row blocks they are the same model."""
    base = tiny("gpt2")
    ours = apply_method(copy.deepcopy(base), method("lora_all_linear", r=2, alpha=4))
    theirs = peft_model(base, "gpt2", r=2, lora_alpha=4, target_modules="all-linear", fan_in_fan_out=True)
    g = torch.Generator().manual_seed(3)
    tp = dict(theirs.named_parameters())
    with torch.no_grad():
        for n, p in tp.items():
            if "lora_B" in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
        for name, mod in ours.named_modules():
            if not isinstance(mod, LoRAConv1D):
                continue
            A, B = (
                tp[f"base_model.model.{name}.lora_A.default.weight"],
                tp[f"base_model.model.{name}.lora_B.default.weight"],
            )
            for i, t in enumerate(mod.targets):
                mod.lora_A[t].copy_(A)
                mod.lora_B[t].copy_(B[i * mod.d_part : (i + 1) * mod.d_part])
    b = batch("gpt2")
    assert torch.allclose(ours(**b).logits, theirs(**b).logits, atol=1e-5)
    d, L, r = 32, 3, 2
    assert parameter_counts(ours)["adapter_params"] == L * (3 * 2 * d * r + 2 * d * r + (d * r + 4 * d * r) * 2)


def test_all_linear_llama_merge():
    model = apply_method(tiny("llama"), method("lora_all_linear", r=2))
    randomize_B(model)
    b = batch("llama")
    out = model(**b).logits
    with merged(model):
        assert torch.allclose(model(**b).logits, out, atol=1e-5)
    assert len(list(lora_modules(model))) == model.config.num_hidden_layers * 7  # q, k, v, o, gate, up, down per block


# ---------------------------------------------------------------- DoRA


@pytest.mark.parametrize(
    "arch,targets,peft_targets",
    [
        ("roberta", ["q", "v"], ["query", "value"]),
        ("gpt2", ["o", "mlp_in"], ["attn.c_proj", "mlp.c_fc"]),
        ("llama", "all_linear", "all-linear"),
    ],
)
def test_dora_matches_peft_use_dora(arch, targets, peft_targets):
    base = tiny(arch)
    ours = apply_method(copy.deepcopy(base), method("dora", r=2, alpha=4, targets=targets))
    b = batch(arch)
    assert torch.allclose(ours(**b).logits, base(**b).logits, atol=1e-5)  # W' = W0 at init
    perturb(ours)
    theirs = peft_model(
        base, arch, r=2, lora_alpha=4, target_modules=peft_targets, use_dora=True, fan_in_fan_out=arch == "gpt2"
    )
    copy_to_peft(ours, theirs)
    assert_same_outputs_and_grads(ours, theirs, arch)
    grads = [p.grad for n, p in ours.named_parameters() if "lora_magnitude" in n]
    assert grads and all(g is not None and g.abs().sum() > 0 for g in grads)


@pytest.mark.parametrize("name", ["lora", "dora"])
@pytest.mark.parametrize(
    "arch,targets,peft_targets",
    [
        ("roberta", ["q", "v"], ["query", "value"]),
        ("gpt2", ["o", "mlp_in"], ["attn.c_proj", "mlp.c_fc"]),
        ("llama", "all_linear", "all-linear"),
    ],
)
def test_training_with_lora_dropout_matches_peft(name, arch, targets, peft_targets):
    """In training with LoRA dropout > 0 and the same dropout masks (the same seed before each forward; both models
    draw them in the same order), the outputs and gradients equal PEFT's. DoRA: PEFT and the DoRA authors' code feed
    the dropped input to the magnitude's rescaling of W0 x too, h = W0 x + (n − 1) W0 x' + n s B A x' (x' = dropout(x));
    LoRA (the control that the masks are the same): h = W0 x + s B A x'."""
    base = tiny(arch)
    ours = apply_method(copy.deepcopy(base), method(name, r=2, alpha=4, targets=targets, dropout=0.3))
    perturb(ours)
    theirs = peft_model(
        base,
        arch,
        r=2,
        lora_alpha=4,
        lora_dropout=0.3,
        target_modules=peft_targets,
        use_dora=name == "dora",
        fan_in_fan_out=arch == "gpt2",
    )
    copy_to_peft(ours, theirs)
    b = batch(arch)
    ours.train(), theirs.train()
    torch.manual_seed(11)
    lo = ours(**b)
    torch.manual_seed(11)
    lt = theirs(**b)
    assert (lo.logits - lt.logits).abs().max() <= 1e-6  # tiny RoBERTa's logits are ~0.02: an absolute 1e-6
    lo.loss.backward()
    lt.loss.backward()
    tp = dict(theirs.named_parameters())
    grads = [(n, p.grad, tp[peft_key(n)].grad) for n, p in ours.named_parameters() if ".lora_" in n]
    assert grads and all(torch.allclose(g, h, atol=1e-5) for _, g, h in grads), [n for n, g, h in grads]
    ours.eval(), theirs.eval()  # and dropout is off in eval
    assert torch.allclose(ours(**b).logits, theirs(**b).logits, atol=1e-5)


@pytest.mark.parametrize("arch", ["roberta", "gpt2"])
def test_dora_row_norms_of_merged_weight_equal_magnitude(arch):
    targets = ["q", "v"] if arch == "roberta" else ["q", "v", "o"]
    base = tiny(arch)
    model = apply_method(copy.deepcopy(base), method("dora", r=2, alpha=4, targets=targets))
    for _, _, mod in lora_modules(model):  # m initialised to ‖W0‖_row
        for t in mod.targets:
            assert torch.allclose(mod.magnitude(t), torch.linalg.norm(mod.w0(t), dim=1))
    perturb(model)
    b = batch(arch)
    out = model(input_ids=b["input_ids"]).logits
    w0 = {(name, t): mod.w0(t).detach().clone() for name, _, mod in lora_modules(model) for t in mod.targets}
    dws = {(name, t): dw for name, _, mod in lora_modules(model) for t, dw in mod.delta_weights().items()}
    merge(model)
    assert torch.allclose(model(input_ids=b["input_ids"]).logits, out, atol=1e-5)
    for name, _, mod in lora_modules(model):
        assert isinstance(mod, (DoRALinear, DoRAConv1D)) and not mod.factored
        for t in mod.targets:
            W = mod.w0(t)  # now the merged W'
            assert torch.allclose(torch.linalg.norm(W, dim=1), mod.magnitude(t), atol=1e-5)
            assert torch.allclose(W - w0[(name, t)], dws[(name, t)], atol=1e-6)  # ΔW = W' − W0
    unmerge(model)
    for name, _, mod in lora_modules(model):
        for t in mod.targets:
            assert torch.allclose(mod.w0(t), w0[(name, t)], atol=1e-5)
    assert torch.allclose(model(input_ids=b["input_ids"]).logits, out, atol=1e-5)


def test_dora_counts():
    model = apply_method(tiny("roberta"), method("dora", r=4))
    assert parameter_counts(model)["adapter_params"] == 2 * (2 * 3) * 32 * 4 + (2 * 3) * 32  # 2·L̂·d·r + L̂·d_out


# ---------------------------------------------------------------- PiSSA


@pytest.mark.parametrize(
    "arch,targets,peft_targets",
    [("roberta", ["q", "v"], ["query", "value"]), ("gpt2", ["o", "mlp_out"], ["attn.c_proj", "mlp.c_proj"])],
)
def test_pissa_matches_peft(arch, targets, peft_targets):
    base = tiny(arch)
    ours = apply_method(copy.deepcopy(base), method("pissa", r=2, alpha=4, targets=targets))
    theirs = peft_model(
        base,
        arch,
        r=2,
        lora_alpha=4,
        target_modules=peft_targets,
        init_lora_weights="pissa",
        fan_in_fan_out=arch == "gpt2",
    )
    tp = dict(theirs.named_parameters())
    for n, p in ours.named_parameters():
        if ".lora_" in n:
            assert torch.allclose(p, tp[peft_key(n)], atol=1e-5), n
    for name, _, mod in lora_modules(ours):  # the residual base weight
        assert torch.allclose(mod.weight, tp[f"base_model.model.{name}.base_layer.weight"], atol=1e-5), name
    perturb(ours)
    copy_to_peft(ours, theirs)
    assert_same_outputs_and_grads(ours, theirs, arch)


@pytest.mark.parametrize("arch", ["roberta", "gpt2"])
def test_pissa_residual_plus_BA_is_W_at_init(arch):
    base = tiny(arch)
    model = apply_method(copy.deepcopy(base), method("pissa", r=2, alpha=4, targets=["q", "v"]))
    b = batch(arch)
    assert torch.allclose(model(**b).logits, base(**b).logits, atol=1e-5)
    pre = dict(base.named_modules())
    for name, _, mod in lora_modules(model):
        for t in mod.targets:
            w = pre[name].weight
            W = w.T if isinstance(mod, LoRAConv1D) else w
            if isinstance(mod, LoRAConv1D):
                lo = mod.parts.index(t) * mod.d_part
                W = W[lo : lo + mod.d_part]
            assert torch.allclose(mod.w0(t) + mod.update(t), W, atol=1e-5)  # W_res + s B A = W
            S = torch.linalg.svdvals(W)
            assert torch.allclose(torch.linalg.svdvals(mod.update(t))[:2], S[:2], atol=1e-5)  # the top-r part
            assert torch.allclose(mod.delta_weights()[t], torch.zeros_like(W), atol=1e-6)
    perturb(model)
    with merged(model):  # ΔW relative to the pretrained W = s (B A − B0 A0)
        merged_w = {n: m.weight.detach().clone() for n, _, m in lora_modules(model)}
    for name, _, mod in lora_modules(model):
        dw = mod.delta_weights()
        if isinstance(mod, LoRALinear):
            assert torch.allclose(merged_w[name] - pre[name].weight, dw[mod.targets[0]], atol=1e-5)
        else:
            for t in mod.targets:
                lo = mod.parts.index(t) * mod.d_part
                got = (merged_w[name] - pre[name].weight)[:, lo : lo + mod.d_part].T
                assert torch.allclose(got, dw[t], atol=1e-5)
        assert not mod.factored


# ---------------------------------------------------------------- checkpoints and ΔW for the analysis


def _cell(model_name, m):
    return OmegaConf.create(
        {"method": OmegaConf.to_container(m), "model": {"name": model_name}, "task": {"name": "rte"}}
    )


VARIANTS = [
    ("roberta", "rslora", {}),
    ("gpt2", "rslora", {}),
    ("roberta", "lora_all_linear", {}),
    ("gpt2", "lora_all_linear", {}),
    ("llama", "lora_all_linear", {}),
    ("roberta", "dora", {}),
    ("gpt2", "dora", {"targets": ["q", "v", "o"]}),
    ("roberta", "pissa", {}),
    ("gpt2", "pissa", {}),
]


@pytest.mark.parametrize("arch,name,over", VARIANTS)
def test_checkpoint_round_trip_and_delta_weights(tmp_path, arch, name, over):
    m = method(name, r=2, alpha=4, **over)
    base = tiny(arch)
    model = apply_method(copy.deepcopy(base), m).eval()
    perturb(model, seed=5)
    path = tmp_path / "w.safetensors"
    save_trainable(model, path, _cell(f"tiny-{arch}", m))
    fresh = apply_method(copy.deepcopy(base), m).eval()
    load_trainable(fresh, path, m, model_name=f"tiny-{arch}")
    b = batch(arch)
    assert torch.equal(fresh(input_ids=b["input_ids"]).logits, model(input_ids=b["input_ids"]).logits)
    expect = sorted(delta_weights(model), key=lambda x: (x[0], x[1]))
    got = load_delta_weights(path, base_model=base)
    assert [(l, t) for l, t, _ in got] == [(l, t) for l, t, _ in expect]
    assert all(torch.allclose(a[2], e[2], atol=1e-6) for a, e in zip(got, expect))
    if name in ("dora", "pissa"):
        with pytest.raises(CellMismatch, match="base_model"):
            load_delta_weights(path)
    else:
        got = load_delta_weights(path)  # from the factors alone
        assert all(torch.allclose(a[2], e[2], atol=1e-6) for a, e in zip(got, expect))


def test_rslora_checkpoint_refused_as_lora(tmp_path):
    m = method("rslora", r=2, alpha=4)
    path = tmp_path / "w.safetensors"
    save_trainable(apply_method(tiny("roberta"), m), path, _cell("tiny-roberta", m))
    plain = method("lora", r=2, alpha=4)
    with pytest.raises(CellMismatch, match="different method config"):
        load_trainable(apply_method(tiny("roberta"), plain), path, plain, only="lora")


def test_analysis_reads_rslora_and_refuses_dora(tmp_path):
    m = method("rslora", r=4, alpha=8, targets="all_linear")
    model = apply_method(tiny("llama"), m)
    randomize_B(model)
    path = tmp_path / "w.safetensors"
    save_trainable(model, path, _cell("tiny-llama", m))
    ad = load_adapter(path)
    assert ad.scaling == pytest.approx(8 / 2) and set(ad.targets) == set(ALL_LINEAR["llama"])
    ref = {(l, t): dw for l, t, dw in delta_weights(model)}
    assert all(torch.allclose(f.delta(), ref[k], atol=1e-6) for k, f in ad.factors.items())
    assert all(torch.allclose(f.delta(), ref[k], atol=1e-6) for k, f in adapter_from_model(model).factors.items())
    d = method("dora", r=2)
    dora = apply_method(tiny("roberta"), d)
    with pytest.raises(ValueError, match="delta_weights"):
        adapter_from_model(dora)
    save_trainable(dora, tmp_path / "d.safetensors", _cell("tiny-roberta", d))
    with pytest.raises(ValueError, match="load_delta_weights"):
        load_adapter(tmp_path / "d.safetensors")


def test_stand_ins_do_not_pick_up_the_variants():
    cfg = compose_cfg(["+table=glue"])
    jobs = [["model=minilm", f"method={m}", "task=rte"] for m in ("lora", *VARIANT_METHODS)]
    out = filter_jobs(jobs, cfg)
    assert [j[1] for j in out.kept] == ["method=lora"] and out.n_dropped == len(VARIANT_METHODS)
