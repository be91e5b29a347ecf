"""The shared training mechanics (repro.train): gradient accumulation, the device check, the divergence guard."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import datasets
import pytest
import torch
from omegaconf import OmegaConf, open_dict
from transformers import Trainer

import repro.train as rt
from repro import PROJECT_ROOT
from repro.cell import resolve_cell
from repro.data.nlg import encode_example
from repro.errors import ReproError
from repro.methods import apply_method
from repro.models import load_model, load_tokenizer
from repro.records import record_path
from repro.run import run_cell
from repro.tasks import classification, generation
from tests import dist_eval

TEXTS = [
    "a b",
    "the cat sat on the mat",
    "no",
    "one two three four five six seven eight nine",
    "hello there",
    "it rains",
    "a much longer sentence than most of the others here",
    "yes",
]
PAIRS = [
    ("name : Blue Spice | Type : pub", "Blue Spice is a pub ."),
    ("name : Zizzi", "Zizzi ."),
    (
        "name : The Mill | Type : coffee shop | food : French | area : riverside",
        "The Mill is a French coffee shop by the river .",
    ),
    ("name : Aromi", "Aromi is here ."),
    ("name : Cotto | food : Indian", "Cotto serves Indian food ."),
    ("name : Wildwood | Type : pub | priceRange : high", "Wildwood is an expensive pub ."),
    ("name : Alimentum", "Alimentum ."),
    ("name : Loch Fyne | food : Japanese", "Loch Fyne has Japanese food ."),
]

# model families without a conf/model file: tiny configs from transformers, loaded by the runner's own loader
BERT = {
    "name": "tiny-bert",
    "source": "tiny",
    "model_type": "bert",
    "kind": "encoder",
    "tokenizer_hub_id": "roberta-base",
    "arch": {
        "num_hidden_layers": 2,
        "hidden_size": 32,
        "num_attention_heads": 4,
        "intermediate_size": 64,
        "max_position_embeddings": 128,
        "type_vocab_size": 2,
    },
}
LLAMA = {
    "name": "tiny-llama",
    "source": "tiny",
    "model_type": "llama",
    "kind": "decoder",
    "tokenizer_hub_id": "gpt2",
    "arch": {
        "num_hidden_layers": 2,
        "hidden_size": 32,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "intermediate_size": 64,
        "max_position_embeddings": 128,
    },
}
FAMILIES = {  # family: (model group, task, model config replacing the group's, or None)
    "roberta": ("tiny-roberta", "rte", None),
    "deberta-v2": ("tiny-deberta", "rte", None),
    "bert": ("tiny-roberta", "rte", BERT),
    "gpt2": ("tiny-gpt2", "e2e", None),
    "llama": ("tiny-gpt2", "e2e", LLAMA),
}


def one_step(compose_config, data_dir, tmp_path, family: str, max_per_device: int) -> tuple[float, dict]:
    """One optimizer step on a global batch of 8 through the runner's training path: (logged loss, gradients)."""
    group, task, model_cfg = FAMILIES[family]
    smoothing = 0.1 if task == "e2e" else 0.0  # the NLG tables' label smoothing
    overrides = [
        f"model={group}",
        "method=ft",
        f"task={task}",
        "train.global_batch_size=8",
        f"train.max_per_device_batch_size={max_per_device}",
        "train.max_steps=1",
        "train.logging_steps=1",
        "train.warmup_ratio=0",
        "train.lr_scheduler_type=constant",
        "train.max_grad_norm=0",
        "train.select=last",
        f"train.label_smoothing={smoothing}",
    ]
    cfg = compose_config(overrides + (["decode.checkpoint=last"] if task == "e2e" else []))
    if model_cfg:
        with open_dict(cfg):
            cfg.model = OmegaConf.create(model_cfg)
    tok = load_tokenizer(cfg.model, data_dir)
    torch.manual_seed(0)
    model = apply_method(load_model(cfg.model, cfg.task, tok), cfg.method)
    for m in model.modules():  # dropout masks depend on the micro-batch shapes
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    grads = {}
    for name, p in model.named_parameters():  # the accumulated gradient, as the optimizer gets it
        if p.requires_grad:
            p.register_post_accumulate_grad_hook(lambda p, name=name: grads.__setitem__(name, p.grad.detach().clone()))
    if task == "e2e":
        train = datasets.Dataset.from_list([encode_example(tok, c, t, 64) for c, t in PAIRS])
        out = generation.train_and_score(
            cfg, model, tok, {"train": train, "dev": train, "test": []}, tmp_path / f"ckpt{max_per_device}"
        )
    else:
        train = datasets.Dataset.from_list([{**tok(t), "label": i % 2} for i, t in enumerate(TEXTS)])
        out = classification.train_and_score(
            cfg, model, tok, {"train": train, "dev": train}, tmp_path / f"ckpt{max_per_device}"
        )
    assert out.steps == 1
    assert (out.batch["per_device"], out.batch["accumulation"]) == ((8, 1) if max_per_device == 8 else (2, 4))
    return out.history["train_loss"][0]["loss"], grads


