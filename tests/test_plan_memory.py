"""Issue 16 items 6 and 9: each paper model's per-device batch cap and gradient-checkpointing switch, the planner's
peak-memory-per-GPU and scratch-disk estimates (repro/plan/cost.py), and that every paper cell fits the SLURM GPU."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from repro import CONF_DIR, PROJECT_ROOT
from repro.cell import resolve_cell
from repro.config import load_group, options
from repro.methods import apply_method
from repro.plan import cost, grid
from repro.train import batch_plan, training_arguments
from tests.methods.conftest import batch, method, tiny
from tests.test_sweep import sweeper_for

PAPER_MODELS = ("roberta-base", "roberta-large", "deberta-v2-xxlarge", "gpt2-medium", "gpt2-large")


@pytest.fixture
def hydra_ctx():
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        yield


def cell(overrides: list[str]):
    return resolve_cell(compose(config_name="config", overrides=overrides), overrides)


def test_model_cap_and_checkpointing_reach_the_trainer(hydra_ctx, tmp_path):
    ov = ["+table=glue", "model=roberta-large", "method=lora", "task=qnli", "train.precision=fp32"]
    cfg = cell(ov)  # global batch 32, RoBERTa-large cap 8
    assert cfg.train.max_per_device_batch_size == cfg.model.max_per_device_batch_size == 8
    assert batch_plan(cfg.train) == (8, 4)
    assert training_arguments(cfg, tmp_path, None).activation_checkpointing is False
    ov = ["+table=glue", "model=deberta-v2-xxlarge", "method=lora", "task=qnli", "train.precision=fp32"]
    cfg = cell(ov)  # global batch 48, checkpointing on
    assert batch_plan(cfg.train) == (8, 6)
    assert training_arguments(cfg, tmp_path, None).activation_checkpointing is True
    cfg = cell(
        [*ov, "train.max_per_device_batch_size=4", "model.gradient_checkpointing=false"]
    )  # the command line wins
    assert batch_plan(cfg.train) == (4, 12)
    assert training_arguments(cfg, tmp_path, None).activation_checkpointing is False


def test_every_model_config_has_the_memory_keys():
    for name in options("model"):
        m = load_group("model", name)
        assert isinstance(m.max_per_device_batch_size, int) and m.max_per_device_batch_size >= 1, name
        assert isinstance(m.gradient_checkpointing, bool), name


def test_memory_and_disk_formulas(hydra_ctx):
    cfg = cell(["+table=glue", "model=roberta-base", "method=ft", "task=rte"])  # fp32, seq 512, global batch 32
    p, pt = cost.param_counts(cfg)
    assert p == pt and 124e6 < p < 126e6  # RoBERTa-base + its classification head, all trained
    mem = cost.memory_estimate(cfg)
    s, b, h, a, L = 512, 16, 768, 12, 12
    act = L * 2 * (34 * s * b * h + 5 * a * s * s * b)
    assert mem["per_device_batch"] == b and not mem["checkpointing"]
    assert mem["mem_bytes"] == 16 * p + act + (1 << 30)
    disk = cost.disk_estimate(cfg)
    assert disk["ckpt_bytes"] == 12 * pt and disk["final_bytes"] == 4 * pt
    assert disk["disk_bytes"] == 2 * disk["ckpt_bytes"] + disk["final_bytes"]

    lora = cell(["+table=glue", "model=roberta-base", "method=lora", "task=rte"])
    p2, pt2 = cost.param_counts(lora)
    assert p < p2 < 1.01 * p and pt2 < p / 100  # frozen backbone + LoRA; trained: LoRA + head only
    assert cost.disk_estimate(lora)["final_bytes"] == 4 * pt2
    assert cost.disk_estimate(lora)["ckpt_bytes"] == 12 * pt2  # adapters-only Trainer checkpoints (ReproTrainer._save)


def test_gpu_of_the_slurm_config():
    gpu, gib = cost.slurm_gpu()
    constraint = load_group("hydra/launcher", "slurm").get("constraint")
    assert gpu == (constraint or cost.DEFAULT_GPU) and gib == cost.GPU_MEMORY_GIB[gpu]


def test_every_paper_cell_fits_the_slurm_gpu(hydra_ctx):
    """Every (model, method, variant, task) of every table on a paper model, at its model's cap and checkpointing."""
    gpu, gib = cost.slurm_gpu()
    limit = cost.GPU_MARGIN * gib * cost.GiB
    seen, over = set(), []
    for table in sorted(p.stem for p in (CONF_DIR / "table").glob("*.yaml")):
        sweeper = sweeper_for([f"+table={table}"], Path(tempfile.mkdtemp()))
        jobs = {tuple(j for j in job if not j.startswith("seed=")) for job in sweeper.expand([])}
        jobs = [[f"+table={table}", *j] for j in sorted(jobs) if grid.job_dict(j).get("model") in PAPER_MODELS]
        loader = GlobalHydra.instance().config_loader()
        for _job, cfg, _note in grid.resolve_jobs(loader, sweeper.config, jobs, fallback=False):
            seen.add(cfg.model.name)
            mem = cost.memory_estimate(cfg)["mem_bytes"]
            if mem > limit:
                over.append(
                    f"{table} {cfg.model.name} {cfg.method.name} {cfg.variant} {cfg.task.name}: {mem / cost.GiB:.1f} GiB"
                )
    assert seen == set(PAPER_MODELS)
    assert not over, f"cells over {cost.GPU_MARGIN:.0%} of a {gpu} ({gib:.0f} GiB): {over}"


def test_plan_prints_memory_and_disk_per_row(tmp_path):
    env = {**os.environ, "REPRO_RESULTS_DIR": str(tmp_path / "results"), "REPRO_LOG_DIR": str(tmp_path / "logs")}
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "repro.plan",
            "+table=glue",
            "model=roberta-large,deberta-v2-xxlarge",
            "method=lora",
            "task=qnli",
            "seed=0,1",
        ],  # RoBERTa-large LoRA: 2 rows (default, dagger)
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    text = out.stdout
    assert "GiB/GPU" in text.splitlines()[2] and "disk/job" in text.splitlines()[2]  # the per-cell table's header
    rows = [line for line in text.splitlines() if line.startswith("  ") and "GPU-h" in line]
    assert len(rows) == 3 and all("GiB/GPU" in r and "fits" in r and "disk" in r for r in rows), text
    assert "peak memory per GPU: largest cell" in text and "6 of 6 jobs fit" in text
    assert "scratch disk:" in text and "final weights kept after the grid" in text


def test_gradient_checkpointing_still_trains_lora_on_a_frozen_backbone():
    """The switch recomputes activations; with a frozen embedding (LoRA) the gradients must still reach the adapters."""
    grads = {}
    for checkpointing in (False, True):
        model = apply_method(tiny("roberta"), method("lora", r=4, targets=["q", "v"]))
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.fill_(0.01)
        if checkpointing:
            model.activation_checkpointing_enable()
        model.train()
        torch.manual_seed(0)
        model.config.hidden_dropout_prob = model.config.attention_probs_dropout_prob = 0.0
        for m in model.modules():
            if isinstance(m, torch.nn.Dropout):
                m.p = 0.0
        model(**batch("roberta")).loss.backward()
        grads[checkpointing] = {n: p.grad.clone() for n, p in model.named_parameters() if "lora_" in n}
    assert grads[True] and all(g.abs().sum() > 0 for g in grads[True].values())
    for name, g in grads[False].items():
        torch.testing.assert_close(grads[True][name], g)
