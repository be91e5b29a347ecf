"""repro.claims: verdict rules on fabricated records and benchmark files, and the report over the committed results."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from repro import PROJECT_ROOT
from repro import claims as cl
from repro.claims import quality
from repro.claims.evidence import load_evidence
from repro.claims.report import CLAIMS, evaluate, markdown


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


def latency_cell(batch, seq, merged, adapter, within=None):
    """merged / adapter: (q1, median, q3) of the paired ratio to the base model."""

    def v(q):
        return {"median_ms": 100 * q[1], "paired_ratio": {"q1": q[0], "median": q[1], "q3": q[2]}}

    return {
        "batch_size": batch,
        "seq_len": seq,
        "rounds": 5,
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
    for variant, s in {"qv_r4": 85.0, "q_r8": 80.0, "k_r8": 80.0, "v_r8": 84.0, "o_r8": 83.0}.items():
        write_record(tmp_path, "which_weights", "lora", "sst2", 0, s, variant=variant)
    assert by_id(tmp_path)["qv_beats_single"].verdict == cl.REPRODUCED
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
                latency_cell(16, 256, (0.98, 1.0, 1.02), (1.01, 1.03, 1.04), within=True),
                latency_cell(1, 128, (0.99, 1.01, 1.02), (1.05, 1.10, 1.12)),  # no noise flag: the 2% rule
                {"batch_size": 32, "seq_len": 512, "skipped": "too slow"},
            ],
        },
    )
    c = by_id(tmp_path)
    assert c["no_latency_merged"].verdict == cl.REPRODUCED
    assert c["adapters_add_latency"].verdict == cl.REPRODUCED
    write_bench(
        tmp_path,
        "latency",
        {
            "benchmark": "latency",
            "cells": [
                latency_cell(16, 256, (1.05, 1.08, 1.1), (0.97, 1.0, 1.03), within=False),
                latency_cell(1, 128, (1.04, 1.06, 1.1), (0.98, 0.99, 1.01), within=False),
            ],
        },
    )
    c = by_id(tmp_path)
    assert c["no_latency_merged"].verdict == cl.NOT_REPRODUCED
    assert c["adapters_add_latency"].verdict == cl.NOT_REPRODUCED


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