@pytest.mark.parametrize("family", list(FAMILIES))
def test_accumulation_gives_the_unaccumulated_loss_and_gradients(compose_config, data_dir, tmp_path, family):
    """Issue 16: a global batch of 8 as 8 x 1 and as 2 x 4 must log the same first-step loss and hand the optimizer the
    same gradients. transformers 5 takes a model that accepts **kwargs to divide its loss by the whole accumulated
    batch; the sequence classifiers do not (a per-micro-batch mean), so 2 x 4 logged 4x the loss, with 4x gradients."""
    loss_8, grads_8 = one_step(compose_config, data_dir, tmp_path, family, 8)
    loss_2x4, grads_2x4 = one_step(compose_config, data_dir, tmp_path, family, 2)
    print(f"{family}: first-step loss 8 x 1 = {loss_8:.4f}, 2 x 4 = {loss_2x4:.4f}")
    assert loss_2x4 == pytest.approx(loss_8, rel=1e-5)
    assert grads_8.keys() == grads_2x4.keys() and grads_8
    # fp32 sums in another order (one batch of 8 vs 4 accumulated pairs) differ by ~eps x the tensor's scale, so the
    # tolerance follows each tensor's largest entry; the key bias's gradient is analytically zero (softmax ignores a
    # constant over keys) and only rounding noise, left out by the same scale rule. The bug this guards (4x) is 300%.
    top = max(g.abs().max().item() for g in grads_8.values())
    for name, g in grads_8.items():
        scale = g.abs().max().item()
        if scale < 1e-6 * top:
            continue
        assert torch.allclose(grads_2x4[name], g, rtol=1e-4, atol=1e-4 * scale), name


