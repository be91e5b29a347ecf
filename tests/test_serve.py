"""Many LoRAs on one base (repro/serve.py): switching returns W to W0, the combination is Σ w_i ΔW_i (against PEFT's
add_weighted_adapter "cat"), and a mixed-task batch equals each example run alone through its task's merged model."""

from __future__ import annotations

import copy

import pytest
import torch
from omegaconf import OmegaConf
from transformers import AutoConfig, AutoModelForSequenceClassification

from repro.methods import apply_method
from repro.methods.checkpoint import save_trainable
from repro.serve import MixedBatchModel, ServeError, Switchboard, TaskAdapter, combine, fold, load_head, main
from tests.methods.conftest import method, randomize_B, tiny


def trained_checkpoint(tmp_path, arch="bert", seed=0, name="lora", num_labels=3, **overrides):
    """A tiny model's LoRA with random B and a perturbed head, saved as the runner saves it; the adapted model too."""
    m = method(name, **overrides)
    model = apply_method(tiny(arch, seed=0, num_labels=num_labels), m)
    randomize_B(model, seed=seed)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if p.requires_grad and "lora_" not in n:
                p.add_(torch.randn_like(p) * 0.05)
    path = tmp_path / f"{arch}-{name}-{seed}.safetensors"
    cfg = OmegaConf.create(
        {"method": OmegaConf.to_container(m), "model": {"name": f"tiny-{arch}"}, "task": {"name": f"t{seed}"}}
    )
    save_trainable(model, path, cfg)
    return path, model.eval()


def inputs(seed=1, b=4, T=9, lengths=None):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(2, 120, (b, T), generator=g)
    mask = torch.ones_like(ids)
    for i, n in enumerate(lengths or []):
        mask[i, n:] = 0
        ids[i, n:] = 1
    return {"input_ids": ids, "attention_mask": mask}


@pytest.mark.parametrize("arch", ["bert", "roberta"])
@pytest.mark.parametrize("name,kw", [("lora", {}), ("rslora", {"r": 16}), ("lora_all_linear", {"r": 2})])
def test_merged_adapter_equals_the_trained_lora_model(tmp_path, arch, name, kw):
    """The checkpoint folded into the plain pretrained W0 gives the unmerged LoRA model's outputs."""
    path, lora_model = trained_checkpoint(tmp_path, arch, name=name, **kw)
    board = Switchboard(tiny(arch, seed=0))
    board.switch(TaskAdapter.from_checkpoint(path, tiny(arch, seed=0)))
    x = inputs()
    with torch.no_grad():
        assert torch.allclose(board.model(**x).logits, lora_model(**x).logits, atol=1e-5)


def test_switching_returns_w_to_w0(tmp_path):
    adapters = [TaskAdapter.from_checkpoint(trained_checkpoint(tmp_path, seed=s)[0], tiny("bert")) for s in range(3)]
    base = tiny("bert", seed=0)
    board = Switchboard(base)
    x = inputs()
    for k in range(30):
        board.switch(adapters[k % 3])
    alone = copy.deepcopy(tiny("bert", seed=0))
    fold(alone, adapters[29 % 3])
    load_head(alone, adapters[29 % 3].head)
    with torch.no_grad():
        assert torch.allclose(board.model(**x).logits, alone(**x).logits, atol=1e-5)
    assert board.w0_error() > 1e-3  # an adapter is active
    board.switch(None)
    assert board.w0_error() < 1e-6  # 30 switches later W is W0 up to fp32 rounding


