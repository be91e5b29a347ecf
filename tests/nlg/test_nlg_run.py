"""Generation cells through the real runner: composed configs, a tiny GPT-2, a few steps, a few decoded MRs."""

from __future__ import annotations

import json
import subprocess
import sys

import torch

from repro.cell import resolve_cell
from repro.tasks.generation import completion_loss


def test_table_configs_compose(compose_config):
    for table, task in (("e2e", "e2e"), ("webnlg", "webnlg"), ("dart", "dart")):
        overrides = [f"+table={table}", "model=gpt2-medium", "method=lora", f"task={task}"]
        cfg = resolve_cell(compose_config(overrides), overrides)
        assert cfg.train.learning_rate == 2e-4 and cfg.train.global_batch_size == 8 and cfg.train.warmup_steps == 500
        assert cfg.train.num_train_epochs == 5 and cfg.train.max_grad_norm == 0.0 and cfg.data.max_seq_length == 512
        assert cfg.method.r == 4 and cfg.method.alpha == 32 and cfg.decode.num_beams == 10
        assert cfg.train.label_smoothing == (0.0 if task == "dart" else 0.1)
        assert cfg.method.dropout == (0.0 if task == "dart" else 0.1)
        assert cfg.train.weight_decay == (0.0 if task == "dart" else 0.01)
        assert list(cfg.decode.eos_token_ids) == [50256, 628] and cfg.decode.max_new_tokens == 64
    stand_in = ["+table=e2e", "model=tiny-gpt2", "method=ft", "task=e2e"]
    cfg = resolve_cell(compose_config(stand_in), stand_in)
    assert cfg.data.max_seq_length == 128 and cfg.decode.length_penalty == 0.8


def test_completion_loss_matches_original_formula():
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 7)
    labels = torch.tensor([[-100, -100, 3, 4, 1], [-100, 2, 2, -100, -100]])
    lp = torch.log_softmax(logits[:, :-1], -1)
    tgt, mask = labels[:, 1:], labels[:, 1:] != -100
    nll = -lp.gather(-1, tgt.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    smooth = 0.9 * nll + 0.1 * (-lp.mean(-1))
    assert torch.isclose(completion_loss(logits, labels, 0.1), (smooth * mask).sum() / mask.sum())
    assert torch.isclose(completion_loss(logits, labels, 0.0), (nll * mask).sum() / mask.sum())
    # HF's own causal-LM loss is the unsmoothed one
    hf = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, 7), labels[:, 1:].reshape(-1), ignore_index=-100)
    assert torch.isclose(completion_loss(logits, labels, 0.0), hf)


def test_smoke_run_e2e(tmp_path, data_dir):
    cmd = [
        sys.executable,
        "-m",
        "repro.run",
        "+table=e2e",
        "model=tiny-gpt2",
        "method=ft",
        "task=e2e",
        "train.max_steps=3",
        "train.global_batch_size=4",
        "decode.max_inputs=3",
        "decode.num_beams=2",
        "data.max_train_samples=24",
        "data.max_eval_samples=8",
        f"paths.results_dir={tmp_path}",
        f"paths.log_dir={tmp_path}/logs",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    cell = tmp_path / "e2e" / "tiny-gpt2" / "ft" / "e2e"
    rec = json.loads((cell / "seed0.json").read_text())
    assert rec["status"] == "ok" and rec["steps"] == 3
    assert set(rec["metrics"]) == {"BLEU", "NIST", "METEOR", "ROUGE_L", "CIDEr", "dev_loss"}
    assert rec["decode"]["inputs"] == 3 and rec["decode"]["checkpoint"] == "last"
    assert rec["decode"]["settings"]["num_beams"] == 2 and rec["selected"]["rule"] == "last"
    assert len((cell / "seed0.hyp.txt").read_text().splitlines()) == 3
    assert (cell / "seed0.ref.txt").read_text().count("\n\n") == 3


def test_dart_train_missing_fails_cleanly(tmp_path, data_dir):
    cmd = [
        sys.executable,
        "-m",
        "repro.run",
        "+table=dart",
        "model=tiny-gpt2",
        "method=ft",
        "task=dart",
        f"paths.results_dir={tmp_path}",
        f"paths.log_dir={tmp_path}/logs",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 2
    assert "dart/train.json does not exist" in proc.stderr and "Yale-LILY/dart" in proc.stderr
    assert not list(tmp_path.glob("dart/**/seed0.json"))
