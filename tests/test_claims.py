"""repro.claims: verdict rules on fabricated records and benchmark files, and the report over the committed results."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode  # the documented way to see the operators a forward runs

from repro import PROJECT_ROOT
from repro import claims as cl
from repro.bench import common as bench_common
from repro.claims import quality
from repro.claims.evidence import load_evidence
from repro.claims.report import CLAIMS, evaluate, markdown
from repro.methods.lora import merge
from repro.results import MATCH_PTS, Cell, Record, beyond_noise, did_not_train, load_records, margin_noise


def write_record(
    root: Path,
    table: str,
    method: str,
    task: str,
    seed: int,
    score: float | None,
    *,
    model="minilm",
    variant="default",
    status="ok",
    params=None,
    method_cfg=None,
) -> Path:
    name = method if variant == "default" else f"{method}.{variant}"
    path = root / table / model / name / task / f"seed{seed}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    params = params or (22_000_000 if method == "ft" else 70_000)
    record = {
        "status": status,
        "error": None if status == "ok" else "RuntimeError: boom",
        "table": table,
        "model": model,
        "method": method,
        "variant": variant,
        "task": task,
        "seed": seed,
        "metrics": {} if score is None else {"accuracy": score / 100},
        "trainable_params": params,
        "adapter_params": params if method != "ft" else None,
        "config": {"task": {"main_metric": "accuracy"}, "method": {"name": method, **(method_cfg or {})}},
    }
    path.write_text(json.dumps(record))
    return path


def glue(root: Path, table: str, scores: dict[str, dict[str, float]], seeds=(0, 1), **kw) -> None:
    """scores: {method: {task: score}}, written for every seed."""
    for method, by_task in scores.items():
        for task, s in by_task.items():
            for seed in seeds:
                write_record(root, table, method, task, seed, s, **kw)


def by_id(results: Path) -> dict[str, cl.Claim]:
    return {c.id: c for c in evaluate(load_evidence(results))}


def write_bench(root: Path, name: str, data: dict) -> None:
    (root / "bench").mkdir(parents=True, exist_ok=True)
    (root / "bench" / f"{name}.json").write_text(json.dumps(data))


def latency_cell(batch, seq, merged, adapter, within=None, rounds=5):
    """merged / adapter: (q1, median, q3) of the paired ratio to the base model."""

    def v(q):
        return {"median_ms": 100 * q[1], "paired_ratio": {"q1": q[0], "median": q[1], "q3": q[2]}}

    return {
        "batch_size": batch,
        "seq_len": seq,
        "rounds": rounds,
        "noise": {} if within is None else {"lora_merged_within_noise": within},
        "variants": {"base": v((1, 1, 1)), "lora_merged": v(merged), "adapter_h": v(adapter)},
    }


# ---------------------------------------------------------------- the verdict rule for a margin


@pytest.mark.parametrize(
    "margin, kw, expected",
    [
        (0.5, {}, cl.REPRODUCED),
        (-1.0, {}, cl.REPRODUCED),  # within MATCH_PTS (1 point) or above
        (-2.0, {}, cl.PARTLY),
        (-3.0, {}, cl.PARTLY),  # a small miss: down to PARTLY_PTS (3)
        (-3.5, {}, cl.NOT_REPRODUCED),
        (-3.5, {"partly": True}, cl.PARTLY),  # part of the claim holds anyway
        (-2.0, {"small_miss": False}, cl.NOT_REPRODUCED),  # a claim that allows no small miss
        (-9.0, {"small_miss": False, "partly": True}, cl.PARTLY),
    ],
)
def test_the_verdict_from_a_margin(margin, kw, expected):
    assert cl.verdict(margin, **kw) == expected


# ---------------------------------------------------------------- did it train? a margin against the seed noise


def record(metric="accuracy", score=0.6, losses=(0.70, 0.60, 0.50, 0.45, 0.40), labels=2, **extra) -> Record:
    """A Record with a training-loss log and, in `extra`, any other field (decode, status)."""
    return Record.from_dict(
        {
            "status": "ok",
            "task": "t",
            "metrics": {metric: score},
            "history": {"train_loss": [{"step": 10 * i, "loss": x} for i, x in enumerate(losses, 1)]},
            "config": {"task": {"main_metric": metric, "num_labels": labels}},
            **extra,
        }
    )


@pytest.mark.parametrize(
    "kw, says",
    [
        ({}, None),  # the loss fell 36%, above chance
        ({"losses": (4.87, 5.04, 4.95, 4.98, 4.94)}, "a fall of -1.4% (< 5%)"),  # PreLayer on e2e_cpu
        ({"losses": (0.694, 0.70, 0.69, 0.68, 0.671)}, "a fall of 3.3% (< 5%)"),  # BitFit on RTE
        ({"losses": (0.70, 0.67)}, "a fall of 4.3% (< 5%)"),  # two points: the last fifth is the last one
        ({"losses": (0.70, 0.66)}, None),  # 5.7%: it moved
        ({"losses": ()}, None),  # no log: judged on the rest
        ({"score": 0.5}, "accuracy 0.5, at or below a constant prediction's 0.5"),  # 1 / num_labels
        ({"score": 0.3, "labels": 3}, "at or below a constant prediction's 0.333"),
        ({"score": 0.3, "labels": None}, None),  # the number of labels unknown: no chance level
        ({"metric": "matthews_correlation", "score": 0.0}, "matthews_correlation 0, at or below"),
        ({"metric": "pearson", "score": 0.087}, None),  # rsLoRA's STS-B seed 0: above 0, and its loss fell
        ({"metric": "BLEU", "score": 0.0}, None),  # no chance level for BLEU ...
        ({"metric": "BLEU", "score": 0.1, "decode": {"inputs": 630, "empty_hypotheses": 629}}, "629 of 630 outputs"),
        ({"metric": "BLEU", "score": 0.6, "decode": {"inputs": 630, "empty_hypotheses": 315}}, None),  # half: not most
        ({"score": 0.1, "status": "failed"}, None),  # a failed record failed; it is not "did not train"
    ],
)
def test_did_not_train(kw, says):
    why = did_not_train(record(**kw))
    assert why is None if says is None else says in why, why


def test_the_rule_on_the_committed_records():
    """PreLayer on E2E (629 of 630 outputs empty, dev loss 3.34 -> 3.33) did not train; BitFit on RTE barely moved
    its loss (3.3%); every other E2E and WebNLG record, and every LoRA and FT record on GLUE, trained."""
    recs, _ = load_records(PROJECT_ROOT / "results")
    flagged = {str(r.path.relative_to(PROJECT_ROOT / "results")) for r in recs if did_not_train(r)}
    assert "e2e_cpu/smollm2-135m/prefix_layer/e2e/seed0.json" in flagged
    assert {"glue_cpu/minilm/bitfit/rte/seed0.json", "glue_cpu/minilm/bitfit/rte/seed1.json"} <= flagged
    assert not [p for p in flagged if p.startswith(("e2e_cpu", "webnlg_cpu")) and "prefix_layer" not in p]
    assert not [p for p in flagged if p.startswith("glue_cpu") and ("/lora" in p or "/ft" in p)]


def cell(*scores: float) -> Cell:
    c = Cell()
    for seed, s in enumerate(scores):
        c.add(Record.from_dict({**record(score=s / 100).raw, "seed": seed}))
    return c


def test_the_seed_noise_of_a_margin():
    # per task the larger of the two cells' seed stds: max(0.71, 1.41) = 1.41 and max(2.83, 0) = 2.83
    noise = margin_noise([(cell(60, 61), cell(58, 60)), (cell(70, 74), cell(65, 65))])
    assert noise.points == pytest.approx((2**0.5 + 8**0.5) / 2) and (noise.measured, noise.tasks) == (2, 2)
    assert beyond_noise(2.2, noise) == 1 and beyond_noise(2.0, noise) == 0 and beyond_noise(-2.2, noise) == -1
    one_seed = margin_noise([(cell(60), cell(59))])  # unmeasured: MATCH_PTS stands in
    assert one_seed.points == MATCH_PTS and one_seed.measured == 0 and "1 of 1 tasks unmeasured" in str(one_seed)


def write_trained(root: Path, table: str, method: str, task: str, seed: int, score: float, losses, **kw) -> None:
    path = write_record(root, table, method, task, seed, score, **kw)
    data = json.loads(path.read_text())
    data["history"] = {"train_loss": [{"step": 10 * i, "loss": x} for i, x in enumerate(losses, 1)]}
    path.write_text(json.dumps(data))


def test_a_baseline_that_did_not_train_or_a_margin_inside_the_noise_is_no_win(tmp_path):
    """The issue's case: LoRA 0.6 above an adapter whose seeds spread by more than that, and a prefix-tuning row whose
    loss never moved. Before: both counted as beaten ("reproduced" once AdapterH is left aside). Now: neither."""
    moving, flat = (0.7, 0.6, 0.5, 0.45, 0.4), (0.70, 0.71, 0.70, 0.70, 0.69)
    for seed, (lora, adapter) in enumerate(((62.0, 60.0), (63.0, 63.8))):
        write_trained(tmp_path, "glue_cpu", "lora", "rte", seed, lora, moving)
        write_trained(tmp_path, "glue_cpu", "adapter_p", "rte", seed, adapter, moving, params=76_000)
        write_trained(tmp_path, "glue_cpu", "prefix_layer", "rte", seed, 40.0, flat, params=60_000)
    c = by_id(tmp_path)["lora_beats_adapters_prefix"]
    assert c.verdict == cl.PARTLY, c.reason
    assert "inside the noise of adapter_p" in c.reason and "seed noise 2.7: inside it" in c.ours  # Δ +0.6
    assert "did not train, counted neither way: prefix_layer" in c.reason
    assert "prefix tuning not tested" in c.reason and "prefix_layer (60.0K) did not train on rte" in c.ours
    assert any("prefix_layer" in p for p in c.evidence)  # listed as the evidence that it did not train
    # the same rows with seeds that agree: LoRA's 2.6 points are a win, and prefix tuning trained and lost
    for seed in (0, 1):
        write_trained(tmp_path, "glue_cpu", "adapter_p", "rte", seed, 60.0, moving, params=76_000)
        write_trained(tmp_path, "glue_cpu", "lora", "rte", seed, 62.6, moving)
        write_trained(tmp_path, "glue_cpu", "prefix_layer", "rte", seed, 40.0, moving, params=60_000)
    assert by_id(tmp_path)["lora_beats_adapters_prefix"].verdict == cl.REPRODUCED


def test_the_header_counts_records_ok_and_chosen_candidates(tmp_path):
    tasks = ("rte", "mrpc", "stsb", "cola", "sst2")
    tuned(tmp_path, {"ft": 70.0, "lora": 71.0}, tasks)
    write_record(tmp_path, "glue_cpu", "lora", "rte", 0, None, status="failed")
    ev = load_evidence(tmp_path)
    md = markdown(evaluate(ev), ev)
    # 2 methods x 5 tasks x (3 candidates on seed 0 + the chosen one on seeds 1, 2) = 50; 30 are the chosen ones'
    assert (
        "`glue_cpu_tuned` 50 records: 50 ok, 30 of them the chosen candidates' (counted), 20 candidates not chosen"
        in md
    )
    assert "`glue_cpu` 1 record: 0 ok, 1 excluded (status not ok)" in md
    assert ev.counts["glue_cpu_tuned"] == {"records": 50, "ok": 50, "chosen": 30}


# ---------------------------------------------------------------- not testable


def test_no_records_every_claim_not_testable(tmp_path):
    claims = evaluate(load_evidence(tmp_path))
    assert {c.id for c in claims} >= {
        "lora_matches_ft",
        "lora_beats_adapters_prefix",
        "qv_beats_single",
        "small_rank_suffices",
        "no_latency_merged",
        "adapters_add_latency",
        "less_memory_smaller_checkpoints",
        "fast_task_switching",
        "subspace_overlap",
        "amplification",
        "prefix_length_hurts",
    }
    for c in claims:
        assert c.verdict == cl.NOT_TESTABLE, c.id
        assert c.reason and not c.evidence and c.paper


def test_failed_and_random_weight_records_are_not_evidence(tmp_path):
    glue(tmp_path, "glue_cpu", {"lora": {"rte": 80.0}, "ft": {"rte": 70.0}}, status="failed")
    glue(tmp_path, "glue_cpu", {"lora": {"rte": 80.0}, "ft": {"rte": 70.0}}, model="tiny-roberta")
    ev = load_evidence(tmp_path)
    assert ev.excluded["glue_cpu"] == 4
    assert quality.claim_lora_matches_ft(ev).verdict == cl.NOT_TESTABLE
    assert "excluded" in markdown(evaluate(ev), ev)


# ---------------------------------------------------------------- quality claims


@pytest.mark.parametrize(
    "lora, verdict",
    [
        ({"rte": 70.0, "sst2": 90.0}, cl.REPRODUCED),  # Δ +0.5
        ({"rte": 67.0, "sst2": 88.0}, cl.PARTLY),  # Δ -2.0
        ({"rte": 60.0, "sst2": 80.0}, cl.NOT_REPRODUCED),  # Δ -10 on every task
    ],
)
def test_lora_matches_ft_verdicts(tmp_path, lora, verdict):
    glue(tmp_path, "glue_cpu", {"ft": {"rte": 70.0, "sst2": 89.0}, "lora": lora})
    c = by_id(tmp_path)["lora_matches_ft"]
    assert c.verdict == verdict
    assert len(c.evidence) == 8 and "glue_cpu" in c.source


CANDIDATES = {
    "ft": ("lr2e-5", "lr5e-5", "lr1e-4"),
    "lora": ("lr5e-4", "lr1e-3", "lr2e-3"),
}  # conf/table/glue_cpu_tuned.yaml


def tuned(root: Path, scores: dict[str, float], tasks, seeds=(1, 2)) -> None:
    """glue_cpu_tuned as its sweep writes it: every candidate on seed 0 (the middle one scores `scores[method]`, the
    others 5 points less), then the chosen one on `seeds` (the table's: 1 and 2)."""
    for method, score in scores.items():
        for task in tasks:
            for k, variant in enumerate(CANDIDATES[method]):
                write_record(root, "glue_cpu_tuned", method, task, 0, score - (0 if k == 1 else 5), variant=variant)
            for seed in seeds:
                write_record(root, "glue_cpu_tuned", method, task, seed, score, variant=CANDIDATES[method][1])


def test_tuned_table_wins_once_its_tuning_is_decided_on_every_task(tmp_path):
    tasks = ("rte", "mrpc", "stsb", "cola", "sst2")
    glue(tmp_path, "glue_cpu", {"ft": {t: 70.0 for t in tasks}, "lora": {t: 50.0 for t in tasks}})
    # the tuned grid half-run (RTE only): not evidence yet, the report says why and uses glue_cpu
    tuned(tmp_path, {"ft": 70.0, "lora": 71.0}, tasks[:1])
    c = by_id(tmp_path)["lora_matches_ft"]
    assert c.source.startswith("table `glue_cpu`") and c.verdict == cl.NOT_REPRODUCED
    assert "glue_cpu_tuned: tuning not finished (8 of 10 (row, task) choices undecided)" in c.source
    # every task decided, but the chosen candidates' seeds 1 and 2 run only on RTE, seed 2 on no task: not yet
    tuned(tmp_path, {"ft": 70.0, "lora": 71.0}, tasks[1:], seeds=(1,))
    c = by_id(tmp_path)["lora_matches_ft"]
    assert "glue_cpu_tuned: tuning not finished (the chosen candidates' seeds: 8 of 30 not run)" in c.source
    # every seed of every chosen candidate: the tuned table wins, with the chosen candidates' records only
    tuned(tmp_path, {"ft": 70.0, "lora": 71.0}, tasks[1:])
    c = by_id(tmp_path)["lora_matches_ft"]
    assert c.verdict == cl.REPRODUCED and c.source.startswith("table `glue_cpu_tuned`")
    assert len(c.evidence) == 30 and all(
        "glue_cpu_tuned" in p and (".lr5e-5/" in p or ".lr1e-3/" in p) for p in c.evidence
    )


def test_adapters_verdicts_and_budget(tmp_path):
    glue(tmp_path, "glue_cpu", {"lora": {"rte": 70.0}})
    write_record(tmp_path, "glue_cpu", "adapter_p", "rte", 0, 60.0, params=80_000)
    write_record(tmp_path, "glue_cpu", "adapter_h", "rte", 0, 90.0, params=5_000_000)  # 70x LoRA's budget: not counted
    c = by_id(tmp_path)["lora_beats_adapters_prefix"]
    assert c.verdict == cl.PARTLY and "prefix tuning not tested" in c.reason and "not counted" in c.ours
    write_record(tmp_path, "glue_cpu", "adapter_p", "rte", 0, 75.0, params=80_000)
    assert by_id(tmp_path)["lora_beats_adapters_prefix"].verdict == cl.NOT_REPRODUCED


def test_adapters_and_prefix_beaten_is_reproduced(tmp_path):
    glue(tmp_path, "glue_cpu", {"lora": {"rte": 70.0}})
    write_record(tmp_path, "glue_cpu", "adapter_h", "rte", 0, 65.0, params=100_000)
    write_record(tmp_path, "glue_cpu", "prefix_layer", "rte", 0, 60.0, params=50_000)
    assert by_id(tmp_path)["lora_beats_adapters_prefix"].verdict == cl.REPRODUCED


def test_which_weights_verdicts(tmp_path):
    for variant, s in {"qv_r4": 85.0, "q_r8": 80.0, "k_r8": 80.0, "v_r8": 83.0, "o_r8": 83.0}.items():
        write_record(tmp_path, "which_weights", "lora", "sst2", 0, s, variant=variant)
    assert by_id(tmp_path)["qv_beats_single"].verdict == cl.REPRODUCED
    # one seed per cell: the noise is unmeasured, MATCH_PTS stands in for it; a 0.5-point margin is no win
    write_record(tmp_path, "which_weights", "lora", "sst2", 0, 84.5, variant="v_r8")
    c = by_id(tmp_path)["qv_beats_single"]
    assert c.verdict == cl.PARTLY and "inside the noise of v_r8" in c.reason and "1 of 1 tasks unmeasured" in c.ours
    write_record(tmp_path, "which_weights", "lora", "sst2", 0, 75.0, variant="qv_r4")
    assert by_id(tmp_path)["qv_beats_single"].verdict == cl.NOT_REPRODUCED


def test_rank_verdicts(tmp_path):
    for r, s in {1: 79.5, 8: 80.0, 64: 80.2}.items():
        write_record(tmp_path, "rank", "lora", "sst2", 0, s, variant=f"qv_r{r}")
    assert by_id(tmp_path)["small_rank_suffices"].verdict == cl.REPRODUCED
    write_record(tmp_path, "rank", "lora", "sst2", 0, 70.0, variant="qv_r1")
    assert by_id(tmp_path)["small_rank_suffices"].verdict == cl.PARTLY  # r=8 matches, r=1 10 points short
    write_record(tmp_path, "rank", "lora", "sst2", 0, 70.0, variant="qv_r8")
    assert by_id(tmp_path)["small_rank_suffices"].verdict == cl.NOT_REPRODUCED


def test_prefix_length_verdicts(tmp_path):
    for n, s in {8: 60.0, 16: 65.0, 64: 55.0}.items():
        write_record(
            tmp_path,
            "e2e_prefix",
            "prefix_layer",
            "rte",
            0,
            s,
            variant=f"l{n}",
            model="gpt2-medium",
            method_cfg={"l_p": n, "l_i": 0},
        )
    c = by_id(tmp_path)["prefix_length_hurts"]
    assert c.verdict == cl.REPRODUCED and len(c.evidence) == 3
    write_record(
        tmp_path,
        "e2e_prefix",
        "prefix_layer",
        "rte",
        0,
        66.0,
        variant="l64",
        model="gpt2-medium",
        method_cfg={"l_p": 64, "l_i": 0},
    )
    assert by_id(tmp_path)["prefix_length_hurts"].verdict == cl.NOT_REPRODUCED


# ---------------------------------------------------------------- efficiency claims


def test_latency_verdicts(tmp_path):
    write_bench(
        tmp_path,
        "latency",
        {
            "benchmark": "latency",
            "model": "gpt2-medium",
            "cells": [
                latency_cell(32, 512, (0.99, 1.0, 1.01), (1.005, 1.01, 1.02), within=True),
                latency_cell(16, 256, (0.98, 1.0, 1.02), (1.01, 1.03, 1.04), within=True),
                latency_cell(1, 128, (0.99, 1.01, 1.02), (1.05, 1.10, 1.12)),  # no noise flag: the 2% rule
            ],
        },
    )
    c = by_id(tmp_path)
    assert c["no_latency_merged"].verdict == cl.REPRODUCED
    assert "the same aten operators" in c["no_latency_merged"].ours
    assert c["adapters_add_latency"].verdict == cl.REPRODUCED
    write_bench(
        tmp_path,
        "latency",
        {
            "benchmark": "latency",
            "cells": [
                latency_cell(32, 512, (1.05, 1.08, 1.1), (0.97, 1.0, 1.03), within=False),
                latency_cell(16, 256, (1.05, 1.08, 1.1), (0.97, 1.0, 1.03), within=False),
                latency_cell(1, 128, (1.04, 1.06, 1.1), (0.98, 0.99, 1.01), within=False),
            ],
        },
    )
    c = by_id(tmp_path)
    assert c["no_latency_merged"].verdict == cl.NOT_REPRODUCED
    assert c["adapters_add_latency"].verdict == cl.NOT_REPRODUCED


def test_a_shape_with_fewer_than_min_rounds_is_not_evidence(tmp_path):
    """The committed case: 32x512 in 2 rounds and 16x256 in 4 say nothing, whatever their ratios; 1x128 in 20 does."""
    cells = [
        latency_cell(32, 512, (1.02, 1.07, 1.13), (1.0, 1.01, 1.01), within=False, rounds=2),
        latency_cell(16, 256, (0.96, 0.99, 1.02), (1.03, 1.03, 1.04), within=True, rounds=cl.MIN_ROUNDS - 1),
        latency_cell(1, 128, (0.98, 1.0, 1.02), (1.03, 1.05, 1.08), within=True, rounds=20),
    ]
    write_bench(tmp_path, "latency", {"benchmark": "latency", "cells": cells})
    c = by_id(tmp_path)
    merged, adapters = c["no_latency_merged"], c["adapters_add_latency"]
    assert merged.verdict == cl.PARTLY  # within noise where measured enough; 2 of Table 1's 3 shapes are not
    assert "32x512 (2 rounds), 16x256 (4 rounds)" in merged.reason and "--min-rounds 5" in merged.reason
    assert "2 rounds, fewer than 5 rounds: not evidence" in merged.ours
    assert adapters.verdict == cl.PARTLY and "needs two shapes or more" in adapters.reason
    # no shape measured enough: nothing to say
    for cell in cells:
        cell["rounds"] = 2
    write_bench(tmp_path, "latency", {"benchmark": "latency", "cells": cells})
    c = by_id(tmp_path)
    assert c["no_latency_merged"].verdict == c["adapters_add_latency"].verdict == cl.NOT_TESTABLE


class OpLog(TorchDispatchMode):
    """Every aten operator a forward runs, with the shapes of its tensor arguments, in order. (TorchDispatchMode sees
    the operators themselves, below nn.Module and functional wrappers, so a model that calls F.linear and one that
    calls nn.Linear log the same thing.)"""

    def __init__(self):
        super().__init__()
        self.ops: list[tuple[str, tuple]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        shapes = tuple(tuple(a.shape) for a in torch.utils._pytree.tree_leaves((args, kwargs)) if torch.is_tensor(a))
        self.ops.append((str(func), shapes))
        return func(*args, **(kwargs or {}))


def forward_ops(model, ids) -> tuple[list, torch.Tensor]:
    with torch.inference_mode(), OpLog() as log:
        out = model(input_ids=ids).logits
    return log.ops, out


@pytest.mark.parametrize("name, kind", [("tiny-gpt2", "generation"), ("tiny-roberta", "classification")])
def test_a_merged_lora_runs_the_base_models_operations(name, kind):
    """Why no_latency_merged holds by construction: merged, LoRA's model runs exactly the base model's operators on
    tensors of the same shapes (its A and B take no part), and gives the outputs of a plain base model that holds
    W0 + sBA bit for bit. Unmerged, it runs more (the check can fail). As the latency benchmark builds them: GPT-2's
    fused Conv1D and a plain nn.Linear, r=4 on W_q, W_v, B random (at B = 0 a merge changes nothing)."""
    base = bench_common.build_model(name, kind).eval()
    lora = bench_common.apply_method(copy.deepcopy(base), "lora", r=4, alpha=32, targets=["q", "v"]).eval()
    bench_common.randomize_lora_B(lora, std=0.05)
    ids = torch.randint(0, base.config.vocab_size, (2, 16))
    unmerged_ops, unmerged_out = forward_ops(lora, ids)
    merge(lora)
    merged_ops, merged_out = forward_ops(lora, ids)
    base_ops, _ = forward_ops(base, ids)
    assert merged_ops == base_ops
    assert len(unmerged_ops) > len(base_ops)  # the two thin matmuls per adapted matrix, and the add
    torch.testing.assert_close(merged_out, unmerged_out, rtol=1e-4, atol=1e-4)
    plain = copy.deepcopy(base)  # the base architecture holding the merged weights
    merged_weights = {k: v for k, v in lora.state_dict().items() if "lora_" not in k}
    plain.load_state_dict(merged_weights)
    assert any(not torch.equal(a, b) for a, b in zip(plain.state_dict().values(), base.state_dict().values()))
    assert torch.equal(forward_ops(plain, ids)[1], merged_out)


def test_memory_switching_and_speed_verdicts(tmp_path):
    def row(method, rss, step):
        return {
            "model": "roberta-base",
            "method": method,
            "status": "ok",
            "peak_rss_mb": rss,
            "batch": 8,
            "seq": 128,
            "step": {"median_ms": step},
        }

    write_bench(tmp_path, "train", {"device": "cpu", "rows": [row("ft", 3000, 4000), row("lora", 2000, 2000)]})
    write_bench(
        tmp_path,
        "storage",
        {
            "checkpoints": [
                {"model": "roberta-base", "method": "ft", "status": "ok", "checkpoint_bytes": 500e6},
                {"model": "roberta-base", "method": "lora", "status": "ok", "checkpoint_bytes": 100e6},
            ],  # 20%: not "much smaller"
            "task_switch": [
                {
                    "model": "roberta-base",
                    "cold": {"lora": {"median_ms": 20}, "ft": {"median_ms": 400}, "ft_over_lora": 20.0},
                    "warm": {"lora": {"median_ms": 15}, "ft": {"median_ms": 40}, "ft_over_lora": 2.7},
                }
            ],
        },
    )
    c = by_id(tmp_path)
    assert c["less_memory_smaller_checkpoints"].verdict == cl.PARTLY
    assert c["fast_task_switching"].verdict == cl.REPRODUCED
    assert c["faster_training"].verdict == cl.REPRODUCED


# ---------------------------------------------------------------- Section 7 claims


def write_report(root: Path, phi_ranks: float, phi_seeds: float, proj_dW: float, amplification: float) -> None:
    rand = {"random_expect_1_1": 0.0026}

    def t7(r, amp):
        return {
            "layer": 2,
            "target": "q",
            "proj_dW": proj_dW,
            "proj_W": 12.0,
            "proj_random": 0.6,
            "dW_fro": 1.0,
            "amplification": amp,
        }

    report = {
        "cells": ["`results/rank/minilm/lora.qv_r8/sst2/seed0.safetensors`: r=8"],
        "middle_layer_1based": 3,
        "n_layers": 6,
        "ranks": {"8": [0, 1], "64": [0]},
        "phi_small_vs_large_A": {
            "2/q": {"phi_1_1": phi_ranks, **rand},
            "2/v": {"phi_1_1": phi_ranks, **rand},
            "0/q": {"phi_1_1": 0.1, **rand},
        },
        "phi_seeds": {"r8": {"A": {"2/q": {"phi_1_1": phi_seeds, **rand}}, "random_gaussian": {"phi_1_1": 0.004}}},
        "table7": {"r8": [t7(8, amplification)], "r64": [t7(64, 0.2)]},
    }
    folder = root / "analysis" / "rank_minilm_sst2_qv"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "report.json").write_text(json.dumps(report))


@pytest.mark.parametrize(
    "args, subspace, amp",
    [
        ((0.8, 0.2, 1.0, 20.0), cl.REPRODUCED, cl.REPRODUCED),
        ((0.8, 0.001, 0.5, 2.0), cl.PARTLY, cl.PARTLY),
        (
            (0.1, 0.001, 8.0, 2.0),
            cl.NOT_REPRODUCED,
            cl.PARTLY,
        ),  # proj from ΔW 8.0 vs W 12: "not W's top directions" fails
    ],
)
def test_section7_verdicts(tmp_path, args, subspace, amp):
    write_report(tmp_path, *args)
    c = by_id(tmp_path)
    assert c["subspace_overlap"].verdict == subspace
    assert c["amplification"].verdict == amp
    assert "results/rank/minilm/lora.qv_r8/sst2/seed0.json" in c["subspace_overlap"].evidence


def test_amplification_not_reproduced(tmp_path):
    write_report(tmp_path, 0.8, 0.2, 0.5, 1.0)
    report = tmp_path / "analysis" / "rank_minilm_sst2_qv" / "report.json"
    data = json.loads(report.read_text())
    data["table7"]["r8"][0].update(
        proj_dW=7.0, proj_random=9.0
    )  # near W's top directions, below random, no amplification
    report.write_text(json.dumps(data))
    assert by_id(tmp_path)["amplification"].verdict == cl.NOT_REPRODUCED


# ---------------------------------------------------------------- the real report


def test_report_over_committed_results(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "repro.claims", "--results-dir", "results", "--out-dir", str(tmp_path)],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    md = (tmp_path / "claims.md").read_text()
    data = json.loads((tmp_path / "claims.json").read_text())
    ids = [f.__name__.removeprefix("claim_") for f in CLAIMS]
    assert [c["id"] for c in data["claims"]] == ids
    for c in data["claims"]:
        assert c["verdict"] in cl.VERDICTS and c["reason"]
        assert f"### {c['id']}: {c['verdict']}" in md
        if c["verdict"] != cl.NOT_TESTABLE:
            assert c["evidence"] and all((PROJECT_ROOT / p).exists() for p in c["evidence"])
    # today's files answer the GLUE claim from glue_cpu
    glue_claim = next(c for c in data["claims"] if c["id"] == "lora_matches_ft")
    assert glue_claim["verdict"] != cl.NOT_TESTABLE and "glue_cpu" in glue_claim["source"]


# ---------------------------------------------------------------- NLG: E2E (Table 3), WebNLG unseen (Table 14)


def write_nlg(
    root: Path, table: str, method: str, task: str, metrics: dict, seeds=(0, 1), model="smollm2-135m"
) -> None:
    main = "BLEU" if task == "e2e" else "BLEU_all"
    for seed in seeds:
        path = root / table / model / method / task / f"seed{seed}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(
            json.dumps(
                {
                    "status": "ok",
                    "error": None,
                    "table": table,
                    "model": model,
                    "method": method,
                    "variant": "default",
                    "task": task,
                    "seed": seed,
                    "metrics": metrics,
                    "trainable_params": 134_515_008 if method == "ft" else 230_400,
                    "adapter_params": None if method == "ft" else 230_400,
                    "config": {"task": {"main_metric": main}, "method": {"name": method}},
                }
            )
        )


