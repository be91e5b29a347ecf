"""Each efficiency benchmark runs on tiny models (--quick) and writes well-formed JSON. No assertions on timings:
they depend on the machine and its load; the real figures come from `python -m repro.bench <what>`."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest

from repro.bench.__main__ import main
from repro.bench.serve import STRATEGIES

MACHINE_KEYS = {
    "cpu_model",
    "cpu_cores_available",
    "torch_threads",
    "torch_version",
    "device",
    "gpu_name",
    "load_average",
}


def _reject_constant(name: str):
    raise AssertionError(f"non-finite number {name} in the JSON")


def run_bench(what: str, tmp_path, *extra: str) -> dict:
    out = tmp_path / f"{what}.json"
    assert main([what, "--quick", "--device", "cpu", "--out-dir", str(tmp_path), "--name", what, *extra]) == 0
    result = json.loads(out.read_text(), parse_constant=_reject_constant)
    assert not list(tmp_path.glob(".*.tmp")), "the atomic write left a temporary file"
    assert result["benchmark"] == what and result["quick"] is True
    assert MACHINE_KEYS <= set(result["machine"])
    assert result["machine"]["cpu_model"] and result["machine"]["torch_threads"] >= 1
    assert set(result["machine"]["load_average"]) == {"1min", "5min", "15min"}
    assert all_finite(result)
    return result


def all_finite(obj) -> bool:
    if isinstance(obj, float):
        return math.isfinite(obj)
    if isinstance(obj, dict):
        return all(all_finite(v) for v in obj.values())
    if isinstance(obj, list):
        return all(all_finite(v) for v in obj)
    return True


def check_stats(stats: dict) -> None:
    assert {"n", "median_ms", "q1_ms", "q3_ms", "iqr_ms", "std_ms", "samples_ms"} <= set(stats)
    assert stats["n"] == len(stats["samples_ms"]) >= 1 and stats["median_ms"] > 0


def test_latency_quick(tmp_path):
    result = run_bench("latency", tmp_path, "--budget-s", "4")
    assert {"settings", "cells", "errors", "load", "wall_s"} <= set(result)
    assert [(c["batch_size"], c["seq_len"]) for c in result["cells"]] == [tuple(c) for c in result["settings"]["grid"]]
    for cell in result["cells"]:
        assert "skipped" not in cell  # --quick never skips a cell for lack of budget
        assert "base" in cell["variants"] and {"noise", "rounds", "paper"} <= set(cell)
        for name, v in cell["variants"].items():
            check_stats(v)
            assert {"overhead_pct", "paired_ratio"} <= set(v)
        # every variant is either measured or reported as not measured, with the reason
        for name in ("adapter_l", "adapter_h"):
            assert name in cell["variants"] or name in result["errors"]
        assert "lora_merged" in cell["variants"] or "lora" in result["errors"]


def test_latency_grid_option_and_paper_figures(tmp_path):
    result = run_bench("latency", tmp_path, "--grid", "1x8", "--budget-s", "1", "--min-rounds", "1")
    assert [(c["batch_size"], c["seq_len"]) for c in result["cells"]] == [(1, 8)]


def test_train_quick(tmp_path):
    result = run_bench("train", tmp_path, "--methods", "ft,lora", "--models", "tiny-roberta")
    rows = {(r["model"], r["method"]): r for r in result["rows"]}
    assert {("tiny-roberta", "ft"), ("tiny-roberta", "lora")} <= set(rows)
    ft = rows["tiny-roberta", "ft"]
    assert ft["status"] == "ok", ft.get("error")
    check_stats(ft["step"])
    assert ft["peak_rss_mb"] > 0 and {"weights", "grads", "optimizer", "saved_activations"} <= set(ft["bytes"])
    assert ft["params"]["trainable_params"] == ft["params"]["total_params"]
    lora = rows["tiny-roberta", "lora"]
    assert lora["status"] == "ok", lora.get("error")
    assert "tiny-roberta" in result["ratios"]
    assert lora["bytes"]["optimizer"] < ft["bytes"]["optimizer"]
    peft = result["ours_vs_peft"]  # PEFT is a test dependency: the comparison must have run
    assert peft is not None and peft.get("status") != "error", peft
    assert peft["trainable_params"]["ours"] == peft["trainable_params"]["peft"]
    assert peft["initial_loss_abs_diff"] < 1e-4  # same weights, same LoRA: same loss
    check_stats(peft["step"]["ours"])


def test_storage_quick(tmp_path):
    result = run_bench("storage", tmp_path, "--methods", "ft,lora")
    rows = {(r["model"], r["method"]): r for r in result["checkpoints"]}
    for model in ("tiny-roberta", "tiny-gpt2"):
        ft = rows[model, "ft"]
        assert ft["status"] == "ok", ft.get("error")
        assert ft["checkpoint_bytes"] >= ft["full_model_bytes"] * 0.99
        lora = rows[model, "lora"]
        if lora["status"] == "ok":
            assert lora["checkpoint_bytes"] < ft["checkpoint_bytes"]
    for s in result["task_switch"]:
        if s.get("status") != "error":
            for cache in ("warm", "cold"):
                check_stats(s[cache]["lora"])
                check_stats(s[cache]["ft"])


@pytest.mark.parametrize("what", ["latency", "train", "storage"])
def test_cli_help_lists_benchmark(what, capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    assert what in capsys.readouterr().out


def test_decode_quick(tmp_path):
    """Issue 27: today's decoder, the fast decoder (fp32 and bf16, at each batch size), generate and (when installed)
    CTranslate2 on tiny-llama, 4 E2E inputs: well-formed, every decoder timed, the ratios taken in the same run, fast
    fp32 equal to today's decoder on every input, every output scored by the paper's rule (which search found the
    better hypothesis by it is the measurement, not asserted: beam search is not exhaustive)."""
    result = run_bench("decode", tmp_path)
    s, rows = result["summary"], result["rows"]
    fast = [f"fast {p} batch{bs}" for p in ("fp32", "bf16") for bs in result["settings"]["fast_batch_sizes"]]
    names = {"reference fp32", "reference bf16-autocast", "generate", *fast}
    ct2 = s["ctranslate2"]
    assert ct2["status"] == "ran" or ct2["status"].startswith("not installed")
    if ct2["status"] == "ran":
        names |= {f"ctranslate2 {c}" for c in ct2["compute_types"]}
    assert set(s["seconds_per_input"]) == names and all(v > 0 for v in s["seconds_per_input"].values())
    assert set(s["ratios"]) == {f"reference fp32 / {f}" for f in fast} | {
        f"reference bf16-autocast / fast bf16 batch{s['fast_bf16_batch_size_chosen']}"
    }
    assert s["inputs"] == len(rows) == 4 and set(s["outputs"]) == names
    for name in fast:
        if "fp32" in name:
            assert s["outputs"][name]["equal_to_reference"] == 4  # the same search, the same floats
        else:
            assert 0 <= s["outputs"][name]["equal_to_reference_bf16_autocast"] <= 4
    assert s["outputs_changed_between_rounds"] == {}
    end = set(result["settings"]["end_token_ids"])
    assert end in ({2, 1116}, {50256, 628})  # SmolLM2's tokenizer (package installed), else GPT-2's
    for row in rows:
        assert set(row["outputs"]) == names
        for out in row["outputs"].values():
            assert out["ids"] and not (end & set(out["ids"][:-1]))  # cut at the first end token
            assert out["equal_to_reference"] == (out["ids"] == row["outputs"]["reference fp32"]["ids"])
    assert "no-repeat" in result["known_differences"]


def test_serve_quick(tmp_path):
    """Mixed-task batch vs merged per task on tiny-roberta: every (tasks, batch) cell times all four strategies and
    counts the weights each keeps resident (T merged copies cost T bases; the mixed batch one base + T adapters)."""
    result = run_bench("serve", tmp_path)
    cells = result["cells"]
    assert [(c["tasks"], c["batch"]) for c in cells] == [(2, 1), (2, 4)]
    assert [c["tasks_in_batch"] for c in cells] == [1, 2]
    for c in cells:
        for k in STRATEGIES:
            check_stats(c["stats"][k])
        mem, w = c["resident_weight_bytes"], result["weights"]
        assert mem["merged_resident"] == 2 * w["base_bytes"] > mem["mixed"] == w["base_bytes"] + 2 * w["adapter_bytes"]


def test_sweep_quick(tmp_path):
    """Sequential vs two-at-a-time on 2 tiny cells through the real runner: both modes finish every cell ok, the
    parallel cells really ran on one thread (submitit ignores cpus_per_task; `threads=1` is the cell's), the
    sequential ones on torch's default, and cells/hour is the count over the command's own wall time."""
    result = run_bench("sweep", tmp_path)
    by = {m["mode"]: m for m in result["modes"]}
    assert set(by) == {"sequential", "parallel"}
    for m in by.values():
        assert m["returncode"] == 0 and m["cells_ok"] == 2, m.get("stderr_tail")
        assert m["cells_per_hour"] == pytest.approx(2 / m["wall_s"] * 3600, rel=0.01)
    assert {c["torch_threads"] for c in by["parallel"]["cells"]} == {1}
    default = subprocess.run(
        [sys.executable, "-c", "import torch; print(torch.get_num_threads())"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert {c["torch_threads"] for c in by["sequential"]["cells"]} == {int(default)}
    # the same 2 cells in both modes
    assert [c["cell"] for c in by["parallel"]["cells"]] == [c["cell"] for c in by["sequential"]["cells"]]
    assert result["faster"] in ("sequential", "parallel")


def test_roofline_quick(tmp_path):
    """Issue 27 item 1: matmul rates at the model's shapes, the block roofline, every (method, engine) step with its
    FLOPs from the real tokens and its fraction of the roofline, and decoding's rate, in one JSON."""
    result = run_bench("roofline", tmp_path)
    (model,) = result["models"]
    assert model["model"] == "tiny-llama" and {m["name"] for m in model["matmuls"]} >= {"self_attn.q_proj", "lm_head"}
    assert all(m["gflops"]["fp32"] >= 0 and m["gflops"]["bf16"] >= 0 for m in model["matmuls"])
    assert model["block_roofline_gflops"]["bf16"] > 0
    rows = {(r["method"], r["engine"]): r for r in model["train"]}
    assert set(rows) == {(m, e) for m in ("lora", "ft") for e in ("fp32", "bf16", "bf16+fast")}
    for (method, _), r in rows.items():
        check_stats(r["step"])
        assert r["flops"] == (4 if method == "lora" else 6) * r["block_params"] * r["tokens"]["real"]
        assert r["fraction_of_bf16_block_roofline"] > 0
    assert model["decode"]["rows"] > 0 and model["decode"]["tokens_per_s"] > 0


def test_ours_vs_peft_on_llama_names_and_gpt2_refused(tmp_path):
    """Issue 27 item 4: PEFT's target names come from repro.methods.targets (Llama: q_proj, v_proj, where the bench
    asked for 'query', 'value' and PEFT refused); the same weights give the same loss; GPT-2's fused c_attn is refused
    with the reason (PEFT adapts it whole, ours per projection)."""
    import torch

    from repro.bench import common
    from repro.bench import train as bench_train

    weights = common.weights_file("tiny-llama", "classification", tmp_path)
    out = bench_train.ours_vs_peft("tiny-llama", "classification", weights, 2, 16, 1, torch.device("cpu"))
    assert out["lora"]["targets"] == ["q", "v"] and out["lora_tensors_copied"] == 8
    assert out["initial_loss_abs_diff"] < 1e-5
    gpt2 = common.build_model("tiny-gpt2", "generation")
    with pytest.raises(ValueError, match="c_attn"):
        bench_train.peft_target_names(gpt2, ["q", "v"])
