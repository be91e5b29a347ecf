"""Trainable-parameter counts |Θ| of every (model, method) row of the paper's Tables 2, 3, 13, 14, ours beside the
paper's printed figure and its formula (Section 5.1). Models are built on the meta device from conf/model/*.yaml
(no weights, no download), adapted with our methods, and counted with the task head left out (as the paper does).

    python -m repro.params                 # a text table (console script: repro-params)
    python -m repro.params --format json   # [{table, model, method, config, ours, paper, formula, formula_value, ...}]
    python -m repro.params --variants      # the LoRA variants (issue 14) beside LoRA, ours and their formulas

Paper label -> our method config:
  FT -> ft; FTTop2 -> fttop2 (last 2 blocks); BitFit -> bitfit; LoRA -> lora on q,v with r = 8 (RoBERTa, Table 9),
  16 (DeBERTa XXL: only r = 16 gives 4.7M; released scripts), 4 (GPT-2, Table 11); AdptP/AdptH with the row's
  bottleneck r (Table 9); AdptD, AdapterL, AdapterH (GPT-2) and PreLayer: the paper gives no r / l_p for these rows,
  so r (or l_p, with l_i = 0) is the integer whose formula value is closest to the printed count (stated per row).
Where the printed count disagrees with the formula (beyond its rounding), the row says so; counts are never bent.

Stand-in rows (tables `e2e_cpu` and `e2e_cpu_tuned`, no paper figure): SmolLM2-135M (a Llama) under each method of
conf/table/e2e_cpu.yaml and the sizes e2e_cpu_tuned adds, with the formula written for its architecture. A prefix
trained through Li & Liang's MLP reparametrization counts, as they do, the prefix that remains (the MLP is dropped
after training); the row's note gives the count while training. Grouped-query attention makes W_k, W_v d -> d_kv (576 -> 192), so
LoRA on W_q, W_v is L·r·((d + d) + (d + d_kv)), not 2·L̂·d·r; its block norms are RMSNorms (a weight of d, no bias),
so AdapterH's trained norms add L̂_LN·d, not 2·L̂_LN·d; it has no bias at all, so BitFit is refused.
"""

from __future__ import annotations

import copy
import json
import re
import sys
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

from omegaconf import OmegaConf

from repro.cli import command, parser
from repro.config import load_group
from repro.errors import ReproError
from repro.method_traits import VARIANT_METHODS

if TYPE_CHECKING:
    import torch

PAPER_DIR = Path(__file__).parent / "paper"
TABLES = {
    "table2": "table2_glue.yaml",
    "table3": "table3_e2e.yaml",
    "table13": "table13_dart.yaml",
    "table14": "table14_webnlg.yaml",
}
LABEL_TO_METHOD = {
    "FT": "ft",
    "FTTop2": "fttop2",
    "BitFit": "bitfit",
    "LoRA": "lora",
    "AdptD": "adapter_d",
    "AdptP": "adapter_p",
    "AdptH": "adapter_h",
    "AdapterL": "adapter_l",
    "AdapterH": "adapter_h",
    "PreLayer": "prefix_layer",
    "PreEmbed": "prefix_embed",
}
LORA_R = {"roberta-base": 8, "roberta-large": 8, "deberta-v2-xxlarge": 16, "gpt2-medium": 4, "gpt2-large": 4}


def printed_value(s: str) -> tuple[float, float]:
    """'0.35M' -> (350000, 5000): the value and half a unit of its last printed digit."""
    m = re.fullmatch(r"([\d.]+)M", s.strip())
    num = m.group(1)
    decimals = len(num.split(".")[1]) if "." in num else 0
    return float(num) * 1e6, 0.5 * 10 ** (-decimals) * 1e6


def dims(name: str) -> tuple[int, int]:
    a = load_group("model", name).arch
    return (a.get("num_hidden_layers") or a.n_layer), (a.get("hidden_size") or a.n_embd)


@cache
def meta_model(model: str) -> torch.nn.Module:
    # here, not at the top: building models needs torch and transformers, `repro-params --help` does not
    from repro.models import build_on_meta
    from repro.tasks import kind_for_model

    mc = load_group("model", model)
    return build_on_meta(mc, kind_for_model(mc.kind), num_labels=2)


