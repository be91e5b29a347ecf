"""Section 7 on real runs: subspace similarity (Figures 3/4/6/7), spectra, and Table 7, from runner checkpoints.

    python -m repro.analyze report --table rank --model minilm --task sst2 --family qv --r-small 8 --r-large 64

reads results/<table>/<model>/lora.<family>_r<r>/<task>/seed<k>.safetensors (+ the .json record beside it), loads
the pretrained W from conf/model/<model>.yaml, and writes PNG figures, a markdown report and a JSON file under
results/analysis/<table>_<model>_<task>_<family>/.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from repro.analysis import figures
from repro.analysis.factors import Adapter, base_weights, load_adapter
from repro.analysis.linalg import (
    amplification,
    effective_rank,
    energy_captured,
    expected_random_phi,
    numerical_rank,
    phi_grid,
    right_singular_basis,
    singular_values,
    stable_rank,
    subspace_similarity,
)
from repro.results import Record

# Table 7 of the paper (GPT-3, layer 48 of 96, ΔW_q); repro/paper/section7_analysis.yaml
PAPER_TABLE7 = [
    {
        "r": 4,
        "proj_dW": 0.32,
        "proj_W": 21.67,
        "proj_random": 0.02,
        "dW_fro": 6.91,
        "W_fro": 61.95,
        "amplification": 21.59,
    },
    {
        "r": 64,
        "proj_dW": 1.90,
        "proj_W": 37.71,
        "proj_random": 0.33,
        "dW_fro": 3.57,
        "W_fro": 61.95,
        "amplification": 1.88,
    },
]


# ---------------------------------------------------------------- locating cells


def cell_weights(
    results_dir: str | Path, table: str, model: str, variant: str, task: str, seed: int, method: str = "lora"
) -> Path:
    name = method if variant == "default" else f"{method}.{variant}"
    return Path(results_dir) / table / model / name / task / f"seed{seed}.safetensors"


def find_ranks(results_dir: str | Path, table: str, model: str, task: str, family: str) -> dict[int, list[int]]:
    """{r: [seeds]} of the checkpoints present for variants `<family>_r<r>`."""
    root = Path(results_dir) / table / model
    out: dict[int, list[int]] = {}
    for d in sorted(root.glob(f"lora.{family}_r*")):
        try:
            r = int(d.name.split("_r")[-1])
        except ValueError:
            continue
        seeds = sorted(int(p.stem[4:]) for p in (d / task).glob("seed*.safetensors"))
        if seeds:
            out[r] = seeds
    return dict(sorted(out.items()))


def middle_layer(n_layers: int) -> int:
    """0-based index of the paper's "48th of 96" for a network of n_layers: layer n/2 counted from 1."""
    return max(0, n_layers // 2 - 1)


# ---------------------------------------------------------------- the three analyses


def subspace_grids(
    a1: Adapter, a2: Adapter, basis: str = "A", layers=None, targets=None
) -> dict[int, dict[str, np.ndarray]]:
    """{layer: {target: φ grid}} between two adapters. basis "A": right-singular vectors of A (the paper);
    "dW": right-singular vectors of ΔW = (alpha/r) B A (the input directions ΔW actually reads)."""
    out: dict[int, dict[str, np.ndarray]] = {}
    for layer in layers if layers is not None else a1.layers:
        for t in targets if targets is not None else a1.targets:
            if (layer, t) not in a1.factors or (layer, t) not in a2.factors:
                continue
            f1, f2 = a1[(layer, t)], a2[(layer, t)]
            if basis == "A":
                g = subspace_similarity(f1.A, f2.A)
            elif basis == "dW":
                u1 = right_singular_basis(f1.delta())[:, : f1.r]
                u2 = right_singular_basis(f2.delta())[:, : f2.r]
                g = phi_grid(u1, u2)
            else:
                raise ValueError(f"basis={basis!r}; allowed: A, dW")
            out.setdefault(layer, {})[t] = g
    return out


def random_grid(r1: int, r2: int, d: int, seed: int = 0) -> np.ndarray:
    """φ between two random Gaussian matrices of shapes r1 × d and r2 × d (Figure 4, right)."""
    rng = np.random.default_rng(seed)
    return subspace_similarity(rng.standard_normal((r1, d)), rng.standard_normal((r2, d)))


def spectrum_rows(adapter: Adapter, W: dict) -> list[dict]:
    rows = []
    for (layer, t), f in adapter.factors.items():
        dw = f.delta()
        s = singular_values(dw)
        sw = singular_values(W[(layer, t)])
        sa = singular_values(f.A)
        rows.append(
            {
                "layer": layer,
                "target": t,
                "r": f.r,
                "dW_sigma": s[: max(f.r, 1) + 2].tolist(),  # the r non-zero ones and the next two (numerical zeros)
                "dW_numerical_rank": numerical_rank(s, tuple(dw.shape)),
                "dW_energy": energy_captured(s, ks=[k for k in (1, 2, 4, 8, 16, 32, 64) if k <= f.r]),
                "dW_stable_rank": stable_rank(s),
                "dW_effective_rank": effective_rank(s[: f.r]),
                "W_sigma_top": sw[:8].tolist(),
                "W_energy": energy_captured(sw, ks=(1, 2, 4, 8, 16, 32, 64)),
                "W_stable_rank": stable_rank(sw),
                "W_effective_rank": effective_rank(sw),
                "A_sigma": sa.tolist(),
            }
        )
    return rows


def amplification_rows(adapter: Adapter, W: dict, seed: int = 0, n_random: int = 10) -> list[dict]:
    rows = []
    for (layer, t), f in adapter.factors.items():
        a = amplification(W[(layer, t)], f.delta(), r=f.r, n_random=n_random, seed=seed)
        rows.append({"layer": layer, "target": t, "adapter_r": f.r, **a})
    return rows


# ---------------------------------------------------------------- summaries


def phi_summary(grids: dict[int, dict[str, np.ndarray]], d: int) -> dict:
    """Scalars of a φ grid per (layer, target): φ(1,1), φ(1, n) with n = the first adapter's r, φ(1, jmax) and the diagonal φ(i, i) mean,
    next to the random-subspace expectation max(i, j)/d."""
    out = {}
    for layer, by_t in grids.items():
        for t, g in by_t.items():
            n = min(g.shape)
            diag = np.array([g[i, i] for i in range(n)])
            out[f"{layer}/{t}"] = {
                "layer": layer,
                "target": t,
                "shape": list(g.shape),
                "phi_1_1": float(g[0, 0]),
                "phi_1_n": float(g[0, n - 1]),
                "phi_1_jmax": float(g[0, -1]),
                "phi_imax_jmax": float(g[-1, -1]),
                "diag_mean": float(diag.mean()),
                "random_expect_1_1": expected_random_phi(1, 1, d),
                "random_expect_1_n": expected_random_phi(1, n, d),
                "random_expect_1_jmax": expected_random_phi(1, g.shape[1], d),
                "random_expect_diag_mean": float(np.mean([expected_random_phi(i, i, d) for i in range(1, n + 1)])),
            }
    return out


def _fmt(x, nd=2) -> str:
    if x is None:
        return "-"
    if isinstance(x, float) and (math.isinf(x) or math.isnan(x)):
        return str(x)
    return f"{x:.{nd}f}"


def table7_markdown(rows_by_r: dict[int, list[dict]], layer: int, n_layers: int, targets: list[str]) -> list[str]:
    lines = []
    for t in targets:
        lines += [
            f"**ΔW_{t}, layer {layer + 1} of {n_layers}** (paper: ΔW_q, layer 48 of 96, GPT-3)",
            "",
            "| r | ‖UᵀWV‖_F, U,V from ΔW | from W | from random | ‖W‖_F | ‖ΔW‖_F | amplification ‖ΔW‖_F/‖UᵀWV‖_F |",
            "|---|---|---|---|---|---|---|",
        ]
        for r, rows in rows_by_r.items():
            for row in rows:
                if row["layer"] == layer and row["target"] == t:
                    lines.append(
                        f"| {r} | {_fmt(row['proj_dW'], 3)} | {_fmt(row['proj_W'])} | {_fmt(row['proj_random'], 3)} "
                        f"| {_fmt(row['W_fro'])} | {_fmt(row['dW_fro'], 3)} | {_fmt(row['amplification'], 1)} |"
                    )
        if t == "q":
            for p in PAPER_TABLE7:
                lines.append(
                    f"| paper r={p['r']} (GPT-3) | {p['proj_dW']} | {p['proj_W']} | {p['proj_random']} | "
                    f"{p['W_fro']} | {p['dW_fro']} | {p['amplification']} |"
                )
        lines.append("")
    return lines


def per_layer_markdown(rows_by_r: dict[int, list[dict]]) -> list[str]:
    lines = [
        "| r | layer | ΔW | ‖UᵀWV‖_F (ΔW) | (W) | (random) | ‖W‖_F | ‖ΔW‖_F | amplification | "
        r"top-1 only: \|u₁ᵀWv₁\| / random level / σ₁(ΔW) ÷ \|u₁ᵀWv₁\| |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r, rows in rows_by_r.items():
        for row in sorted(rows, key=lambda x: (x["target"], x["layer"])):
            p1 = row["proj_dW_k"].get(1, row["proj_dW_k"].get("1"))
            e1 = row["proj_random_expect_k"].get(1, row["proj_random_expect_k"].get("1"))
            s1 = row["dW_sigma_top"][0]
            lines.append(
                f"| {r} | {row['layer'] + 1} | {row['target']} | {_fmt(row['proj_dW'], 3)} | {_fmt(row['proj_W'])} | "
                f"{_fmt(row['proj_random'], 3)} | {_fmt(row['W_fro'])} | {_fmt(row['dW_fro'], 3)} | "
                f"{_fmt(row['amplification'], 1)} | {_fmt(p1, 3)} / {_fmt(e1, 3)} / {_fmt(s1 / p1 if p1 else float('inf'), 1)} |"
            )
    return lines


def record_line(a: Adapter) -> str:
    rec = Record.from_dict(a.record or {})
    metric = ", ".join(f"{k} {v:.4f}" for k, v in rec.metrics.items() if isinstance(v, (int, float)))
    return (
        f"`{a.source}`: r={a.r}, alpha={a.alpha:g}, targets={a.method.get('targets')}, "
        f"status={rec.status or '?'}, dev {metric or '-'}, wall {'-' if rec.wall_s is None else rec.wall_s} s"
    )


def report(
    results_dir: str | Path = "results",
    table: str = "rank",
    model: str = "minilm",
    task: str = "sst2",
    family: str = "qv",
    r_small: int = 8,
    r_large: int = 64,
    out_dir: str | Path | None = None,
    seed: int = 0,
) -> dict:
    results_dir = Path(results_dir)
    out = Path(out_dir) if out_dir else results_dir / "analysis" / f"{table}_{model}_{task}_{family}"
    out.mkdir(parents=True, exist_ok=True)
    ranks = find_ranks(results_dir, table, model, task, family)
    if r_small not in ranks or r_large not in ranks:
        raise SystemExit(
            f"need checkpoints for lora.{family}_r{r_small} and lora.{family}_r{r_large} under "
            f"{results_dir / table / model} (task {task}); found ranks {ranks or 'none'}"
        )
    load = lambda r, s: load_adapter(cell_weights(results_dir, table, model, f"{family}_r{r}", task, s))  # noqa: E731
    adapters = {(r, s): load(r, s) for r, seeds in ranks.items() for s in seeds}
    a_small, a_large = adapters[(r_small, ranks[r_small][0])], adapters[(r_large, ranks[r_large][0])]
    W = base_weights(a_small)
    n_layers = len(a_small.layers)
    mid = middle_layer(n_layers)
    targets = a_small.targets
    d = a_small[(mid, targets[0])].A.shape[1]
    layer_label = f"layer {mid + 1} of {n_layers}"
    files, summary = (
        [],
        {
            "cells": [record_line(a) for a in adapters.values()],
            "middle_layer_1based": mid + 1,
            "n_layers": n_layers,
            "d_in": d,
            "ranks": {str(k): v for k, v in ranks.items()},
        },
    )
    note = f"{model}, {task}, {family}: right-singular vectors of A (Section 7.2)"

    # Figure 3 / 6: r_small vs r_large
    g36 = subspace_grids(a_small, a_large, "A")
    files.append(
        figures.figure3(
            g36[mid], layer_label, r_small, r_large, out / f"fig3_r{r_small}_vs_r{r_large}_layer{mid + 1}.png", note
        )
    )
    files.append(
        figures.per_layer(
            g36,
            f"φ(A_r={r_small}, A_r={r_large}, i, j), every layer (Figure 6 style), j ≤ {r_small}",
            out / f"fig6_r{r_small}_vs_r{r_large}_all_layers.png",
            zoom=r_small,
        )
    )
    g36_dw = subspace_grids(a_small, a_large, "dW")
    files.append(
        figures.figure3(
            g36_dw[mid],
            layer_label,
            r_small,
            r_large,
            out / f"fig3_dW_r{r_small}_vs_r{r_large}_layer{mid + 1}.png",
            f"{model}, {task}: right-singular vectors of ΔW = (α/r)BA instead of A (not in the paper)",
        )
    )
    summary["phi_small_vs_large_A"] = phi_summary(g36, d)
    summary["phi_small_vs_large_dW"] = phi_summary(g36_dw, d)
    summary["grids"] = {
        f"A_r{r_small}_vs_A_r{r_large}": {f"{l}/{t}": g.tolist() for l, bt in g36.items() for t, g in bt.items()}
    }

    # Figure 4 / 7: two seeds at the same rank
    summary["phi_seeds"] = {}
    for r, seeds in ranks.items():
        if len(seeds) < 2 or r not in (r_small, r_large):
            continue
        a, b = adapters[(r, seeds[0])], adapters[(r, seeds[1])]
        g47 = subspace_grids(a, b, "A")
        rnd = random_grid(r, r, d, seed)
        vmax = 0.5 if max(g.max() for bt in g47.values() for g in bt.values()) <= 0.5 else 1.0
        files.append(
            figures.figure4(
                g47[mid],
                rnd,
                layer_label,
                r,
                out / f"fig4_seeds_r{r}_layer{mid + 1}.png",
                vmax=vmax,
                note=f"{note}; seeds {seeds[0]} and {seeds[1]}",
            )
        )
        files.append(
            figures.per_layer(
                g47,
                f"φ(A_r={r}, A'_r={r}, i, j), seeds {seeds[0]} vs {seeds[1]}, every layer (Figure 7 style)",
                out / f"fig7_seeds_r{r}_all_layers.png",
                vmax=vmax,
            )
        )
        summary["phi_seeds"][f"r{r}"] = {
            "A": phi_summary(g47, d),
            "dW": phi_summary(subspace_grids(a, b, "dW"), d),
            "random_gaussian": phi_summary({-1: {"rand": rnd}}, d)["-1/rand"],
        }
        summary["grids"][f"A_r{r}_seed{seeds[0]}_vs_seed{seeds[1]}"] = {
            f"{l}/{t}": g.tolist() for l, bt in g47.items() for t, g in bt.items()
        }
        summary["grids"][f"random_r{r}"] = rnd.tolist()

    # spectra
    spec = {r: spectrum_rows(adapters[(r, seeds[0])], W) for r, seeds in ranks.items()}
    summary["spectra"] = {f"r{r}": rows for r, rows in spec.items()}
    for t in targets:
        curves = {}
        for r in ranks:
            curves[f"ΔW_{t} r={r}"] = singular_values(adapters[(r, ranks[r][0])][(mid, t)].delta())[:r]
        curves[f"W_{t} (pretrained)"] = singular_values(W[(mid, t)])
        files.append(
            figures.spectra(
                curves,
                f"{model} {task}: singular values of ΔW = (α/r)BA and of W, ΔW_{t}, {layer_label}",
                out / f"spectrum_{t}_layer{mid + 1}.png",
            )
        )

    # Table 7
    t7 = {r: amplification_rows(adapters[(r, seeds[0])], W, seed=seed) for r, seeds in ranks.items()}
    summary["table7"] = {f"r{r}": rows for r, rows in t7.items()}
    summary["paper_table7"] = PAPER_TABLE7

    md = [
        f"# Section 7 on real runs: {model}, {task}, LoRA on {family} (table `{table}`)",
        "",
        "Generated by `python -m repro.analyze report "
        f"--results {results_dir} --table {table} --model {model} --task {task} --family {family} "
        f"--r-small {r_small} --r-large {r_large}`.",
        "",
        "Cells:",
        "",
    ]
    md += [f"- {line}" for line in summary["cells"]]
    md += [
        "",
        f"Middle layer: {layer_label} (the paper's 48 of 96). d_in = {d}; random subspaces give E[φ(i, j)] = max(i, j)/{d}.",
        "",
        "## Subspace similarity (Eq. 4, right-singular vectors of A)",
        "",
        "| pair | layer | ΔW | φ(1,1) | φ(1,n) | φ(1,j_max) | mean φ(i,i), i ≤ n | random: φ(1,1) / φ(1,n) / φ(1,j_max) / mean φ(i,i) |",
        "|---|---|---|---|---|---|---|---|",
    ]

    def phi_lines(tag, s):
        rows = []
        for key, v in sorted(s.items(), key=lambda kv: (kv[1]["target"], kv[1]["layer"])):
            rows.append(
                f"| {tag} | {v['layer'] + 1} | {v['target']} | {v['phi_1_1']:.3f} | {v['phi_1_n']:.3f} | "
                f"{v['phi_1_jmax']:.3f} | {v['diag_mean']:.3f} | {v['random_expect_1_1']:.3f} / {v['random_expect_1_n']:.3f} / "
                f"{v['random_expect_1_jmax']:.3f} / {v['random_expect_diag_mean']:.3f} |"
            )
        return rows

    md += phi_lines(f"A r={r_small} vs A r={r_large}", summary["phi_small_vs_large_A"])
    md += phi_lines(f"ΔW r={r_small} vs ΔW r={r_large}", summary["phi_small_vs_large_dW"])
    for key, v in summary["phi_seeds"].items():
        md += phi_lines(f"A {key}, two seeds", v["A"])
        rg = v["random_gaussian"]
        md.append(
            f"| random Gaussian pair {key} | - | - | {rg['phi_1_1']:.3f} | {rg['phi_1_n']:.3f} | {rg['phi_1_jmax']:.3f} | "
            f"{rg['diag_mean']:.3f} | {rg['random_expect_1_1']:.3f} / {rg['random_expect_1_n']:.3f} / "
            f"{rg['random_expect_1_jmax']:.3f} / {rg['random_expect_diag_mean']:.3f} |"
        )
    md += [
        "",
        "## Spectra of ΔW and W",
        "",
        "| r | layer | ΔW | numerical rank of ΔW | energy in top 1 / 2 / 4 / 8 of ΔW | σ(A) max/min | W: energy in top 8 / 64 | W stable rank |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r, rows in spec.items():
        for row in sorted(rows, key=lambda x: (x["target"], x["layer"])):
            e = row["dW_energy"]
            es = " / ".join(_fmt(e.get(k), 3) for k in (1, 2, 4, 8))
            sa = row["A_sigma"]
            md.append(
                f"| {r} | {row['layer'] + 1} | {row['target']} | {row['dW_numerical_rank']} | {es} | "
                f"{sa[0]:.3f}/{sa[-1]:.3f} | {row['W_energy'][8]:.3f} / {row['W_energy'][64]:.3f} | {row['W_stable_rank']:.1f} |"
            )
    md += [
        "",
        "## Table 7: ‖U_rᵀ W V_r‖_F (U, V: top-r left/right singular vectors), middle layer",
        "",
        "U, V from ΔW, from W itself, or from a random Gaussian matrix (mean of 10 draws); r = the adapter's rank. "
        "Amplification factor = ‖ΔW‖_F / ‖U_rᵀ W V_r‖_F (Appendix H.4).",
        "",
    ]
    md += table7_markdown(t7, mid, n_layers, targets)
    md += ["## Table 7 per layer", ""] + per_layer_markdown(t7)
    md += ["", "## Figures", ""] + [f"- `{Path(f).name}`" for f in files]
    (out / "report.md").write_text("\n".join(md) + "\n")
    (out / "report.json").write_text(json.dumps(summary, indent=1, default=float) + "\n")
    return {
        "out_dir": str(out),
        "files": [str(f) for f in files] + [str(out / "report.md"), str(out / "report.json")],
        "summary": summary,
    }