def test_several_gpus_without_torchrun_are_refused_before_anything_is_written(
    compose_config, data_dir, tmp_path, monkeypatch
):
    """Issue 16: with 2 visible GPUs and no torchrun the Trainer used DataParallel, a global batch 2x the record's."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    overrides = ["model=tiny-roberta", "method=lora", "task=rte", "train.max_steps=2"]
    with pytest.raises(ReproError) as err:
        run_cell(resolve_cell(compose_config(overrides), overrides))
    assert "torchrun --nproc_per_node=2" in str(err.value) and "CUDA_VISIBLE_DEVICES" in str(err.value)
    assert [p for p in tmp_path.rglob("*") if p.is_file() and "logs" not in p.relative_to(tmp_path).parts] == []
    monkeypatch.setenv("LOCAL_RANK", "0")  # one process per GPU (torchrun): allowed
    rt.check_devices()


def test_record_states_the_real_global_batch(compose_config, monkeypatch):
    cfg = compose_config(["train.global_batch_size=64", "train.max_per_device_batch_size=8"])
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert rt.batch_record(cfg.train) == {"per_device": 8, "accumulation": 4, "world_size": 2, "global": 64}


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_the_record_says_the_precision_training_ran_in(compose_config, monkeypatch, precision):
    """Issue 31 item 2: the record's `precision` is what the training steps ran in, seen from inside them (the dtype
    of the model's linear layers' outputs), not only what the config asked for."""
    ran = set()
    real = rt.ReproTrainer.compute_loss

    def seen(module, args, output):
        ran.add({torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32"}[output.dtype])

    def watched(self, model, *args, **kwargs):
        if not model.training:
            return real(self, model, *args, **kwargs)
        hooks = [m.register_forward_hook(seen) for m in model.modules() if isinstance(m, torch.nn.Linear)]
        try:
            return real(self, model, *args, **kwargs)
        finally:
            for h in hooks:
                h.remove()

    monkeypatch.setattr(rt.ReproTrainer, "compute_loss", watched)
    overrides = [
        "model=tiny-roberta",
        "method=lora",
        "task=rte",
        "train.max_steps=2",
        "data.max_train_samples=16",
        "data.max_eval_samples=8",
        f"train.precision={precision}",
    ]
    record = run_cell(resolve_cell(compose_config(overrides), overrides))
    assert record["status"] == "ok", record.get("error")
    assert ran == {precision} and record["precision"] == precision


class FakeAccelerator:
    num_processes, device = 1, "cpu"

    def __init__(self, skips):
        self.skips = iter(skips)

    @property
    def optimizer_step_was_skipped(self):
        return next(self.skips)


def test_guard_counts_skipped_steps_and_needs_a_streak():
    """A skipped step or a lone non-finite loss is counted, not fatal; `patience` non-finite steps in a row are."""
    from types import SimpleNamespace

    nan, one = torch.tensor(float("nan")), torch.tensor(1.0)
    losses = [one, nan, one, nan, nan, one, nan, nan, nan, one]  # per optimizer step
    skips = [False, True, False, True, True, False, True, True, True, False]
    guard = rt.DivergenceGuard(patience=3)
    guard.trainer = SimpleNamespace(accelerator=FakeAccelerator(skips))
    control = SimpleNamespace(should_training_stop=False)
    for step, loss in enumerate(losses, 1):
        guard.saw_loss(one)  # micro-batches of one step: one non-finite makes the step non-finite
        guard.saw_loss(loss)
        guard.on_step_end(None, SimpleNamespace(global_step=step), control)
        if control.should_training_stop:
            break
    assert step == 9 and guard.diverged_at == 7 and guard.skipped_steps == 6 and guard.nonfinite_steps == 6
    assert "3 consecutive steps from step 7" in guard.failure()

    ended_nonfinite = rt.DivergenceGuard(patience=3)
    for step, finite in enumerate([True, True, False], 1):
        assert not ended_nonfinite.end_step(step, finite, skipped=False)
    assert "still not finite at the last step" in ended_nonfinite.failure()
    recovered = rt.DivergenceGuard(patience=3)
    for step, finite in enumerate([True, False, False, True], 1):
        recovered.end_step(step, finite, skipped=False)
    assert recovered.failure() is None and recovered.nonfinite_steps == 2


@pytest.mark.parametrize("from_step,until_step,status", [(2, 2, "ok"), (2, 99, "failed")])
def test_cell_survives_one_nonfinite_loss_and_fails_when_it_stays(
    compose_config, data_dir, monkeypatch, from_step, until_step, status
):
    """A real CPU cell with a NaN training loss injected at optimizer steps from_step..until_step (gradients stay
    finite, as after the fp16 scaler's skip): once, the cell ends ok with the step counted; from step 2 on, it is
    recorded failed with the reason."""
    real, calls = Trainer.compute_loss, []

    def injected(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss = real(self, model, inputs, return_outputs, num_items_in_batch)
        if torch.is_grad_enabled():  # training, not evaluation
            calls.append(1)
            if from_step <= len(calls) <= until_step:
                return loss + float("nan")
        return loss

    monkeypatch.setattr(Trainer, "compute_loss", injected)
    overrides = [
        "model=tiny-roberta",
        "method=lora",
        "task=rte",
        "train.max_steps=6",
        "train.logging_steps=1",
        "++train.divergence_patience=3",
        "train.global_batch_size=4",
        "train.max_per_device_batch_size=4",
        "data.max_eval_samples=8",
    ]
    cfg = resolve_cell(compose_config(overrides), overrides)
    record = run_cell(cfg)
    assert record["status"] == status, record.get("error")
    if status == "ok":
        assert record["batch"] == {"per_device": 4, "accumulation": 1, "world_size": 1, "global": 4}
        assert record["steps"] == 6 and record["nonfinite_steps"] == 1 and record["skipped_steps"] == 0
        assert all(e["loss"] == e["loss"] for e in record["history"]["train_loss"])  # logged losses stay finite
    else:
        assert "diverged: training loss not finite for 3 consecutive steps from step 2" in record["error"]
    assert json.loads(record_path(cfg).read_text())["status"] == status


@pytest.mark.parametrize("num_labels", [1, 3])
def test_classifier_loss_is_the_models_mean_over_the_accumulated_batch(num_labels):
    """ClassifierLoss = transformers' own loss (MSE for STS-B's one label, else cross-entropy) times the micro-batch
    share of the accumulated batch: two halves sum to the loss of the whole."""
    torch.manual_seed(0)
    logits = torch.randn(6, num_labels)
    labels = torch.randn(6) if num_labels == 1 else torch.randint(0, num_labels, (6,))
    whole = (
        torch.nn.functional.mse_loss(logits.squeeze(-1), labels)
        if num_labels == 1
        else torch.nn.functional.cross_entropy(logits, labels)
    )
    loss = classification.ClassifierLoss()
    halves = [loss({"logits": logits[i : i + 3]}, labels[i : i + 3], torch.tensor(6)) for i in (0, 3)]
    assert torch.isclose(sum(halves), whole) and torch.isclose(loss({"logits": logits}, labels), whole)


@pytest.mark.skipif(not torch.distributed.is_available() or shutil.which("torchrun") is None, reason="no torchrun")
def test_dev_loss_is_one_sum_over_one_count(tmp_path, data_dir):
    """Issue 31 item 1: the same weights give the same dev loss at eval batch 1, 7 and 32 and on 2 processes (torchrun,
    gloo): one sum over the dev set's real targets (STS-B's examples, E2E's completion tokens) divided by one count.
    The Trainer's own averaged per-batch means over examples (E2E: 10.8007 at batch 1, 10.8025 at 7) and, on 2
    processes, normalised each by a count that includes the duplicates padding the last round (STS-B +9% at batch 7)."""
    out = tmp_path / "two.json"
    cmd = [shutil.which("torchrun"), "--nproc_per_node=2", "-m", "tests.dist_eval", str(out), "1,7"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    two = json.loads(out.read_text())
    for task in dist_eval.CELLS:
        one = dist_eval.dev_losses(task, [1, 7, 32], tmp_path / "one")
        found = {f"1 process, batch {b}": v for b, v in one.items()}
        found |= {f"2 processes, batch {b}": v for b, v in two[task].items()}
        print(task, found)
        assert all(v == pytest.approx(one[1], rel=1e-6) for v in found.values()), (task, found)


@pytest.mark.parametrize("method,adapters_only", [("lora", True), ("ft", False)])
def test_trainer_checkpoints_hold_the_trainable_tensors_only(tmp_path, data_dir, method, adapters_only):
    """Issue 16 item 9: a LoRA cell's Trainer checkpoint holds LoRA's A, B and the task head, not the frozen backbone;
    FT's holds every weight. The cell resumes from and selects its best epoch through such checkpoints (the killed-cell
    test in tests/test_records_cells.py resumes a LoRA cell from one)."""
    from safetensors import safe_open

    env = {**os.environ, "REPRO_RESULTS_DIR": str(tmp_path / "results"), "REPRO_LOG_DIR": str(tmp_path / "logs")}
    cmd = [
        sys.executable,
        "-m",
        "repro.run",
        "+table=glue",
        "model=tiny-roberta",
        f"method={method}",
        "task=rte",
        "train.max_steps=6",
        "train.eval_strategy=steps",
        "train.eval_steps=3",
        "train.global_batch_size=4",
        "train.max_per_device_batch_size=4",
        "data.max_train_samples=32",
        "data.max_eval_samples=8",
        "train.keep_checkpoints=true",
    ]
    out = subprocess.run(cmd, cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, (out.stdout + out.stderr)[-3000:]
    ckpts = sorted(
        (tmp_path / f"results/glue/tiny-roberta/{method}/rte/checkpoints/seed0").glob("checkpoint-*/model.safetensors")
    )
    assert ckpts
    with safe_open(str(ckpts[-1]), "pt") as f:
        keys = set(f.keys())
    backbone = {k for k in keys if "lora_" not in k and "classifier" not in k}
    if adapters_only:
        assert keys and not backbone and any("lora_A" in k for k in keys) and any("classifier" in k for k in keys), (
            sorted(keys)
        )
    else:
        assert any("encoder.layer.0.attention.self.query.weight" in k for k in backbone), sorted(keys)[:10]


# ------------------------------------------------------------------ the fast path (train.fast_path, issue 27)


def first_losses(compose_config, data_dir, tmp_path, family: str, method: str, fast: bool) -> tuple[list, dict]:
    """The logged losses of 4 optimizer steps (batch 4, bf16) through the runner's training path, and the engine."""
    group, task, model_cfg = FAMILIES[family]
    overrides = [
        f"model={group}",
        f"method={method}",
        f"task={task}",
        "train.global_batch_size=4",
        "train.max_per_device_batch_size=4",
        "train.max_steps=4",
        "train.logging_steps=1",
        "train.learning_rate=1e-2",
        "train.warmup_ratio=0",
        "train.lr_scheduler_type=constant",
        "train.select=last",
        "train.precision=bf16",
        "train.group_by_length=true",  # the fast path groups by length: the reference sees the same batches
        f"train.fast_path={str(fast).lower()}",
        f"train.label_smoothing={0.1 if task == 'e2e' else 0.0}",
    ]
    cfg = compose_config(overrides + (["decode.checkpoint=last"] if task == "e2e" else []))
    if model_cfg:
        with open_dict(cfg):
            cfg.model = OmegaConf.create(model_cfg)
    tok = load_tokenizer(cfg.model, data_dir)
    torch.manual_seed(0)
    model = apply_method(load_model(cfg.model, cfg.task, tok), cfg.method)
    out_dir = tmp_path / f"ckpt-{method}-{fast}"
    if task == "e2e":
        train = datasets.Dataset.from_list([encode_example(tok, c, t, 64) for c, t in PAIRS * 2])
        out = generation.train_and_score(cfg, model, tok, {"train": train, "dev": train, "test": []}, out_dir)
    else:
        train = datasets.Dataset.from_list([{**tok(t), "label": i % 2} for i, t in enumerate(TEXTS * 2)])
        out = classification.train_and_score(cfg, model, tok, {"train": train, "dev": train}, out_dir)
    return [e["loss"] for e in out.history["train_loss"]], out.engine