def counts(model: str, method: str, **overrides) -> dict[str, int]:
    """repro.methods.parameter_counts of `method` on the paper's `model`, built on the meta device."""
    import torch  # here, not at the top: as in meta_model

    from repro.methods import apply_method, parameter_counts

    net = copy.deepcopy(meta_model(model))
    with torch.device("meta"):
        net = apply_method(net, load_group("method", method, **overrides))
    return parameter_counts(net)


def count(model: str, method: str, **overrides) -> int:
    """Our |Θ| (task head excluded) of `method` on the paper's `model`: for a prefix trained through Li & Liang's MLP,
    the prefix that remains (repro.methods.common.parameter_counts)."""
    return counts(model, method, **overrides)["adapter_params"]


def adapter_formula(L: int, d: int, method: str, r: int, drop: int = 0) -> tuple[str, int]:
    cfg = load_group("method", method)
    n_adpt = (L - drop) * len(cfg.sites)
    n_ln = (L - drop) * (1 if cfg.adapter_layernorm else 0) + (2 * L if cfg.train_layernorm else 0)
    return (
        f"L̂_Adpt×(2·d·r+r+d) + 2·L̂_LN·d = {n_adpt}×(2·{d}·{r}+{r}+{d}) + 2·{n_ln}·{d}",
        n_adpt * (2 * d * r + r + d) + 2 * n_ln * d,
    )


def closest(f, target: float, lo: int = 1, hi: int = 2048) -> int:
    return min(range(lo, hi + 1), key=lambda k: (abs(f(k) - target), k))


def row_count(row: dict, precise: dict | None = None) -> dict:
    """One row. `precise`: (model, label) -> Table 3's printed counts, used to solve r / l_p where Tables 13/14
    print the same budget rounded (11M = Table 3's 11.09M)."""
    model, label = row["model"], row["method"]
    method = LABEL_TO_METHOD[label]
    L, d = dims(model)
    paper, tol = printed_value(row["params"])
    solve_for = paper
    for s in (precise or {}).get((model, label), []):
        if abs(printed_value(s)[0] - paper) <= tol:
            solve_for = printed_value(s)[0]
    over, note = {}, []
    if method == "lora":
        r = LORA_R[model]
        over = {"r": r, "targets": ["q", "v"]}
        formula, fval = f"2·L̂_LoRA·d·r = 2·{2 * L}·{d}·{r}", 2 * 2 * L * d * r
    elif method.startswith("adapter"):
        r = row.get("bottleneck_r")
        if r is None:
            r = closest(lambda k: adapter_formula(L, d, method, k)[1], solve_for)
            note.append(f"r={r}: closest formula value to the printed count (the paper gives no r)")
        over = {"r": r}
        formula, fval = adapter_formula(L, d, method, r)
        if load_group("method", method).train_layernorm:
            no_ln = fval - 2 * 2 * L * d
            note.append(
                f"with the block LayerNorms frozen (L̂_LN=0) the formula gives {no_ln:,}, which "
                + ("matches" if abs(no_ln - paper) <= tol else "does not match either")
                + " the printed count"
            )
    elif method == "prefix_layer":
        n = closest(lambda k: L * d * k, solve_for, 1, 512)
        over = {"l_p": n, "l_i": 0}
        formula, fval = f"L·d·(l_p+l_i) = {L}·{d}·({n}+0)", L * d * n
        note.append(
            f"l_p={n}, l_i=0: closest to the printed count; the printed 0.35M/0.77M are Li & Liang's '0.1%' "
            f"of the model (Li & Liang's own prefix length for table-to-text: 10)"
        )
    elif method == "fttop2":
        per_block = count(model, "fttop2", top_layers=1)
        formula, fval = f"2 × params of one block = 2×{per_block}", 2 * per_block
        if row["params"] == "24M":
            note.append(f"printed 24M = {2 * per_block:,}/2^20 (Table 3 prints 25.19M)")
    elif method == "ft":
        formula, fval = "all parameters of the pre-trained model (task head excluded)", None
    elif method == "bitfit":
        formula, fval = "Σ sizes of all bias vectors (LayerNorm biases included); no formula in the paper", None
    else:
        raise KeyError(label)
    ours = count(model, method, **over)
    ref = fval if fval is not None else ours
    agrees = abs(ref - paper) <= tol
    if fval is not None and not agrees and not any("24M" in n for n in note):
        note.append(f"printed {row['params']} disagrees with the formula ({fval:,})")
    if fval is not None and ours != fval:
        note.append(f"ours != formula ({ours:,} vs {fval:,})")
    if method in ("ft", "bitfit") and not agrees:
        note.append(f"printed {row['params']} vs our count {ours:,}")
    config = (
        method
        + "".join(f" {k}={v}" for k, v in over.items() if k != "targets")
        + (" (q,v)" if method == "lora" else "")
    )
    return {
        "model": model,
        "method": label + row.get("marker", "").replace("*", "*"),
        "config": config,
        "ours": ours,
        "paper": row["params"],
        "formula": formula,
        "formula_value": fval,
        "paper_matches_formula": agrees if fval is not None else None,
        "note": "; ".join(note),
    }


