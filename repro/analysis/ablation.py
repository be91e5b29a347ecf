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

from repro import CONF_DIR, PROJECT_ROOT
from repro import records as rec

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


def main_metric(record: dict) -> str:
    return ((record.get("config") or {}).get("task") or {}).get("main_metric", "accuracy")


def build(table: str, results_dir: str | Path = "results", model: str | None = None) -> dict:
    """model: read the records of this model instead of each row's own (e.g. a smoke run on tiny-roberta)."""
    cfg = yaml.safe_load((CONF_DIR / "table" / f"{table}.yaml").read_text())["table"]
    paper = yaml.safe_load(PAPER.read_text())
    scores: dict[tuple[str, str], list[tuple[int, float]]] = {}
    failed: dict[tuple[str, str], int] = {}
    for path, record in rec.iter_records(results_dir, cfg["name"]):
        if record.get("method") != "lora":
            continue
        key = (record.get("model"), record.get("variant", "default"), record.get("task"))
        if record.get("status") != "ok":
            failed[key] = failed.get(key, 0) + 1
            continue
        v = (record.get("metrics") or {}).get(main_metric(record))
        if v is not None:
            scores.setdefault(key, []).append((record.get("seed"), 100.0 * v))
    rows = []
    for row in cfg["rows"]:
        pc = row.get("paper_cell") or {}
        line = {"model": model or row["model"], "variant": row["variant"], "label": row["label"], "targets": row["set"]["method"]["targets"],
                "r": row["set"]["method"]["r"],
                "paper_WikiSQL": paper_value(paper, table, pc.get("weights", ""), pc.get("r"), "WikiSQL"),
                "paper_MultiNLI": paper_value(paper, table, pc.get("weights", ""), pc.get("r"), "MultiNLI"),
                "tasks": {}}
        for task in cfg["tasks"]:
            key = (model or row["model"], row["variant"], task)
            vals = [v for _, v in sorted(scores.get(key, []))]
            line["tasks"][task] = {"n": len(vals), "scores": vals,
                                   "mean": statistics.mean(vals) if vals else None,
                                   "std": statistics.stdev(vals) if len(vals) > 1 else None,
                                   "failed": failed.get(key, 0)}
        rows.append(line)
    return {"table": table, "tasks": cfg["tasks"], "rows": rows}


def markdown(result: dict) -> str:
    tasks = [t for t in result["tasks"] if any(r["tasks"][t]["n"] for r in result["rows"])] or result["tasks"][:1]
    head = ["Weights", "r", *[f"{t} (ours, MiniLM)" for t in tasks], "WikiSQL (paper, GPT-3)", "MultiNLI (paper, GPT-3)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in result["rows"]:
        cells = []
        for t in tasks:
            c = row["tasks"][t]
            if not c["n"]:
                cells.append("-" + (f" (failed ×{c['failed']})" if c["failed"] else ""))
            else:
                std = f" ± {c['std']:.1f}" if c["std"] is not None else ""
                cells.append(f"{c['mean']:.1f}{std} (n={c['n']})")
        lines.append("| " + " | ".join([row["label"].split(" r=")[0], str(row["r"]), *cells,
                                         str(row["paper_WikiSQL"] if row["paper_WikiSQL"] is not None else "-"),
                                         str(row["paper_MultiNLI"] if row["paper_MultiNLI"] is not None else "-")]) + " |")
    return "\n".join(lines) + "\n"


def write(table: str, results_dir: str | Path = "results", out_dir: str | Path | None = None,
          model: str | None = None) -> tuple[str, list[Path]]:
    result = build(table, results_dir, model)
    out = Path(out_dir) if out_dir else Path(results_dir) / "analysis"
    out.mkdir(parents=True, exist_ok=True)
    title = {"rank": "Table 6 (rank r)", "which_weights": "Table 5 (which weight matrices, fixed budget)"}.get(table, table)
    md = (f"# {title}: LoRA on MiniLM vs the paper's GPT-3\n\n"
          f"Dev score (main metric × 100, mean ± std over seeds) from the records of `conf/table/{table}.yaml`; the paper's "
          f"columns are GPT-3 175B validation accuracy (repro/paper/table5_6_ablations.yaml).\n\n" + markdown(result))
    paths = [out / f"ablation_{table}.md", out / f"ablation_{table}.json"]
    paths[0].write_text(md)
    paths[1].write_text(json.dumps(result, indent=1) + "\n")
    return md, paths
