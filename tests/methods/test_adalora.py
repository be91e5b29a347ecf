"""AdaLoRA through PEFT: the surgery keeps our names and head, the loss with the penalty equals PeftModel's (per
forward, and through ReproTrainer under gradient accumulation: the penalty once per optimizer step), and in a real
Trainer loop the budget schedule reaches its target budget (target_r × matrices) at step total_step − tfinal."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from datasets import Dataset
from omegaconf import OmegaConf
from transformers import Trainer, TrainerCallback, TrainingArguments

from repro.errors import CellMismatch
from repro.methods import apply_method, parameter_counts
from repro.methods.adalora import loss_term, rank_pattern, target_module_names
from repro.methods.checkpoint import load_delta_weights, load_trainable, read_metadata, save_trainable
from repro.methods.lora import delta_weights
from repro.methods.registry import trainer_callbacks
from repro.tasks.classification import ClassifierLoss
from repro.train import ReproTrainer
from tests.methods.conftest import batch, method, tiny

peft = pytest.importorskip("peft")


def same_random_lora(ours, theirs, g) -> dict:
    """Random values in our AdaLoRA tensors (P, Λ, Q) and the same values in PEFT's (its names: base_model.model.<ours>);
    returns PEFT's parameters by name."""
    with torch.no_grad():
        tp = dict(theirs.named_parameters())
        for n, p in ours.named_parameters():
            if ".lora_" in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
                tp[f"base_model.model.{n}"].copy_(p)
    return tp


def test_surgery_names_head_and_counts():
    model = apply_method(tiny("roberta"), method("adalora", init_r=4, target_r=2, targets=["q", "v"]))
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    assert "roberta.encoder.layer.0.attention.self.query.lora_E.default" in names
    assert all(".lora_" in n or n.startswith("classifier.") for n in names)
    assert not any("ranknum" in n for n in names)
    # per matrix: A (r × d_in) + B (d_out × r) + E (r)
    assert parameter_counts(model)["adapter_params"] == 6 * (4 * 32 + 32 * 4 + 4)


@pytest.mark.parametrize("arch", ["roberta", "gpt2"])
def test_loss_and_grads_equal_peft_adalora(arch):
    base = tiny(arch)
    targets = ["q", "v"] if arch == "roberta" else ["q", "k", "v", "o"]
    ours = apply_method(copy.deepcopy(base), method("adalora", init_r=4, target_r=2, targets=targets, total_step=10))
    cfg = peft.AdaLoraConfig(
        init_r=4,
        target_r=2,
        lora_alpha=8,
        total_step=10,
        tinit=0,
        tfinal=1,
        target_modules=target_module_names(base, targets),
        fan_in_fan_out=arch == "gpt2",
        task_type="CAUSAL_LM" if arch == "gpt2" else "SEQ_CLS",
    )  # so PeftModel calls AdaLoraModel.forward
    theirs = peft.get_peft_model(copy.deepcopy(base), cfg)
    g = torch.Generator().manual_seed(0)
    tp = same_random_lora(ours, theirs, g)
    b = batch(arch)
    lo, lt = ours(**b), theirs(**b)
    assert torch.allclose(lo.logits, lt.logits, atol=1e-6)
    loss = lo.loss + loss_term(ours)  # the penalty: what ReproTrainer adds to the training loss (PEFT: its forward)
    assert not torch.allclose(lo.loss, lt.loss, atol=1e-6)
    assert torch.allclose(loss, lt.loss, atol=1e-6)
    loss.backward(), lt.loss.backward()
    for n, p in ours.named_parameters():
        if ".lora_" in n and p.requires_grad:
            assert torch.allclose(p.grad, tp[f"base_model.model.{n}"].grad, atol=1e-6), n
    for layer, t, dw in delta_weights(ours):  # ΔW = (alpha/r_k) B (A ⊙ E), d_out × d_in
        assert dw.shape[0] == 32 and dw.shape[1] == 32
    assert len(list(delta_weights(ours))) == 3 * len(targets)


@pytest.mark.parametrize("per_device", [8, 2])
def test_reprotrainer_adds_the_penalty_once_per_optimizer_step(tmp_path, per_device):
    """The runner's path (ReproTrainer, ClassifierLoss outside the model): one optimizer step on a batch of 8, as 8 x 1
    and as 2 x 4, hands the optimizer PeftModel's gradient of (mean loss over the 8 + orth_reg_weight · R) and logs that
    loss: the penalty enters once per step, not once per micro-batch."""
    base = tiny("roberta")
    for m in base.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    ours = apply_method(
        copy.deepcopy(base), method("adalora", init_r=4, target_r=2, targets=["q", "v"], tinit=0, tfinal=1)
    )
    cfg = peft.AdaLoraConfig(
        init_r=4,
        target_r=2,
        lora_alpha=8,
        total_step=2,
        tinit=0,
        tfinal=1,
        task_type="SEQ_CLS",
        target_modules=target_module_names(base, ["q", "v"]),
    )
    theirs = peft.get_peft_model(copy.deepcopy(base), cfg)
    g = torch.Generator().manual_seed(0)
    tp = same_random_lora(ours, theirs, g)
    ids = torch.randint(2, 120, (8, 7), generator=g)
    labels = torch.randint(0, 3, (8,), generator=g)
    theirs.train()
    expected = theirs(input_ids=ids, labels=labels).loss
    expected.backward()
    ds = Dataset.from_dict({"input_ids": ids.tolist(), "labels": labels.tolist()})
    args = TrainingArguments(
        output_dir=str(tmp_path),
        max_steps=2,
        per_device_train_batch_size=per_device,
        gradient_accumulation_steps=8 // per_device,
        learning_rate=1e-3,
        max_grad_norm=0,
        lr_scheduler_type="constant",
        report_to=[],
        save_strategy="no",
        logging_steps=1,
        use_cpu=True,
        disable_tqdm=True,
    )
    grads = {}

    class Grab(TrainerCallback):
        def on_pre_optimizer_step(self, args, state, control, model=None, **kw):
            if state.global_step == 0:
                grads.update({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})

    trainer = ReproTrainer(
        model=ours,
        args=args,
        train_dataset=ds,
        compute_loss_func=ClassifierLoss(),
        callbacks=[*trainer_callbacks(ours), Grab()],
    )
    trainer.train()
    logged = next(e["loss"] for e in trainer.state.log_history if "loss" in e)
    assert logged == pytest.approx(expected.item(), rel=1e-5)
    lora = [n for n in grads if ".lora_" in n]
    assert lora
    for n in lora:
        theirs_grad = tp[f"base_model.model.{n}"].grad
        assert torch.allclose(grads[n], theirs_grad, rtol=1e-4, atol=1e-6 * theirs_grad.abs().max().item() + 1e-9), n