VARIANT_MODELS = {"roberta-base": 8, "roberta-large": 8, "gpt2-medium": 4}  # model -> r (LoRA's r in the paper)
VARIANTS = ("lora", *VARIANT_METHODS)  # LoRA, then its variants (repro.method_traits)


def d_ff(name: str) -> int:
    a = load_group("model", name).arch
    return a.get("intermediate_size") or a.get("n_inner") or 4 * dims(name)[1]


def variant_formula(model: str, method: str, r: int) -> tuple[str, int]:
    """|Θ| of a LoRA variant on (q, v), or on every block matrix for lora_all_linear. L̂_LoRA = 2L matrices of d × d."""
    L, d = dims(model)
    if method in ("lora", "rslora", "pissa"):  # rsLoRA, PiSSA change γ and the init, not the shapes
        return f"2·L̂_LoRA·d·r = 2·{2 * L}·{d}·{r}", 2 * 2 * L * d * r
    if method == "dora":  # + a magnitude per output row of each adapted matrix
        return f"2·L̂_LoRA·d·r + L̂_LoRA·d = 2·{2 * L}·{d}·{r} + {2 * L}·{d}", 2 * 2 * L * d * r + 2 * L * d
    if (
        method in ("lora_all_linear", "qlora")
    ):  # QLoRA: LoRA on all linears; the 4-bit base is not counted. Σ over a block's matrices of r·(d_in + d_out): q,k,v,o, mlp_in, mlp_out
        f = d_ff(model)
        return (f"L·r·(4·2d + 2·(d+d_ff)) = {L}·{r}·(8·{d} + 2·({d}+{f}))", L * r * (8 * d + 2 * (d + f)))
    if method == "adalora":  # P, Q, Λ at init_r on all six block matrices; GPT-2's fused c_attn is one 3d × d matrix
        f, r0 = d_ff(model), load_group("method", "adalora").init_r
        if load_group("model", model).model_type == "gpt2":
            return (
                f"L·(r₀(d+3d)+r₀ + r₀·2d+r₀ + 2·(r₀(d+d_ff)+r₀)), r₀=init_r = "
                f"{L}·({r0}·4·{d}+{r0} + {r0}·2·{d}+{r0} + 2·({r0}·({d}+{f})+{r0}))",
                L * (r0 * 4 * d + r0 + r0 * 2 * d + r0 + 2 * (r0 * (d + f) + r0)),
            )
        return (
            f"L·(4·(2d·r₀+r₀) + 2·(r₀(d+d_ff)+r₀)), r₀=init_r = {L}·(4·(2·{d}·{r0}+{r0}) + 2·({r0}·({d}+{f})+{r0}))",
            L * (4 * (2 * d * r0 + r0) + 2 * (r0 * (d + f) + r0)),
        )
    raise KeyError(method)


def variant_rows() -> list[dict]:
    """Our |Θ| of each LoRA variant (task head excluded) on the paper's models, with its formula; no printed count
    (the paper has none of these methods). AdaLoRA: the tensors' size at init_r; pruning zeroes triplets down to an
    average target_r but keeps the shapes (PEFT's masking), so the stored |Θ| does not shrink."""
    out = []
    for model, r in VARIANT_MODELS.items():
        for method in VARIANTS:
            if method == "qlora" and load_group("model", model).model_type == "gpt2":
                continue  # Conv1D is not quantized (repro.methods.qlora)
            formula, fval = variant_formula(model, method, r)
            if method == "adalora":
                ours, config = count(model, method), f"adalora init_r={load_group('method', 'adalora').init_r}"
            else:
                ours, config = count(model, method, r=r, alpha=r), f"{method} r={r}"
            out.append(
                {
                    "table": "variants",
                    "model": model,
                    "method": method,
                    "config": config,
                    "ours": ours,
                    "paper": "-",
                    "formula": formula,
                    "formula_value": fval,
                    "paper_matches_formula": None,
                    "note": "" if ours == fval else f"ours != formula ({ours:,} vs {fval:,})",
                }
            )
    return out


