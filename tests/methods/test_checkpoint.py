"""Adapter-only checkpoints: round trip, refusal of a wrong method config or shape, init_from (the PEFT export:
tests/test_export.py)."""

from __future__ import annotations

import json

import pytest
import torch
from omegaconf import OmegaConf
from safetensors import safe_open

from repro import records
from repro.cell import smoke_reason
from repro.errors import CellMismatch, ReproError
from repro.methods import apply_method
from repro.methods.checkpoint import (
    init_from,
    load_delta_weights,
    load_trainable,
    read_metadata,
    save_trainable,
    source_fingerprint,
)
from repro.methods.lora import delta_weights
from tests.methods.conftest import batch, method, randomize_B, tiny


def cell(model_name: str, m):
    return OmegaConf.create(
        {
            "method": OmegaConf.to_container(m),
            "model": {"name": model_name, "hub_id": f"hub/{model_name}"},
            "task": {"name": "rte"},
        }
    )


def trained(arch, m, seed=0):
    model = apply_method(tiny(arch, seed=0), m)
    randomize_B(model, seed=seed)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if p.requires_grad and "lora_B" not in n:
                p.add_(torch.randn_like(p) * 0.05)
    return model


@pytest.mark.parametrize(
    "arch,name",
    [
        ("roberta", "lora"),
        ("gpt2", "lora"),
        ("deberta-v2", "adapter_h"),
        ("bert", "bitfit"),
        ("gpt2", "prefix_layer"),
        ("llama", "lora"),
        ("llama", "adapter_h"),
        ("llama", "adapter_l"),
        ("llama", "prefix_layer"),
        ("llama", "prefix_embed"),
        ("llama", "fttop2"),
        ("llama", "ft"),
    ],
)
def test_round_trip(tmp_path, arch, name):
    m = method(name, r=2) if name in ("lora", "adapter_h", "adapter_l") else method(name)
    model = trained(arch, m).eval()
    path = tmp_path / "w.safetensors"
    save_trainable(model, path, cell(f"tiny-{arch}", m))
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
        assert set(f.keys()) == {n for n, p in model.named_parameters() if p.requires_grad}
    assert meta["method_name"] == name and meta["model"] == f"tiny-{arch}" and meta["base_model"] == f"hub/tiny-{arch}"
    assert json.loads(meta["fan_in_fan_out"]) == (arch == "gpt2")
    fresh = apply_method(tiny(arch, seed=0), m).eval()
    load_trainable(fresh, path, m, model_name=f"tiny-{arch}")
    b = batch(arch)
    assert torch.equal(fresh(input_ids=b["input_ids"]).logits, model(input_ids=b["input_ids"]).logits)


def test_wrong_alpha_rank_targets_shape_refused(tmp_path):
    m = method("lora", r=2, alpha=4)
    path = tmp_path / "w.safetensors"
    save_trainable(trained("roberta", m), path, cell("tiny-roberta", m))
    for bad in (
        method("lora", r=2, alpha=8),
        method("lora", r=4, alpha=4),
        method("lora", r=2, alpha=4, targets=["q", "k"]),
    ):
        with pytest.raises(CellMismatch, match="different method config"):
            load_trainable(apply_method(tiny("roberta"), bad), path, bad)
    with pytest.raises(CellMismatch, match="model"):
        load_trainable(apply_method(tiny("roberta"), m), path, m, model_name="roberta-base")
    # same config, other head size: shape mismatch (a 3-way MNLI head into a 2-label model)
    with pytest.raises(CellMismatch, match="shapes"):
        load_trainable(apply_method(tiny("roberta", num_labels=2), m), path, m)
    with pytest.raises(CellMismatch, match="model"):
        load_trainable(apply_method(tiny("bert"), m), path, m)


def test_init_from_loads_only_lora(tmp_path):
    m = method("lora", r=2, alpha=4)
    mnli = trained("roberta", m)
    path = tmp_path / "mnli.safetensors"
    save_trainable(mnli, path, cell("tiny-roberta", m))
    rte = apply_method(tiny("roberta", num_labels=2, seed=5), m)
    head = rte.classifier.out_proj.weight.detach().clone()
    keys = init_from(rte, path, m)
    assert keys and all(".lora_" in k for k in keys)
    assert torch.equal(rte.classifier.out_proj.weight, head)
    src = dict(mnli.named_parameters())
    assert all(torch.equal(p, src[n]) for n, p in rte.named_parameters() if ".lora_" in n)
    with pytest.raises(ReproError, match="MNLI"):
        init_from(rte, tmp_path / "missing.safetensors", m)


def test_delta_weights_from_checkpoint(tmp_path):
    for arch in ("roberta", "gpt2"):
        m = method("lora", r=2, alpha=6)
        model = trained(arch, m)
        path = tmp_path / f"{arch}.safetensors"
        save_trainable(model, path, cell(f"tiny-{arch}", m))
        from_file = load_delta_weights(path)
        live = sorted(delta_weights(model), key=lambda x: (x[0], x[1]))
        assert [(l, t) for l, t, _ in from_file] == [(l, t) for l, t, _ in live]
        assert all(torch.allclose(a[2], b[2]) for a, b in zip(from_file, live))


def test_checkpoint_carries_source_fingerprint_steps_and_smoke(tmp_path):
    """An init_from checkpoint names the record that wrote it (fingerprint, steps: passed in by the runner); a smoke
    run's is refused as an init unless train.allow_smoke_init. Smoke: the command line sets train.max_steps > 0 or
    data.max_train_samples (repro.cell.smoke_reason). Without a fingerprint the file has no source_fingerprint."""

    m = method("lora", r=2, alpha=4)
    full, smoke = cell("tiny-roberta", m), cell("tiny-roberta", m)
    smoke.cli_overrides = ["task=mnli", "train.max_steps=5"]
    assert smoke_reason(full) is None and "train.max_steps=5" in smoke_reason(smoke)
    assert smoke_reason(OmegaConf.create({"cli_overrides": ["train.max_steps=-1", "seed=1"]})) is None
    assert smoke_reason(OmegaConf.create({"cli_overrides": ["data.max_train_samples=64"]})) is not None
    for name, cfg in (("full", full), ("smoke", smoke)):
        save_trainable(
            trained("roberta", m),
            tmp_path / f"{name}.safetensors",
            cfg,
            steps=7,
            fingerprint=records.fingerprint(cfg),
            smoke=smoke_reason(cfg),
        )
    meta = read_metadata(tmp_path / "full.safetensors")
    assert meta["source_fingerprint"] == records.fingerprint(full) == source_fingerprint(tmp_path / "full.safetensors")
    assert json.loads(meta["steps"]) == 7 and json.loads(meta["smoke"]) is None
    assert source_fingerprint(tmp_path / "missing.safetensors") is None
    save_trainable(trained("roberta", m), tmp_path / "anonymous.safetensors", full)
    assert source_fingerprint(tmp_path / "anonymous.safetensors") is None
    rte = apply_method(tiny("roberta", num_labels=2), m)
    assert init_from(rte, tmp_path / "full.safetensors", m)
    with pytest.raises(ReproError, match=r"smoke run \(train.max_steps=5 on the command line\).*allow_smoke_init=true"):
        init_from(rte, tmp_path / "smoke.safetensors", m)
    assert init_from(rte, tmp_path / "smoke.safetensors", m, allow_smoke=True)