def test_combination_is_the_weighted_sum_of_delta_w_as_peft_cat(tmp_path):
    from peft import LoraConfig, get_peft_model  # optional dependency (the test extra): the oracle for this test only

    (p1, m1), (p2, m2) = (
        trained_checkpoint(tmp_path, "roberta", seed=1, r=8, alpha=16),
        trained_checkpoint(tmp_path, "roberta", seed=2, r=4, alpha=8),
    )
    a1, a2 = TaskAdapter.from_checkpoint(p1, tiny("roberta")), TaskAdapter.from_checkpoint(p2, tiny("roberta"))
    both = combine([a1, a2], [0.7, 0.4], head_of=a1)
    for module in a1.factors:
        assert both.factors[module][0].shape[0] == 8 + 4
        assert torch.allclose(both.delta_w(module), 0.7 * a1.delta_w(module) + 0.4 * a2.delta_w(module), atol=1e-6)
    # the oracle: PEFT's add_weighted_adapter(combination_type="cat") on the same factors
    peft_model = get_peft_model(
        tiny("roberta", seed=0), LoraConfig(r=8, lora_alpha=16, target_modules=["query", "value"]), adapter_name="a1"
    )
    peft_model.add_adapter("a2", LoraConfig(r=4, lora_alpha=8, target_modules=["query", "value"]))
    with torch.no_grad():
        for name, mod in peft_model.named_modules():
            key = name.removeprefix("base_model.model.")
            if key in a1.factors:
                for tag, ours, r, alpha in (("a1", m1, 8, 16), ("a2", m2, 4, 8)):
                    lora = ours.get_submodule(key)
                    mod.lora_A[tag].weight.copy_(lora.lora_A)
                    mod.lora_B[tag].weight.copy_(lora.lora_B)
    peft_model.add_weighted_adapter(["a1", "a2"], [0.7, 0.4], "both", combination_type="cat")
    for name, mod in peft_model.named_modules():
        key = name.removeprefix("base_model.model.")
        if key in a1.factors:
            assert torch.allclose(mod.get_delta_weight("both"), both.delta_w(key), atol=1e-6)


@pytest.mark.parametrize("arch", ["bert", "roberta"])
def test_mixed_batch_equals_each_example_alone_with_its_merged_model(tmp_path, arch):
    """Three tasks (ranks 8, 4 and 8 on all linear layers; heads of 3, 1 and 2 outputs), examples of every task in one
    padded batch: each example's logits equal running it alone, unpadded, through its own task's merged model."""
    specs = [
        dict(seed=1, num_labels=3),
        dict(seed=2, num_labels=1, r=4, alpha=8),
        dict(seed=3, num_labels=2, name="lora_all_linear"),
    ]
    adapters = [TaskAdapter.from_checkpoint(trained_checkpoint(tmp_path, arch, **s)[0], tiny(arch)) for s in specs]
    mixed = MixedBatchModel(tiny(arch, seed=0), adapters)
    lengths = [9, 5, 7, 3, 9, 6]
    task_ids = torch.tensor([0, 1, 2, 2, 1, 0])
    x = inputs(b=6, lengths=lengths)
    out = mixed(task_ids, **x)
    for i, t in enumerate(task_ids.tolist()):
        board = Switchboard(tiny(arch, seed=0, num_labels=adapters[t].num_labels))
        board.switch(adapters[t])
        with torch.no_grad():
            alone = board.model(input_ids=x["input_ids"][i : i + 1, : lengths[i]]).logits[0]
        n = adapters[t].num_labels
        assert (out[i, :n] - alone).abs().max() <= 1e-5, (i, t)


def test_methods_without_s_ba_over_w0_are_refused(tmp_path):
    for name in ("dora", "adapter_h"):
        path, _ = trained_checkpoint(tmp_path, name=name)
        with pytest.raises(ServeError, match="allowed: lora, rslora, pissa, lora_all_linear"):
            TaskAdapter.from_checkpoint(path, tiny("bert"))