# SmolLM2-135M under the methods of conf/table/e2e_cpu.yaml (sizes: the paper's GPT-2 M rows, see that table)
STAND_IN_ROWS = [
    ("FT", "ft", {}),
    ("FTTop2", "fttop2", {}),
    ("AdapterL", "adapter_l", {"r": 6}),
    ("AdapterH", "adapter_h", {"r": 111}),
    ("PreEmbed", "prefix_embed", {"l_p": 10, "l_i": 0}),
    ("PreLayer", "prefix_layer", {"l_p": 10, "l_i": 0}),
    ("LoRA", "lora", {"r": 4, "alpha": 32, "targets": ["q", "v"]}),
    ("BitFit", "bitfit", {}),
]
# ... and the sizes conf/table/e2e_cpu_tuned.yaml adds: the adapters and the prefix at LoRA's budget (230,400), the
# prefix trained through Li & Liang's MLP (|Θ| = the prefix that remains; the note gives the count while training)
TUNED_ROWS = [
    ("AdapterL", "adapter_l", {"r": 5}),
    ("AdapterH", "adapter_h", {"r": 2}),
    ("PreLayer", "prefix_layer", {"l_p": 13, "l_i": 0, "reparam": "mlp"}),
]


def llama_formula(model: str, method: str, over: dict) -> tuple[str, int | None]:
    """|Θ| of `method` on a Llama from its config alone (no model built)."""
    a = load_group("model", model).arch
    L, d, ff, V = a.num_hidden_layers, a.hidden_size, a.intermediate_size, a.vocab_size
    d_kv = a.num_key_value_heads * a.get("head_dim", d // a.num_attention_heads)
    block = 2 * d * d + 2 * d * d_kv + 3 * d * ff + 2 * d  # q, o; k, v; gate, up, down; two RMSNorm weights
    if method == "ft":
        return f"V·d + L·block + d = {V}·{d} + {L}·{block} + {d} (LM head tied to the embedding)", V * d + L * block + d
    if method == "fttop2":
        return (
            f"2·block = 2·(2·d·d + 2·d·d_kv + 3·d·d_ff + 2·d) = 2·(2·{d}·{d} + 2·{d}·{d_kv} + 3·{d}·{ff} + 2·{d})",
            2 * block,
        )
    if method == "lora":
        r = over["r"]
        return (
            f"L·r·((d+d) + (d+d_kv)) = {L}·{r}·(({d}+{d}) + ({d}+{d_kv}))  [not 2·L̂·d·r = {2 * 2 * L * d * r:,}: "
            f"W_v is {d} -> {d_kv}]",
            L * r * ((d + d) + (d + d_kv)),
        )
    if method == "adapter_l":
        r = over["r"]
        return f"L·(2·d·r+r+d) + 2·L·d = {L}·(2·{d}·{r}+{r}+{d}) + 2·{L}·{d}  (own LayerNorm)", L * (
            2 * d * r + r + d
        ) + 2 * L * d
    if method == "adapter_h":
        r = over["r"]
        return (
            f"2L·(2·d·r+r+d) + 2L·d = {2 * L}·(2·{d}·{r}+{r}+{d}) + {2 * L}·{d}  (RMSNorm: weight only)",
            2 * L * (2 * d * r + r + d) + 2 * L * d,
        )
    if method == "prefix_layer":
        n = over["l_p"] + over["l_i"]
        return f"L·d·(l_p+l_i) = {L}·{d}·({over['l_p']}+{over['l_i']})", L * d * n
    if method == "prefix_embed":
        n = over["l_p"] + over["l_i"]
        return f"d·(l_p+l_i) = {d}·({over['l_p']}+{over['l_i']})", d * n
    if method == "bitfit":
        return "Σ sizes of bias vectors = 0 (attention_bias=False, mlp_bias=False, RMSNorm)", None
    raise KeyError(method)


def reparam_formula(model: str, method: str, over: dict) -> tuple[str, int] | None:
    """The count while training of a prefix trained through Li & Liang's MLP: P' (n x d) and the MLP, Linear(d, mid)
    -> tanh -> Linear(mid, L·d) (PreEmbed: Linear(mid, d)); None without the reparametrization."""
    if not over.get("reparam"):
        return None
    L, d = dims(model)
    n, mid = over["l_p"] + over["l_i"], over.get("mid_dim", load_group("method", method).mid_dim)
    out, name = (L * d, "L·d") if method == "prefix_layer" else (d, "d")
    return (
        f"n·d + (d·mid + mid) + (mid·{name} + {name}) = {n}·{d} + ({d}·{mid} + {mid}) + ({mid}·{out} + {out})",
        n * d + (d * mid + mid) + (mid * out + out),
    )


def stand_in_rows(model: str = "smollm2-135m", table: str = "e2e_cpu", rows: list | None = None) -> list[dict]:
    out = []
    for label, method, over in STAND_IN_ROWS if rows is None else rows:
        formula, fval = llama_formula(model, method, over)
        try:
            got, note = counts(model, method, **over), ""
            ours = got["adapter_params"]
        except ReproError as exc:  # BitFit on a model without biases
            got, ours, note = None, None, f"refused: {exc}"
        if fval is not None and ours != fval:
            note = f"ours != formula ({ours:,} vs {fval:,})"
        if (training := reparam_formula(model, method, over)) is not None:
            note = (
                f"|Θ| = the prefix kept after training (Li & Liang's count); while training, P' and the MLP: "
                f"{got['trainable_params']:,}"
                + ("" if got["trainable_params"] == training[1] else f" != formula {training[1]:,}")
                + f" ({training[0]})"
            )
        config = (
            method
            + "".join(f" {k}={v}" for k, v in over.items() if k not in ("targets", "alpha"))
            + (" (q,v)" if method == "lora" else "")
        )
        out.append(
            {
                "table": table,
                "model": model,
                "method": label,
                "config": config,
                "ours": ours,
                "paper": "-",
                "formula": formula,
                "formula_value": fval,
                "paper_matches_formula": None,
                "note": note,
            }
        )
    return out


def all_rows() -> list[dict]:
    out, precise = [], {}
    for row in OmegaConf.to_container(OmegaConf.load(PAPER_DIR / TABLES["table3"]), resolve=True)["rows"]:
        precise.setdefault((row["model"], row["method"]), []).append(row["params"])
    for table, fname in TABLES.items():
        doc = OmegaConf.to_container(OmegaConf.load(PAPER_DIR / fname), resolve=True)
        for row in doc["rows"]:
            out.append({"table": table, **row_count(row, precise)})
    return out + stand_in_rows() + stand_in_rows(table="e2e_cpu_tuned", rows=TUNED_ROWS)


def fmt_text(rows: list[dict]) -> str:
    head = f"{'table':<13} {'model':<19} {'method':<10} {'config':<22} {'ours':>13} {'paper':>8} {'formula value':>14}  agrees  note"
    lines = [head, "-" * len(head)]
    for r in rows:
        fv = f"{r['formula_value']:,}" if r["formula_value"] is not None else "-"
        ag = {True: "yes", False: "NO", None: "-"}[r["paper_matches_formula"]]
        ours = f"{r['ours']:,}" if r["ours"] is not None else "-"
        lines.append(
            f"{r['table']:<13} {r['model']:<19} {r['method']:<10} {r['config']:<22} {ours:>13} "
            f"{r['paper']:>8} {fv:>14}  {ag:<6}  {r['note']}"
        )
    return "\n".join(lines)


@command
def main(argv: list[str] | None = None) -> int:
    p = parser("params", __doc__)
    p.add_argument("--format", choices=["text", "json"], default="text")
    p.add_argument("--variants", action="store_true", help="the LoRA variants (rsLoRA, PiSSA, DoRA, all-linear)")
    args = p.parse_args(argv)
    rows = variant_rows() if args.variants else all_rows()
    print(json.dumps(rows, indent=2) if args.format == "json" else fmt_text(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