E2E = {"BLEU": 0.66, "NIST": 8.3, "METEOR": 0.44, "ROUGE_L": 0.68, "CIDEr": 2.2}


@pytest.mark.parametrize(
    "lora_bleu, verdict", [(0.655, cl.REPRODUCED), (0.68, cl.REPRODUCED), (0.64, cl.PARTLY), (0.60, cl.NOT_REPRODUCED)]
)
def test_lora_matches_ft_on_e2e(tmp_path, lora_bleu, verdict):
    write_nlg(tmp_path, "e2e_cpu", "ft", "e2e", E2E)
    write_nlg(tmp_path, "e2e_cpu", "lora", "e2e", {**E2E, "BLEU": lora_bleu})
    c = by_id(tmp_path)["lora_matches_ft_nlg"]
    assert c.verdict == verdict and "table `e2e_cpu`" in c.source and len(c.evidence) == 4
    assert f"BLEU {100 * lora_bleu:.1f} vs FT 134.5M 66.0" in c.ours and "NIST 8.30 vs 8.30" in c.ours


def test_nlg_claims_need_a_pretrained_model(tmp_path):
    write_nlg(tmp_path, "e2e", "ft", "e2e", E2E, model="tiny-gpt2")
    write_nlg(tmp_path, "e2e", "lora", "e2e", E2E, model="tiny-gpt2")
    got = by_id(tmp_path)
    assert got["lora_matches_ft_nlg"].verdict == got["lora_generalizes_unseen"].verdict == cl.NOT_TESTABLE


