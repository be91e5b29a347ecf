"""|Θ| of our methods on the paper's models (meta device) equals the paper's formulas (Section 5.1)."""

from __future__ import annotations

import pytest

from repro import params


@pytest.mark.parametrize(
    "model,method,over,expected",
    [
        ("roberta-base", "lora", {"r": 8}, 2 * (2 * 12) * 768 * 8),  # 294,912  "0.3M"
        ("roberta-large", "lora", {"r": 8}, 2 * (2 * 24) * 1024 * 8),  # 786,432  "0.8M"
        ("deberta-v2-xxlarge", "lora", {"r": 16}, 2 * (2 * 48) * 1536 * 16),  # 4,718,592 "4.7M"
        ("gpt2-medium", "lora", {"r": 4}, 2 * (2 * 24) * 1024 * 4),  # 393,216 (printed 0.35M)
        ("roberta-base", "adapter_d", {"r": 16}, 12 * (2 * 768 * 16 + 16 + 768)),  # 304,320 "0.3M"
        ("roberta-large", "adapter_p", {"r": 64}, 24 * (2 * 1024 * 64 + 64 + 1024)),  # 3,171,840 "3.0M"
        ("roberta-large", "adapter_p", {"r": 16}, 24 * (2 * 1024 * 16 + 16 + 1024)),  # 811,392 "0.8M"
        ("roberta-large", "adapter_h", {"r": 8}, 48 * (2 * 1024 * 8 + 8 + 1024) + 2 * 48 * 1024),  # LNs trained
        ("gpt2-medium", "adapter_l", {"r": 224}, 24 * (2 * 1024 * 224 + 224 + 1024) + 2 * 24 * 1024),  # 11,089,152
        ("gpt2-medium", "prefix_layer", {"l_p": 10, "l_i": 4}, 24 * 1024 * 14),
        ("gpt2-medium", "prefix_embed", {"l_p": 10, "l_i": 4}, 1024 * 14),
        ("gpt2-medium", "fttop2", {}, 25_192_448),  # "25.19M"
        ("roberta-base", "bitfit", {}, 102_144),  # "0.1M"
    ],
)
def test_counts_equal_formulas(model, method, over, expected):
    assert params.count(model, method, **over) == expected


def test_rows_and_json_keys():
    rows = [r for r in params.all_rows()]
    assert len(rows) == 48 + len(params.STAND_IN_ROWS) + len(params.TUNED_ROWS)
    for r in rows:
        assert {"table", "model", "method", "ours", "paper", "formula"} <= set(r)
        if r["formula_value"] is not None:
            assert r["ours"] == r["formula_value"], r
    gpt2_lora = next(
        r for r in rows if r["table"] == "table3" and r["model"] == "gpt2-medium" and r["method"] == "LoRA"
    )
    assert gpt2_lora["ours"] == 393_216 and gpt2_lora["paper_matches_formula"] is False


def test_variant_rows_equal_formulas():
    rows = params.variant_rows()
    assert {(r["model"], r["method"]) for r in rows} == {
        (m, v) for m in params.VARIANT_MODELS for v in params.VARIANTS if (m, v) != ("gpt2-medium", "qlora")
    }
    for r in rows:
        assert r["ours"] == r["formula_value"], r
    by = {(r["model"], r["method"]): r["ours"] for r in rows}
    assert by[("roberta-base", "dora")] == 2 * 24 * 768 * 8 + 24 * 768  # LoRA + one magnitude per row
    assert by[("roberta-base", "rslora")] == by[("roberta-base", "pissa")] == by[("roberta-base", "lora")]
    assert by[("gpt2-medium", "lora_all_linear")] == 24 * 4 * (8 * 1024 + 2 * (1024 + 4096))
    assert (
        by[("roberta-base", "qlora")]
        == by[("roberta-base", "lora_all_linear")]
        == 12 * 8 * (8 * 768 + 2 * (768 + 3072))
    )
    assert by[("roberta-base", "adalora")] == 12 * (4 * (2 * 768 * 12 + 12) + 2 * (12 * (768 + 3072) + 12))


def test_smollm2_rows_equal_their_llama_formulas():
    """SmolLM2-135M (GQA: W_v 576 -> 192; RMSNorm; no biases): every e2e_cpu method's count equals its formula."""
    rows = {r["method"]: r for r in params.stand_in_rows()}
    L, d, d_kv, ff = 30, 576, 192, 1536
    expected = {
        "FT": 134_515_008,
        "FTTop2": 2 * (2 * d * d + 2 * d * d_kv + 3 * d * ff + 2 * d),
        "AdapterL": L * (2 * d * 6 + 6 + d) + 2 * L * d,
        "AdapterH": 2 * L * (2 * d * 111 + 111 + d) + 2 * L * d,
        "PreEmbed": d * 10,
        "PreLayer": L * d * 10,
        "LoRA": L * 4 * ((d + d) + (d + d_kv)),
    }
    assert expected["LoRA"] == 230_400 != 2 * (2 * L) * d * 4  # the GPT-2 formula would say 276,480
    for label, n in expected.items():
        assert rows[label]["ours"] == rows[label]["formula_value"] == n, label
    assert rows["BitFit"]["ours"] is None
    assert rows["BitFit"]["note"] == (
        "refused: method=bitfit: model smollm2-135m has no bias parameters (Llama: "
        "attention_bias=False, mlp_bias=False); BitFit trains biases only"
    )


def test_tuned_rows_sit_at_loras_budget_and_prelayer_counts_the_kept_prefix():
    """e2e_cpu_tuned's sizes on SmolLM2: AdapterL r=5, AdapterH r=2 and PreLayer l_p=13 are the closest to LoRA's
    230,400; the reparametrized PreLayer counts L·d·l_p (what it keeps), its note the count while training."""
    rows = {r["method"]: r for r in params.stand_in_rows(table="e2e_cpu_tuned", rows=params.TUNED_ROWS)}
    L, d, lora = 30, 576, 230_400
    assert rows["AdapterL"]["ours"] == L * (2 * d * 5 + 5 + d) + 2 * L * d == 224_790
    assert rows["AdapterH"]["ours"] == 2 * L * (2 * d * 2 + 2 + d) + 2 * L * d == 207_480
    assert rows["PreLayer"]["ours"] == rows["PreLayer"]["formula_value"] == L * d * 13 == 224_640
    for label, method, key in (("AdapterL", "adapter_l", "r"), ("AdapterH", "adapter_h", "r")):
        r = dict(params.TUNED_ROWS[[x[0] for x in params.TUNED_ROWS].index(label)][2])[key]
        for other in (r - 1, r + 1):
            assert abs(params.count("smollm2-135m", method, r=other) - lora) > abs(rows[label]["ours"] - lora)
    training = 13 * d + (d * 512 + 512) + (512 * L * d + L * d)
    assert f"{training:,}" in rows["PreLayer"]["note"] and "!=" not in rows["PreLayer"]["note"]
