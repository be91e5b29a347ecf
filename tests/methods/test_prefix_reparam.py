"""PreLayer trained through Li & Liang's MLP reparametrization (repro/methods/prefix.py, `reparam: mlp`): the prefix
is MLP(P') while training, gradients reach P' and the MLP, dropping the MLP leaves the model's function unchanged,
the checkpoint holds the prefix alone (and loads into a plain PreLayer), and a tiny model learns through it."""

from __future__ import annotations

import json
import subprocess
import sys

import datasets
import pytest
import torch
from omegaconf import OmegaConf
from safetensors import safe_open
from transformers import AutoConfig, AutoModelForCausalLM, TrainingArguments

from repro.methods import apply_method, parameter_counts
from repro.methods.checkpoint import load_trainable, save_trainable
from repro.methods.registry import trainer_callbacks
from repro.methods.targets import blocks
from repro.tasks.generation import CompletionLoss, CompletionTrainer
from tests.methods.conftest import DECODERS, batch, method, tiny

L, D, MID = 3, 32, 16  # the tiny models' blocks and width; a small MLP hidden width


def reparam(name: str = "prefix_layer", **over):
    return method(name, **{"l_p": 3, "l_i": 2, "reparam": "mlp", "mid_dim": MID, **over})


def entering_blocks(model, inputs) -> list[torch.Tensor]:
    """The hidden state entering each block, after the method's own pre-hook wrote the prefix (hooks run in order)."""
    seen, handles = [], []
    for block in blocks(model):
        handles.append(
            block.register_forward_pre_hook(
                lambda m, a, kw: seen.append((a[0] if a else kw["hidden_states"]).detach().clone()), with_kwargs=True
            )
        )
    try:
        model(**inputs)
    finally:
        for h in handles:
            h.remove()
    return seen


@pytest.mark.parametrize("arch", DECODERS)
def test_prefix_is_the_mlp_of_p_prime_while_training(arch):
    """Every block's input at the special positions is MLP(P') -- computed here by hand from the MLP's weights,
    Linear -> tanh -> Linear, row i of P' giving slot i, the output's k-th d-wide chunk entering block k."""
    model = apply_method(tiny(arch), reparam()).train()
    pt = model.prefix_tuning
    w1, b1 = pt.mlp[0].weight, pt.mlp[0].bias
    w2, b2 = pt.mlp[2].weight, pt.mlp[2].bias
    want = (torch.tanh(pt.prefix_input @ w1.T + b1) @ w2.T + b2).view(5, L, D)  # (slot, block, d)
    b = batch(arch)
    ctx = int((b["labels"][0] != -100).float().argmax())  # the infix goes right before the first supervised token
    hidden = entering_blocks(model, b)
    assert len(hidden) == L
    for k, h in enumerate(hidden):
        assert torch.allclose(h[:, :3], want[:3, k].expand(2, 3, D), atol=1e-6)  # the prefix, first
        assert torch.allclose(h[:, 3 + ctx : 5 + ctx], want[3:, k].expand(2, 2, D), atol=1e-6)  # the infix
    assert pt.prefix().shape == (L, 5, D)


@pytest.mark.parametrize("arch", DECODERS)
def test_gradients_reach_p_prime_and_the_mlp_only(arch):
    model = apply_method(tiny(arch), reparam()).train()
    model(**batch(arch)).loss.backward()
    trained = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert set(trained) == {
        "prefix_tuning.prefix_input",
        "prefix_tuning.mlp.0.weight",
        "prefix_tuning.mlp.0.bias",
        "prefix_tuning.mlp.2.weight",
        "prefix_tuning.mlp.2.bias",
    }
    for n, p in trained.items():
        assert p.grad is not None and p.grad.abs().sum() > 0, n
    assert all(p.grad is None for n, p in model.named_parameters() if n not in trained)


@pytest.mark.parametrize("arch", DECODERS)
@pytest.mark.parametrize("name", ["prefix_layer", "prefix_embed"])
def test_dropping_the_mlp_keeps_the_logits_and_the_cache(arch, name):
    """Before and after the drop: the same logits (labels in: the infix placed as in training), the same greedy
    continuation with the KV cache; afterwards the trained tensor is the plain method's, and the MLP is gone."""
    model = apply_method(tiny(arch), reparam(name)).eval()
    b = batch(arch)
    prompt = b["input_ids"][:1, :5]
    with torch.no_grad():
        before = model(**b).logits
        gen_before = model.generate(input_ids=prompt, max_new_tokens=4, do_sample=False, pad_token_id=0)
    model.prefix_tuning.drop_reparametrization()
    with torch.no_grad():
        after = model(**b).logits
        gen_after = model.generate(input_ids=prompt, max_new_tokens=4, do_sample=False, pad_token_id=0)
    assert torch.allclose(before, after, atol=1e-6, rtol=0)
    assert torch.equal(gen_before, gen_after)
    stored = "prefix_tuning.embedding" if name == "prefix_embed" else "prefix_tuning.activations"
    assert [n for n, p in model.named_parameters() if p.requires_grad] == [stored]
    assert not hasattr(model.prefix_tuning, "mlp") and not hasattr(model.prefix_tuning, "prefix_input")