def test_schedule_reaches_target_budget_in_trainer_loop(tmp_path):
    torch.manual_seed(0)
    model = apply_method(
        tiny("roberta"), method("adalora", init_r=4, target_r=2, targets=["q", "v"], tinit=2, tfinal=3, deltaT=1)
    )
    g = torch.Generator().manual_seed(1)
    ds = Dataset.from_dict(
        {
            "input_ids": torch.randint(2, 120, (64, 8), generator=g).tolist(),
            "labels": torch.randint(0, 3, (64,), generator=g).tolist(),
        }
    )
    args = TrainingArguments(
        output_dir=str(tmp_path),
        max_steps=12,
        per_device_train_batch_size=8,
        learning_rate=1e-2,
        report_to=[],
        save_strategy="no",
        logging_steps=100,
        use_cpu=True,
        disable_tqdm=True,
    )
    seen = {}

    class Probe(trainer_callbacks(model)[0].__class__.__mro__[1]):  # a TrainerCallback after AdaLoRA's
        def on_optimizer_step(self, args, state, control, model=None, **kw):
            seen[state.global_step] = sum(rank_pattern(model).values()) if rank_pattern(model) else None

    trainer = ReproTrainer(model=model, args=args, train_dataset=ds, callbacks=[*trainer_callbacks(model), Probe()])
    trainer.train()
    cfg = model._adalora_tuner.peft_config["default"]
    n_mat = 2 * 3
    assert cfg.total_step == 12
    assert seen[0] is None or seen[0] == 4 * n_mat  # full budget during tinit
    final = 12 - 3
    assert seen[final] == 2 * n_mat  # the target budget at total_step − tfinal
    assert all(seen[s] == 2 * n_mat for s in range(final, 12))
    assert all(seen[s] is None or seen[s] >= 2 * n_mat for s in range(final))
    save_trainable(
        model,
        tmp_path / "w.safetensors",
        OmegaConf.create({"method": {"name": "adalora", "targets": ["q", "v"]}, "model": {"name": "tiny-roberta"}}),
    )
    saved = json.loads(read_metadata(tmp_path / "w.safetensors")["rank_pattern"])
    assert saved == rank_pattern(model) and sum(saved.values()) == 2 * n_mat
    # masked triplets stay masked after the final allocation
    for name, module in model.named_modules():
        if hasattr(module, "lora_E") and "default" in getattr(module, "lora_E", {}):
            kept = rank_pattern(model)[name]
            assert int((module.lora_E["default"] != 0).sum()) <= kept


def test_final_step_must_be_reached(tmp_path):
    model = apply_method(
        tiny("roberta"), method("adalora", init_r=4, target_r=2, targets=["q", "v"], tinit=5, tfinal=0)
    )
    ds = Dataset.from_dict({"input_ids": [[3, 4, 5]] * 8, "labels": [0] * 8})
    args = TrainingArguments(
        output_dir=str(tmp_path),
        max_steps=4,
        per_device_train_batch_size=4,
        report_to=[],
        save_strategy="no",
        use_cpu=True,
        disable_tqdm=True,
    )
    with pytest.raises(CellMismatch, match="final allocation"):
        Trainer(model=model, args=args, train_dataset=ds, callbacks=trainer_callbacks(model)).train()


def test_gpt2_needs_q_k_v_together():
    with pytest.raises(CellMismatch, match="fused"):
        apply_method(tiny("gpt2"), method("adalora", targets=["q", "v"]))


def test_checkpoint_round_trip_and_delta_weights(tmp_path):
    m = method("adalora", init_r=4, target_r=2, targets=["q", "v"])
    base = tiny("roberta")
    model = apply_method(copy.deepcopy(base), m).eval()
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=g) * 0.1)
        model.roberta.encoder.layer[0].attention.self.query.lora_E["default"][1:] = 0  # a pruned triplet
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
    got, expect = load_delta_weights(path, base_model=base), list(delta_weights(model))
    assert len(got) == len(expect) == 6 and all(
        torch.allclose(a[2], e[2]) for a, e in zip(got, sorted(expect, key=lambda x: x[:2]))
    )
    q = model.roberta.encoder.layer[0].attention.self.query
    A, B, E = (getattr(q, k)["default"] for k in ("lora_A", "lora_B", "lora_E"))
    assert torch.allclose(got[0][2], q.scaling["default"] * B @ (A * E) / (q.ranknum["default"] + 1e-5))
