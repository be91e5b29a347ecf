"""Tables 5 and 6 (Section 7.1/7.2) from the records of conf/table/which_weights.yaml and conf/table/rank.yaml,
beside the paper's GPT-3 numbers (repro/paper/table5_6_ablations.yaml).

    python -m repro.analyze ablation rank           # -> results/analysis/ablation_rank.{md,json}
    python -m repro.analyze ablation which_weights

One line per row of the table config: the dev score (the task's main metric × 100, at the selected epoch) as
mean ± std over seeds (n), and the paper's WikiSQL / MultiNLI accuracy for the same weight set and rank. The paper's
numbers are for GPT-3 175B; ours for a 6-layer MiniLM on a small CPU budget: compare the ordering of rows, not values.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import yaml

from repro import PROJECT_ROOT
from repro.config import read_group
from repro.results import MATCH_PTS, load_records, record_score

PAPER = PROJECT_ROOT / "repro" / "paper" / "table5_6_ablations.yaml"


def _weights_key(s: str) -> str:
    return s.replace(" ", "")


def paper_value(paper: dict, table: str, weights: str, r: int, dataset: str) -> float | None:
    w = _weights_key(weights)
    if table == "which_weights":
        t5 = paper["table5_which_weights"]
        for k, col in enumerate(t5["columns"]):
            if _weights_key(",".join(col["weights"])) == w and col["r"] == r:
                return t5[dataset][k]
        return None
    t6 = paper["table6_rank"]
    if r not in t6["ranks"]:
        return None
    for key, values in t6[dataset].items():
        if _weights_key(key) == w:
            return values[t6["ranks"].index(r)]
    return None


def build(table: str, results_dir: str | Path = "results", model: str | None = None) -> dict:
    """model: read the records of this model instead of each row's own (e.g. a smoke run on tiny-roberta)."""
    cfg = read_group("table", table)["table"]
    paper = yaml.safe_load(PAPER.read_text())
    scores: dict[tuple[str, str], list[tuple[int, float]]] = {}
    failed: dict[tuple[str, str], int] = {}
    for record in load_records(results_dir, cfg["name"])[0]:
        if record.method != "lora":
            continue
        key = (record.model, record.variant, record.task)
        if not record.ok:
            failed[key] = failed.get(key, 0) + 1
            continue
        if (v := record_score(record)) is not None:
            scores.setdefault(key, []).append((record.seed, v))
    rows = []
    for row in cfg["rows"]:
        pc = row.get("paper_cell") or {}
        line = {
            "model": model or row["model"],
            "variant": row["variant"],
            "label": row["label"],
            "targets": row["set"]["method"]["targets"],
            "r": row["set"]["method"]["r"],
            "paper_WikiSQL": paper_value(paper, table, pc.get("weights", ""), pc.get("r"), "WikiSQL"),
            "paper_MultiNLI": paper_value(paper, table, pc.get("weights", ""), pc.get("r"), "MultiNLI"),
            "tasks": {},
        }
        for task in cfg["tasks"]:
            key = (model or row["model"], row["variant"], task)
            vals = [v for _, v in sorted(scores.get(key, []))]
            line["tasks"][task] = {
                "n": len(vals),
                "scores": vals,
                "mean": statistics.mean(vals) if vals else None,
                "std": statistics.stdev(vals) if len(vals) > 1 else None,
                "failed": failed.get(key, 0),
            }
        rows.append(line)
    return {"table": table, "tasks": cfg["tasks"], "rows": rows, "task_names": {t: task_name(t) for t in cfg["tasks"]}}


def task_name(task: str) -> str:
    """How the table names a task's column: GLUE's name and the main metric (e.g. 'STS-B pearson')."""
    t = read_group("task", task)
    if t is None:
        return task
    return f"{t.get('glue_dir') or task} {t.get('main_metric', '')}".strip()


DATASETS = ("WikiSQL", "MultiNLI")  # the paper's columns (GPT-3 175B validation accuracy)
TOL = MATCH_PTS  # points: "as good as the best rank", scores that "match" (repro.results)


def _ours(c: dict) -> str:
    if not c["n"]:
        return "-" + (f" (failed ×{c['failed']})" if c["failed"] else "")
    std = f" ± {c['std']:.1f}" if c["std"] is not None else ""
    return f"{c['mean']:.1f}{std} (n={c['n']})"


def weights_label(row: dict) -> str:
    return ",".join(f"W_{t}" for t in row["targets"])


def tasks_with_scores(result: dict) -> list[str]:
    return [t for t in result["tasks"] if any(r["tasks"][t]["n"] for r in result["rows"])] or result["tasks"][:1]


def _paper(v) -> str:
    return "-" if v is None else f"{v:.1f}"