@pytest.mark.parametrize("arch", DECODERS)
def test_counts_are_li_and_liangs_the_prefix_that_remains(arch):
    """|Θ| (adapter_params) = L x d x (l_p + l_i) before and after the drop; trainable_params counts P' and the MLP
    while they train: n·d + (d·mid + mid) + (mid·L·d + L·d)."""
    model = apply_method(tiny(arch), reparam())
    plain = parameter_counts(apply_method(tiny(arch), method("prefix_layer", l_p=3, l_i=2)))
    counts = parameter_counts(model)
    assert counts["adapter_params"] == plain["adapter_params"] == L * D * 5
    assert counts["trainable_params"] == 5 * D + (D * MID + MID) + (MID * L * D + L * D)
    model.prefix_tuning.drop_reparametrization()
    assert parameter_counts(model) == plain


def test_checkpoint_holds_the_prefix_alone_and_loads_into_plain_prelayer(tmp_path):
    """The saved checkpoint (after the drop) holds `prefix_tuning.activations` only; a PreLayer built without the
    reparametrization loads it (reparam and mid_dim are training-only fields) and gives the same logits."""
    m = reparam()
    model = apply_method(tiny("llama"), m).eval()
    model.prefix_tuning.drop_reparametrization()
    cfg = OmegaConf.create(
        {"method": OmegaConf.to_container(m), "model": {"name": "tiny-llama"}, "task": {"name": "e2e"}}
    )
    path = tmp_path / "seed0.safetensors"
    save_trainable(model, path, cfg, steps=1)
    with safe_open(str(path), framework="pt") as f:
        assert list(f.keys()) == ["prefix_tuning.activations"]
        assert tuple(f.get_tensor("prefix_tuning.activations").shape) == (L, 5, D)
    plain_cfg = method("prefix_layer", l_p=3, l_i=2)
    plain = apply_method(tiny("llama"), plain_cfg).eval()
    load_trainable(plain, path, plain_cfg)
    b = batch("llama")
    with torch.no_grad():
        assert torch.allclose(plain(**b).logits, model(**b).logits, atol=1e-6, rtol=0)


def test_random_init_is_li_and_liangs_and_follows_init_seed():
    """init: random, their full-data setting: P' ~ N(0, 1) (nn.Embedding's init), the MLP as nn.Linear initialises
    it; seeded by init_seed, not by the global RNG."""
    torch.manual_seed(123)
    a = apply_method(tiny("gpt2"), reparam(init="random", init_seed=1)).prefix_tuning
    torch.manual_seed(456)
    b = apply_method(tiny("gpt2"), reparam(init="random", init_seed=1)).prefix_tuning
    c = apply_method(tiny("gpt2"), reparam(init="random", init_seed=2)).prefix_tuning
    assert torch.equal(a.prefix_input, b.prefix_input) and torch.equal(a.mlp[2].weight, b.mlp[2].weight)
    assert not torch.equal(a.prefix_input, c.prefix_input)
    bound = 1 / MID**0.5  # nn.Linear: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weight and bias
    assert a.mlp[2].weight.abs().max() <= bound and a.mlp[2].bias.abs().max() <= bound
    assert 0.7 < a.prefix_input.std() < 1.3