@pytest.mark.parametrize(
    "family, method",
    [("llama", "lora"), ("llama", "ft"), ("gpt2", "adapter_h"), ("roberta", "lora"), ("bert", "bitfit")],
)
def test_fast_path_gives_the_reference_losses(compose_config, data_dir, tmp_path, family, method):
    """Issue 27: the fast path (frozen weights held in bf16, fp32-backward attention, the LM loss fused with its head in
    chunks) trains as the reference bf16 path (autocast over fp32 weights) does: the same losses over the first 4 steps,
    within bf16's rounding (8 bits of mantissa: ~0.4% per product), while the weights move (lr 1e-2)."""
    ref, ref_engine = first_losses(compose_config, data_dir, tmp_path, family, method, fast=False)
    fast, engine = first_losses(compose_config, data_dir, tmp_path, family, method, fast=True)
    print(f"{family}/{method}: reference {ref}\n  fast {fast}")
    assert ref_engine["fast_path"] is False and engine["fast_path"] is True
    assert engine["fp32_backward_attention"] is True
    assert (engine["frozen_elements_cast"] > 0) == (method != "ft")  # FT freezes nothing
    assert engine["train_tokens"]["real"] == ref_engine["train_tokens"]["real"] > 0  # the same batches
    assert len(fast) == len(ref) == 4 and ref[0] != ref[-1]
    assert fast == pytest.approx(ref, rel=2e-2)