def ordering(result: dict) -> list[str]:
    """The paper's ordering question per dataset, ours and the paper's side by side, read off the means.
    Table 5: which weight set scores best at the fixed budget, and does W_q,W_v (r=4) beat every single type (r=8)?
    Table 6: per weight set, the smallest r within TOL points of that set's best r (the paper: r=1 suffices for
    W_q,W_v, W_q alone needs a larger r)."""
    datasets = [(d, {r["variant"]: r[f"paper_{d}"] for r in result["rows"]}, "paper, GPT-3") for d in DATASETS]
    names = result.get("task_names", {})
    datasets += [
        (names.get(t, t), {r["variant"]: r["tasks"][t]["mean"] for r in result["rows"]}, "ours, MiniLM")
        for t in tasks_with_scores(result)
    ]
    label = {r["variant"]: weights_label(r) for r in result["rows"]}
    rank = {r["variant"]: r["r"] for r in result["rows"]}
    lines = []
    for name, vals, who in datasets:
        vals = {v: x for v, x in vals.items() if x is not None}
        if not vals:
            continue
        if result["table"] == "which_weights":
            best = max(vals, key=vals.get)
            singles = {v: x for v, x in vals.items() if len(label[v].split(",")) == 1}
            line = f"- {name} ({who}): best {label[best]} ({vals[best]:.1f})"
            if "qv_r4" in vals and singles:
                top = max(singles, key=singles.get)
                gap = vals["qv_r4"] - singles[top]
                line += (
                    f"; W_q,W_v {vals['qv_r4']:.1f} vs the best single type {label[top]} {singles[top]:.1f} "
                    f"({gap:+.1f}: {'beats every single type' if gap > 0 else 'does not beat every single type'})"
                )
            lines.append(line)
        else:
            parts = []
            for fam in dict.fromkeys(label.values()):
                by_r = {rank[v]: x for v, x in vals.items() if label[v] == fam}
                if len(by_r) < 2:
                    continue
                top = max(by_r.values())
                enough = min(r for r, x in by_r.items() if x >= top - TOL)
                parts.append(f"{fam}: r={enough} (best {top:.1f} at r={max(by_r, key=by_r.get)})")
            if parts:
                lines.append(f"- {name} ({who}): smallest r within {TOL} point of the best: " + "; ".join(parts))
    return lines


def markdown(result: dict) -> str:
    """The paper's layout. Table 5: weight sets as columns, a row of ranks, then one row per dataset.
    Table 6: one row per (dataset, weight set), ranks as columns."""
    tasks = tasks_with_scores(result)
    rows = result["rows"]
    names = result.get("task_names", {})
    if result["table"] == "which_weights":
        head = ["", "Weight type", *[weights_label(r) for r in rows]]
        body = [["", "Rank r", *[str(r["r"]) for r in rows]]]
        body += [[f"{d} (paper, GPT-3)", "", *[_paper(r[f"paper_{d}"]) for r in rows]] for d in DATASETS]
        body += [[f"{names.get(t, t)} (ours, MiniLM)", "", *[_ours(r["tasks"][t]) for r in rows]] for t in tasks]
    else:
        ranks = sorted({r["r"] for r in rows})
        head = ["Dataset", "Weight type", *[f"r={k}" for k in ranks]]
        body = []
        families = list(dict.fromkeys(weights_label(r) for r in rows))
        for name, who in [*((d, "paper, GPT-3") for d in DATASETS), *((t, "ours, MiniLM") for t in tasks)]:
            for fam in families:
                by_r = {r["r"]: r for r in rows if weights_label(r) == fam}
                cells = [
                    (_paper(by_r[k][f"paper_{name}"]) if name in DATASETS else _ours(by_r[k]["tasks"][name]))
                    if k in by_r
                    else ""
                    for k in ranks
                ]
                body.append([f"{names.get(name, name)} ({who})", fam, *cells])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(b) + " |" for b in body]
    order = ordering(result)
    return "\n".join(lines) + "\n" + ("\nOrdering, read off the means:\n\n" + "\n".join(order) + "\n" if order else "")


def write(
    table: str, results_dir: str | Path = "results", out_dir: str | Path | None = None, model: str | None = None
) -> tuple[str, list[Path]]:
    result = build(table, results_dir, model)
    out = Path(out_dir) if out_dir else Path(results_dir) / "analysis"
    out.mkdir(parents=True, exist_ok=True)
    title = {"rank": "Table 6 (rank r)", "which_weights": "Table 5 (which weight matrices, fixed budget)"}.get(
        table, table
    )
    md = (
        f"# {title}: LoRA on MiniLM vs the paper's GPT-3\n\n"
        f"Dev score (main metric × 100, mean ± std over seeds) from the records of `conf/table/{table}.yaml`; the paper's "
        f"columns are GPT-3 175B validation accuracy (repro/paper/table5_6_ablations.yaml).\n\n" + markdown(result)
    )
    paths = [out / f"ablation_{table}.md", out / f"ablation_{table}.json"]
    paths[0].write_text(md)
    paths[1].write_text(json.dumps(result, indent=1) + "\n")
    return md, paths