@pytest.mark.parametrize("arch", DECODERS)
@pytest.mark.parametrize("name", ["prefix_layer", "prefix_embed"])
def test_real_token_init_starts_where_the_plain_method_starts(arch, name):
    """init: real_tokens (the default): MLP(P') is, at the start, exactly the prefix the plain method starts from
    (the same init_seed's random tokens), so both give the same logits before any step; P', W_1, b_1, b_2 keep their
    PyTorch init and W_2 is the least-norm solution (n = 5 rows <= mid_dim = 16)."""
    b = batch(arch)
    plain = apply_method(tiny(arch), method(name, l_p=3, l_i=2, init_seed=4)).eval()
    model = apply_method(tiny(arch), reparam(name, init_seed=4)).eval()
    assert torch.allclose(model.prefix_tuning.prefix(), plain.prefix_tuning.prefix(), atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        assert torch.allclose(model(**b).logits, plain(**b).logits, atol=1e-5, rtol=0)
    random = apply_method(tiny(arch), reparam(name, init="random", init_seed=4)).prefix_tuning
    assert torch.equal(model.prefix_tuning.prefix_input, random.prefix_input)  # only W_2 was solved for
    assert torch.equal(model.prefix_tuning.mlp[0].weight, random.mlp[0].weight)


def test_a_tiny_model_learns_through_it_and_the_trainer_drops_the_mlp(tmp_path):
    """The runner's training path (CompletionTrainer with the method's callbacks, repro.methods.registry): a frozen
    tiny Llama learns a completion shared by 8 random contexts through the reparametrized prefix (the dev loss falls
    by more than half in 40 steps), and when training ends the MLP is gone: the model runs on the stored prefix alone,
    with the loss training reached. (Initialised at std 0.2, not transformers' 0.02, so that a frozen random model's
    logits can move at all.)"""
    torch.manual_seed(0)
    config = AutoConfig.for_model(
        "llama",
        num_hidden_layers=2,
        hidden_size=32,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=64,
        vocab_size=120,
        max_position_embeddings=64,
        initializer_range=0.2,
        tie_word_embeddings=True,
    )
    model = apply_method(AutoModelForCausalLM.from_config(config), reparam(l_p=4, l_i=0))
    ctx = torch.randint(2, 120, (8, 5), generator=torch.Generator().manual_seed(0))
    ids = torch.cat([ctx, torch.arange(10, 16).expand(8, 6)], dim=1)
    labels = ids.masked_fill(torch.arange(11) < 5, -100)
    data = datasets.Dataset.from_dict({"input_ids": ids.tolist(), "labels": labels.tolist()})
    args = TrainingArguments(
        output_dir=str(tmp_path),
        per_device_train_batch_size=8,
        max_steps=40,
        learning_rate=1e-2,
        lr_scheduler_type="constant",
        report_to="none",
        save_strategy="no",
        use_cpu=True,
        seed=0,
        disable_tqdm=True,
        prediction_loss_only=True,
    )
    trainer = CompletionTrainer(
        model=model,
        args=args,
        train_dataset=data,
        eval_dataset=data,
        compute_loss_func=CompletionLoss(model, 0.0),
        callbacks=trainer_callbacks(model),
    )
    start = trainer.evaluate()["eval_loss"]
    trainer.train()
    assert not model.prefix_tuning.reparametrized  # dropped by the method's callback at on_train_end
    assert [n for n, p in model.named_parameters() if p.requires_grad] == ["prefix_tuning.activations"]
    end = trainer.evaluate()["eval_loss"]
    assert end < 0.5 * start, (start, end)
    with torch.no_grad():  # the stored prefix is what the model runs on: moving it moves the loss
        model.prefix_tuning.activations.add_(torch.randn_like(model.prefix_tuning.activations))
    assert trainer.evaluate()["eval_loss"] > end


def test_a_cell_decodes_and_stores_the_prefix_alone(tmp_path, data_dir):
    """Through the runner (repro.run, an E2E cell of tiny-gpt2, the best dev checkpoint loaded at the end): the record
    counts |Θ| as Li & Liang do (L x d x l_p) and the training-time count apart, the weights file holds the prefix
    alone, and the decoded outputs come from it."""
    cmd = [
        sys.executable,
        "-m",
        "repro.run",
        "+table=e2e",
        "model=tiny-gpt2",
        "method=prefix_layer",
        "method.l_p=4",
        "method.reparam=mlp",
        "method.mid_dim=16",
        "task=e2e",
        "train.max_steps=4",
        "train.eval_strategy=steps",
        "train.eval_steps=2",
        "decode.checkpoint=best",
        "train.global_batch_size=4",
        "decode.max_inputs=2",
        "decode.num_beams=2",
        "data.max_train_samples=16",
        "data.max_eval_samples=4",
        f"paths.results_dir={tmp_path}",
        f"paths.log_dir={tmp_path}/logs",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    cell = tmp_path / "e2e" / "tiny-gpt2" / "prefix_layer" / "e2e"
    rec = json.loads((cell / "seed0.json").read_text())
    L, d = 2, 64  # conf/model/tiny-gpt2.yaml
    assert rec["status"] == "ok" and rec["selected"]["rule"] == "best" and rec["decode"]["inputs"] == 2
    assert rec["adapter_params"] == L * d * 4
    assert rec["trainable_params"] == 4 * d + (d * 16 + 16) + (16 * L * d + L * d)
    with safe_open(str(cell / "seed0.safetensors"), framework="pt") as f:
        assert list(f.keys()) == ["prefix_tuning.activations"]
        assert tuple(f.get_tensor("prefix_tuning.activations").shape) == (L, 4, d)
