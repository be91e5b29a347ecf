"""Each LoRA variant through the shared runner on tiny-roberta: an ok record, its |Θ|, a checkpoint whose ΔW the
analysis can read (from the factors, or with the base model for DoRA / PiSSA / AdaLoRA)."""

import pytest

from repro.cell import resolve_cell
from repro.methods.checkpoint import load_delta_weights
from repro.records import record_path
from repro.run import run_cell

D, L = 32, 2


@pytest.mark.parametrize(
    "method,extra,adapter_params",
    [
        ("rslora", [], L * 2 * 2 * D * 8),
        ("lora_all_linear", [], L * 8 * (8 * D + 2 * (D + 2 * D))),
        ("dora", [], L * 2 * 2 * D * 8 + L * 2 * D),
        ("pissa", [], L * 2 * 2 * D * 8),
        ("adalora", ["method.tinit=1", "method.tfinal=2"], L * (4 * (2 * D * 12 + 12) + 2 * (12 * 3 * D + 12))),
        ("qlora", ["model.arch.hidden_size=64", "model.arch.intermediate_size=128"], L * 8 * (8 * 64 + 2 * (64 + 128))),
    ],
)
def test_variant_cell_runs(compose_config, data_dir, method, extra, adapter_params):
    overrides = [
        "+table=glue",
        "model=tiny-roberta",
        f"method={method}",
        "task=rte",
        "train.max_steps=6",
        "data.max_eval_samples=16",
        *extra,
    ]
    cfg = resolve_cell(compose_config(overrides), overrides)
    record = run_cell(cfg)
    assert record["status"] == "ok", record.get("error")
    assert record["adapter_params"] == adapter_params and record["steps"] == 6
    ckpt = record_path(cfg).with_suffix(".safetensors")
    assert ckpt.exists()
    if method in ("rslora", "lora_all_linear", "qlora"):
        dws = load_delta_weights(ckpt)
        assert dws and all(dw.abs().sum() > 0 for _, _, dw in dws)  # trained: B moved off 0