def webnlg_metrics(unseen: float, seen: float) -> dict:
    return {
        "BLEU_unseen": unseen,
        "BLEU_seen": seen,
        "BLEU_all": (unseen + seen) / 2,
        "METEOR_all": 0.4,
        "TER_all": 0.4,
    }


@pytest.mark.parametrize(
    "lora, verdict",
    [
        ((0.45, 0.60), cl.REPRODUCED),  # unseen above FT's 0.40
        ((0.35, 0.45), cl.PARTLY),  # below, but drops 10 against FT's 22
        ((0.30, 0.60), cl.NOT_REPRODUCED),
    ],
)  # below, and drops 30
def test_lora_generalizes_to_unseen_webnlg_categories(tmp_path, lora, verdict):
    write_nlg(tmp_path, "webnlg_cpu", "ft", "webnlg", webnlg_metrics(0.40, 0.62), seeds=(0,))
    write_nlg(tmp_path, "webnlg_cpu", "lora", "webnlg", webnlg_metrics(*lora), seeds=(0,))
    c = by_id(tmp_path)["lora_generalizes_unseen"]
    assert c.verdict == verdict and "table `webnlg_cpu`" in c.source
    assert f"LoRA {100 * lora[0]:.1f} / {100 * lora[1]:.1f}" in c.ours and "FT 40.0 / 62.0" in c.ours