@pytest.mark.parametrize("name,kw", [("lora", {"init": "pissa"}), ("rslora", {"init": "pissa", "r": 4}), ("pissa", {})])
def test_pissa_cell_is_served_over_the_pretrained_w_as_peft_computes_it(tmp_path, name, kw):
    """A PiSSA cell (method=pissa, or lora / rslora with init: pissa) trained on the residual W − s B0 A0, switched onto
    the plain pretrained model, gives PEFT's PiSSA model's outputs with the same A, B and head (the oracle:
    init_lora_weights="pissa", whose base layer holds the residual); served as plain LoRA it would add s B A to W."""
    from peft import LoraConfig, get_peft_model  # optional dependency (the test extra): the oracle for this test only

    path, ours = trained_checkpoint(tmp_path, "roberta", name=name, **kw)
    m = ours.roberta.encoder.layer[0].attention.self.query
    theirs = get_peft_model(
        tiny("roberta", seed=0),
        LoraConfig(
            task_type="SEQ_CLS",
            r=m.r,
            lora_alpha=m.alpha,
            use_rslora=m.rslora,
            target_modules=["query", "value"],
            init_lora_weights="pissa",
        ),
    )
    tp = dict(theirs.named_parameters())
    with torch.no_grad():
        for n, p in ours.named_parameters():
            if ".lora_" in n:
                tp[f"base_model.model.{n}.default.weight"].copy_(p)
            elif p.requires_grad:  # the head: PEFT keeps its trained copy in modules_to_save
                tp[f"base_model.model.classifier.modules_to_save.default.{n.removeprefix('classifier.')}"].copy_(p)
    board = Switchboard(tiny("roberta", seed=0))
    board.switch(TaskAdapter.from_checkpoint(path, tiny("roberta", seed=0)))
    x = inputs()
    with torch.no_grad():
        want = theirs.eval()(**x).logits
        assert (want - ours(**x).logits).abs().max() <= 1e-5  # the oracle agrees with the trained model
        assert (board.model(**x).logits - want).abs().max() <= 1e-5


def tiny_llama_classifier(num_labels=2):
    """Llama for sequence classification: its head `score` is an nn.Linear without bias."""
    torch.manual_seed(0)
    cfg = AutoConfig.for_model(
        "llama",
        num_hidden_layers=2,
        hidden_size=32,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=48,
        vocab_size=120,
        max_position_embeddings=64,
        pad_token_id=0,
        num_labels=num_labels,
    )
    return AutoModelForSequenceClassification.from_config(cfg).eval()


def test_mixed_batch_with_bias_free_heads_matches_peft_mixed_adapter_batch():
    """Llama's `score` head has no bias: a mixed batch of two tasks (ranks 4 and 2, each its own score head) equals
    PEFT's mixed-adapter batch (`adapter_names=` per example, heads in modules_to_save)."""
    from peft import LoraConfig, get_peft_model  # optional dependency (the test extra): the oracle for this test only

    base = tiny_llama_classifier()
    assert base.score.bias is None
    theirs = get_peft_model(
        copy.deepcopy(base),
        LoraConfig(
            task_type="SEQ_CLS", r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False
        ),
        adapter_name="t0",
    )
    theirs.add_adapter(
        "t1",
        LoraConfig(
            task_type="SEQ_CLS", r=2, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False
        ),
    )
    g = torch.Generator().manual_seed(5)
    adapters = []
    with torch.no_grad():
        for tag in ("t0", "t1"):
            score = theirs.base_model.model.score.modules_to_save[tag]
            score.weight.add_(torch.randn(score.weight.shape, generator=g))
            factors = {}
            for name, mod in theirs.named_modules():
                if hasattr(mod, "lora_A") and tag in mod.lora_A:
                    key = name.removeprefix("base_model.model.")
                    factors[key] = (mod.lora_A[tag].weight.clone(), mod.scaling[tag] * mod.lora_B[tag].weight.clone())
            adapters.append(TaskAdapter(tag, factors, {"score.weight": score.weight.clone()}, num_labels=2))
    x = inputs(b=4, lengths=[9, 5, 7, 3])
    x["input_ids"][x["attention_mask"] == 0] = 0  # right padding with the pad id, where Llama's pooling looks
    task_ids = torch.tensor([0, 1, 1, 0])
    with torch.no_grad():
        want = theirs.eval()(**x, adapter_names=[f"t{t}" for t in task_ids.tolist()]).logits
    got = MixedBatchModel(base, adapters)(task_ids, **x)
    assert (got - want).abs().max() <= 1e-5


def test_cli_refuses_a_single_record_with_one_line(tmp_path, capsys):
    assert main([str(tmp_path / "seed0.json")]) == 2
    assert capsys.readouterr().err.strip().count("\n") == 0
