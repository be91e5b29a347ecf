"""Records -> the paper's tables: `python -m repro.tables glue` (markdown on stdout; .md, .csv and .tex under
results/tables/).

For each row of the table config (model, method, variant) and each task column: the per-seed scores of the `ok`
records (the task's `main_metric` x 100, taken at the selected epoch: `train.select=best` is the paper's best dev
epoch), their mean +- std (the suite's statistic) and median (the paper's: "median over 5 random seeds"), the number
of seeds, the paper's number beside it and the difference. Rows whose numbers the paper took from prior work (`*`,
`cited: true`) are marked "cited": the paper did not run them. A stand-in model (minilm, tiny-*) gets its own row,
next to the paper row of the model it stands in for. Missing cells print as "-", failed ones as "failed xN" (the
reasons are listed under the table); records that fit no row are listed too, and so are files that cannot be read as
records (`--strict`: an error instead): nothing is dropped silently. A cell with a record whose code cannot be traced
(no git commit, or uncommitted changes without the seed<k>.diff that `repro.run` writes beside the record) is marked
§, and those records are listed under the table.

The NLG tables (3, 13, 14) print one task's metrics as columns instead (the table config's `render.columns`: the
paper's column name, the record's metric key, the scale the paper prints it at, and the paper file's column), e.g.
E2E's BLEU, NIST, MET, ROUGE-L, CIDEr, or WebNLG's BLEU/MET/TER on its unseen, seen and all test inputs.

The records, their scores, parameter counts, costs, the cells' statistics and the tuned rows' choices come from
repro.results; this module lays them out beside the paper's numbers and renders them (markdown, csv, tex).
"""

from __future__ import annotations

import csv
import math
import re
import statistics
import sys
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from repro import PROJECT_ROOT, tune
from repro.cli import add_out_dir, add_results_dir, add_strict, command, parser, report_unreadable, results_dir
from repro.config import group_path, options, read_group
from repro.errors import ReproError
from repro.paths import input_dir, output_dir
from repro.results import Cell, Record, Tuning, by_cell, convergence, load_records, main_metric

PAPER_DIR = PROJECT_ROOT / "repro" / "paper"
MISSING = "-"
UNTRACED = "§"
DID_NOT_TRAIN = "did not train"


# ---------------------------------------------------------------- inputs


def load_table_config(name: str) -> dict:
    """conf/table/<name>.yaml's `table` node (plain YAML: the rows, tasks, stand-ins and paper file); ReproError for
    a name that is no table."""
    data = read_group("table", name)
    if data is None:
        raise ReproError(
            f"table={name}: no such table ({group_path('table', name).relative_to(PROJECT_ROOT)}); "
            f"tables: {', '.join(options('table'))}"
        )
    return data["table"]


def load_paper(table: dict) -> dict | None:
    path = PAPER_DIR / table["paper"] if table.get("paper") else None
    return yaml.safe_load(path.read_text()) if path and path.exists() else None


def norm(s: str) -> str:
    return re.sub(r"[^a-z0-9]", "", str(s).lower())


def parse_params(s) -> float | None:
    """'0.3M' -> 3e5, '1500.0M' -> 1.5e9, '4.7M' -> 4.7e6."""
    m = re.fullmatch(r"\s*([\d.]+)\s*([KMB]?)\s*", str(s or ""))
    if not m:
        return None
    return float(m.group(1)) * {"": 1, "K": 1e3, "M": 1e6, "B": 1e9}[m.group(2)]


def parse_label(label: str) -> dict:
    """'AdptP† (3M)' -> {method: AdptP, marker: †, params: 3e6}; 'FT*' -> {method: FT, marker: *}."""
    m = re.fullmatch(r"\s*([A-Za-z][\w-]*?)\s*([*†‡]*)\s*(?:\(([^)]*)\))?\s*", label or "")
    if not m:
        return {"method": label, "marker": "", "params": None}
    return {"method": m.group(1), "marker": m.group(2) or "", "params": parse_params(m.group(3))}


def paper_row(paper: dict | None, row: dict) -> dict | None:
    """The paper's row beside a table-config row. An explicit `paper_row:` wins ({model, method, marker, params},
    any subset; `paper_row: null` = none); otherwise the row's own model and its label ("AdptP† (3M)" -> AdptP,
    marker †, 3M params), matched on model + method label + marker + params."""
    if not paper:
        return None
    if "paper_row" in row:
        spec = row["paper_row"]
        if not spec:
            return None
        want = {
            "model": spec.get("model", row["model"]),
            "method": spec.get("method") or parse_label(row.get("label", ""))["method"],
            "marker": spec.get("marker"),
            "params": parse_params(spec["params"]) if spec.get("params") else None,
        }
    else:
        want = {"model": row["model"], **parse_label(row.get("label", ""))}
    for p in paper.get("rows", []):
        if p["model"] != want["model"] or norm(p["method"]) != norm(want["method"]):
            continue
        if want["marker"] is not None and (p.get("marker") or "") != want["marker"]:
            continue
        if want["params"] is not None and not math.isclose(
            parse_params(p.get("params")) or -1, want["params"], rel_tol=0.05
        ):
            continue
        return p
    return None


@dataclass(frozen=True)
class Column:
    """One printed column: a task scored by `metric` (None: the task's main metric) times `scale`; `paper` locates
    the paper's number in its row (an index into `values`, or "METRIC.SPLIT" in a table with per-metric columns)."""

    name: str
    task: str
    metric: str | None = None
    scale: float = 100.0
    paper: int | str | None = None
    first_of_task: bool = True

    @property
    def digits(self) -> int:
        """Decimals as the paper prints them: 1 for scores x100, 2 for metrics on their own scale (NIST 8.62)."""
        return 1 if self.scale == 100 else 2

    @property
    def key(self) -> str:
        """The row's cell key: the task (task columns) or the column's name (metric columns)."""
        return self.name if self.metric else self.task


def table_columns(table: dict, paper: dict | None) -> list[Column]:
    """The task columns (GLUE: one per task, its main metric x 100), or `render.columns` (one task's metrics)."""
    tasks = list(table["tasks"])
    spec = (table.get("render") or {}).get("columns")
    if spec:
        return [
            Column(c["name"], tasks[0], c["metric"], float(c.get("scale", 100)), c.get("paper"), i == 0)
            for i, c in enumerate(spec)
        ]
    names = list((paper or {}).get("columns") or [])
    out = []
    for task in tasks:
        j = next((j for j, c in enumerate(names) if norm(c) == norm(task)), None)
        out.append(Column(names[j] if j is not None else task, task, None, 100.0, j))
    return out


def headline_column(columns: list[Column]) -> int:
    """Index of the metric column that carries the task's main metric (else the first)."""
    main = main_metric(columns[0].task)
    return next((i for i, c in enumerate(columns) if c.metric == main), 0)


def paper_value(prow: dict | None, paper: dict | None, col: Column) -> float | None:
    """The paper's number for a column: row["values"][i], or row[METRIC][columns[METRIC].index(SPLIT)] (Table 14)."""
    if prow is None or col.paper is None:
        return None
    if isinstance(col.paper, int):
        values = prow.get("values") or []
        return values[col.paper] if col.paper < len(values) else None
    cols = (paper or {}).get("columns")
    if isinstance(cols, dict):
        metric, _, split = col.paper.partition(".")
        return prow[metric][cols[metric].index(split)] if metric in prow and split in cols.get(metric, []) else None
    return prow["values"][cols.index(col.paper)] if cols and col.paper in cols else None


def check_columns(columns: list[Column], paper: dict | None, table_name: str) -> None:
    """A `render.columns` entry whose paper column the paper file does not have is a config error, said once."""
    if not paper:
        return
    cols = paper.get("columns")
    allowed = [f"{m}.{s}" for m, splits in cols.items() for s in splits] if isinstance(cols, dict) else list(cols or [])
    bad = [c.paper for c in columns if isinstance(c.paper, str) and c.paper not in allowed]
    if bad:
        raise ReproError(
            f"table {table_name}: render.columns paper={bad[0]!r} is not a column of {paper['source']['paper']}; "
            f"allowed: {', '.join(allowed)}"
        )


# ---------------------------------------------------------------- rows: the table's layout, our cells beside the paper's


@dataclass
class Row:
    model: str  # the model that ran (a stand-in, or the paper's model)
    paper_model: str
    method: str
    variant: str
    label: str
    cited: bool
    paper: dict | None
    cells: OrderedDict[str, Cell]
    tuning: dict = field(
        default_factory=dict
    )  # a tune group's row: task -> (chosen variant or None, why, {variant: score})
    tuning_labels: dict = field(default_factory=dict)  # its candidates' labels by variant
    columns: list = field(default_factory=list)  # the Column behind each cell, in order
    records: list = field(default_factory=list)  # the records behind its cells, once each (the convergence check)

    @property
    def stand_in(self) -> bool:
        return self.model != self.paper_model

    @property
    def trainable(self) -> list[int]:
        """The row's parameter counts (repro.results.shown_params), one per scored record of each task."""
        return [p for col, cell in zip(self.columns, self.cells.values()) if col.first_of_task for p in cell.params]

    def average(self, stat: str):
        """Mean over the task columns of a statistic; (value, tasks present)."""
        vals = [getattr(c, stat) for c in self.cells.values() if getattr(c, stat) is not None]
        return (statistics.fmean(vals) if vals else None), len(vals)

    def headline(self, stat: str):
        """The row's one number: the average over task columns, or with metric columns (one task) the statistic of
        the column of the task's main metric (E2E: BLEU; WebNLG: BLEU on all inputs); (value, tasks present)."""
        if self.columns and self.columns[0].metric:
            v = getattr(list(self.cells.values())[headline_column(self.columns)], stat)
            return v, int(v is not None)
        return self.average(stat)


def criterion_text(table: dict) -> str:
    """The tuned table's selection criterion in words (repro/tune.py `criterion`)."""
    metric, lower = tune.criterion(table)
    if metric is None:
        return "the best dev score"
    return f"the {'lowest' if lower else 'highest'} {metric}"


def tuning_lines(rows: list[Row], tasks: list[str], table: dict) -> list[list[str]]:
    """A tune group's candidates on the selection seed, per task, the chosen one marked."""
    metric, _ = tune.criterion(table)
    what = "dev score ×100" if metric is None else metric
    out = [["Row", "Task", f"candidates on the selection seed ({what})", "chosen"]]
    for row in rows:
        for task in tasks if row.tuning else []:
            chosen, why, scores = row.tuning[task]
            cands = ", ".join(
                f"{row.tuning_labels.get(v, v)}: "
                + ("failed" if s is None else MISSING if s == tune.NOT_RUN else f"{s:.{1 if metric is None else 3}f}")
                + (" ✓" if v == chosen else "")
                for v, s in scores.items()
            )
            out.append([row.label, task, cands, row.tuning_labels.get(chosen, chosen) if chosen else why])
    return out


def build(table_name: str, results_dir: str | Path, table: dict | None = None) -> tuple[list[Row], list[Record], dict]:
    """(rows, the records that fit no row, table config). Each row x column is a repro.results.Cell of the row's
    records, in seed order; a tune group's row takes, per task, the chosen candidate's (repro.results.Tuning)."""
    table = table or load_table_config(table_name)
    paper = load_paper(table)
    tasks = list(table["tasks"])
    columns = table_columns(table, paper)
    check_columns(columns, paper, table_name)
    stand_ins = table.get("stand_ins") or {}
    records, _unreadable = load_records(results_dir, table_name)  # the unreadable ones: not listed yet
    cells_of = by_cell(records)
    present_models = {k[0] for k in cells_of}
    tuning = Tuning.of(table, records)
    labels = {(s["model"], s["method"], s.get("variant", "default")): s.get("label") for s in table["rows"]}
    rows, used, groups_done = [], set(), set()
    for spec in table["rows"]:
        variant = spec.get("variant", "default")
        if spec.get("tune"):  # the group's candidates print as one row: per task, the chosen candidate's seeds
            group = (spec["model"], spec["method"], spec["tune"])
            used.update(
                r.path
                for v in tune.groups(table)[group]
                for t in tasks
                for r in cells_of.get((spec["model"], spec["method"], v, t), [])
            )
            if group in groups_done:
                continue
            groups_done.add(group)
        prow = paper_row(paper, spec)
        runners = [spec["model"]] + [s for s, big in stand_ins.items() if big == spec["model"] and s in present_models]
        for model in runners:
            has_any = any((model, spec["method"], variant, t) in cells_of for t in tasks)
            if model != spec["model"] and not has_any:
                continue
            cells: OrderedDict = OrderedDict()
            cited = bool(spec.get("cited")) or (prow or {}).get("marker") == "*"  # * = "published in prior works"
            row = Row(
                model, spec["model"], spec["method"], variant, spec.get("label", spec["method"]), cited, prow, cells
            )
            if spec.get("tune"):
                row.label, row.variant = spec["tune"], "default"
                row.tuning = {t: tuning.choices[(*group, t)] for t in tasks}
                row.tuning_labels = {v: labels[(*group[:2], v)] or v for v in tune.groups(table)[group]}
            for col in columns:
                cell = Cell(paper=paper_value(prow, paper, col))
                chosen = row.tuning[col.task][0] if spec.get("tune") else variant
                for r in sorted(cells_of.get((model, spec["method"], chosen, col.task), []), key=lambda r: r.seed or 0):
                    used.add(r.path)
                    cell.add(r, col.metric, col.scale)
                    if col.first_of_task:
                        row.records.append(r)
                cells[col.key] = cell
            row.columns = columns
            rows.append(row)
    unmatched = [r for rs in cells_of.values() for r in rs if r.path not in used]
    return rows, unmatched, table


# ---------------------------------------------------------------- rendering


def fmt(x, nd=1) -> str:
    return MISSING if x is None else f"{x:.{nd}f}"


def fmt_signed(x, nd=1) -> str:
    return MISSING if x is None else f"{x:+.{nd}f}"


def fmt_params(n) -> str:
    if n is None:
        return MISSING
    for unit, div in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= div:
            return f"{n / div:.1f}{unit}"
    return str(int(n))


def mean_cell(c: Cell, nd: int = 1, show_untrained: bool = True) -> str:
    """mean ± std (n), then what else the cell holds: failed seeds, seeds that did not train (their scores are in
    the statistics: the table shows what ran; repro.results.did_not_train; `show_untrained` False leaves that out, for a
    task's metric columns after its first), records whose code cannot be traced."""
    mark = f" {UNTRACED}" if c.untraced else ""
    if c.n == 0:
        return (f"failed ×{sum(c.failed.values())}" + mark) if c.failed else MISSING
    s = f"{c.mean:.{nd}f} ± {c.std:.{nd}f} (n={c.n})" if c.std is not None else f"{c.mean:.{nd}f} (n=1)"
    return (
        s
        + (f" +{sum(c.failed.values())} failed" if c.failed else "")
        + (f", {DID_NOT_TRAIN} ×{len(c.untrained)}" if c.untrained and show_untrained else "")
        + mark
    )


def row_title(row: Row) -> tuple[str, str]:
    model = f"{row.model} (for {row.paper_model})" if row.stand_in else row.model
    if row.paper and row.paper.get("model") not in (row.model, row.paper_model):
        model += f" (paper: {row.paper['model']})"
    label = row.label
    if row.variant != "default":
        label += f" [{row.variant}]"
    return model, label


def paper_average(row: Row, n_tasks: int) -> float | None:
    """The paper's printed Avg when the table has all its task columns; else the mean of its numbers on ours."""
    if not row.paper:
        return None
    values = row.paper["values"]
    if len(values) == n_tasks + 1:
        return values[-1]
    papers = [c.paper for c in row.cells.values()]
    return statistics.fmean(papers) if papers and None not in papers else None


def table_lines(rows: list[Row], tasks: list[str], columns: list[Column]) -> list[list[str]]:
    """The paper's layout, four lines per row: mean ± std (n), median (the paper's statistic), paper, Δ; an Avg
    column over the task columns (none when the columns are one task's metrics). Digits as the paper prints them
    (Column.digits)."""
    by_metric = any(c.metric for c in columns)
    nds = [c.digits for c in columns]
    header = ["Model", "Method", "# Params (paper / ours)", "Statistic", *[c.name for c in columns]] + (
        [] if by_metric else ["Avg"]
    )
    out = [header]
    n_tasks = len(tasks)
    for row in rows:
        model, label = row_title(row)
        ours = fmt_params(statistics.median(row.trainable)) if row.trainable else MISSING
        params = f"{(row.paper or {}).get('params', MISSING)} / {ours}"
        cells = list(row.cells.values())
        lines = [
            [
                model,
                label,
                params,
                "mean ± std (n)",
                *[mean_cell(c, nd, col.first_of_task) for c, nd, col in zip(cells, nds, columns)],
            ],
            ["", "", "", "median (paper's statistic)", *[fmt(c.median, nd) for c, nd in zip(cells, nds)]],
            [
                "",
                "",
                "",
                "paper" + (" (cited in the paper)" if row.cited else ""),
                *[fmt(c.paper, nd) for c, nd in zip(cells, nds)],
            ],
            ["", "", "", "Δ median − paper", *[fmt_signed(c.diff, nd) for c, nd in zip(cells, nds)]],
        ]
        if not by_metric:
            avg_mean, k = row.average("mean")
            avg_med, _ = row.average("median")
            partial = "" if k == n_tasks else f" ({k}/{n_tasks} tasks)"
            paper_avg = paper_average(row, n_tasks)
            lines[0].append((fmt(avg_mean) + partial) if avg_mean is not None else MISSING)
            lines[1].append((fmt(avg_med) + partial) if avg_med is not None else MISSING)
            lines[2].append(fmt(paper_avg))
            lines[3].append(
                fmt_signed(avg_med - paper_avg)
                if avg_med is not None and paper_avg is not None and k == n_tasks
                else MISSING
            )
        out += lines
    return out


def cost_lines(rows: list[Row], n_tasks: int, headline: str = "Avg") -> list[list[str]]:
    """Score beside cost, one line per row: the row's headline score (Row.headline: the average over tasks, or the
    main metric of a one-task table), its difference from the first row's, and the medians over every ok cell of
    the row of peak memory, seconds per step and minutes per cell."""

    def median_of(row, key):
        vals = [
            c[key]
            for col, cell in zip(row.columns, row.cells.values())
            if col.first_of_task
            for c in cell.costs
            if c.get(key) is not None
        ]
        return statistics.median(vals) if vals else None

    out = [
        [
            "Method",
            "# trainable (adapter)",
            f"{headline} (mean)",
            f"Δ {headline} vs " + rows[0].label,
            "peak RSS (MB)",
            "s / step",
            "min / cell",
            "cells",
        ]
    ]
    ref, k_ref = rows[0].headline("mean")
    for row in rows:
        avg, k = row.headline("mean")
        partial = "" if k == n_tasks else f" ({k}/{n_tasks} tasks)"
        delta = fmt_signed(avg - ref) if avg is not None and ref is not None and k == k_ref == n_tasks else MISSING
        wall = median_of(row, "wall_s")
        out.append(
            [
                row_title(row)[1],
                fmt_params(statistics.median(row.trainable)) if row.trainable else MISSING,
                (fmt(avg) + partial) if avg is not None else MISSING,
                delta,
                fmt(median_of(row, "peak_rss_mb"), 0),
                fmt(median_of(row, "s_per_step"), 3),
                fmt(wall / 60 if wall is not None else None, 1),
                str(sum(c.n for col, c in zip(row.columns, row.cells.values()) if col.first_of_task)),
            ]
        )
    return out


def precision_check(rows: list[Row], check: dict) -> list[str]:
    """The table's precision check (render.precision_check): per column, the check row's score on seed s0 against
    the row's own on s0 (the precision's effect) and the row's s0 against its s1 (seed noise). Each side's precision
    is what its records ran in (`config.train.precision`). The row's precision stands when the effect is no larger
    than the noise on every `must_hold` column and on at least `at_least` columns. Returns markdown lines ending in
    the verdict."""
    s0, s1 = check.get("seeds", [0, 1])
    base = next((r for r in rows if (r.method, r.variant) == (check["method"], "default")), None)
    other = next((r for r in rows if (r.method, r.variant) == (check["method"], check["variant"])), None)
    if base is None or other is None:
        return [f"Undecided: table has no {check['method']} row and {check['method']} {check['variant']} row."]

    def at(row, key, seed, field="scores"):
        cell = row.cells[key]
        return getattr(cell, field)[cell.seeds.index(seed)] if seed in cell.seeds else None

    def ran_in(row, seeds):  # the precisions the row's records on these seeds ran in, over every column
        return sorted({p for key in row.cells for s in seeds if (p := at(row, key, s, "precisions")) is not None})

    mine, theirs = ran_in(base, (s0, s1)), ran_in(other, (s0,))
    if len(mine) > 1 or len(theirs) > 1 or (mine and mine == theirs):
        return [
            f"Undecided: the {base.label} row's seeds {s0} and {s1} ran in {', '.join(mine) or '?'} and "
            f"{other.label}'s seed {s0} in {', '.join(theirs) or '?'}; the check compares one precision on both "
            "seeds against another."
        ]
    precisions = (mine[0] if mine else "?", theirs[0] if theirs else "?")

    lines = [
        [
            "Column",
            f"{base.label} seed {s0}",
            f"{base.label} seed {s1}",
            f"{other.label} seed {s0}",
            rf"effect: \|{other.label} − {base.label}\| (seed {s0})",
            rf"noise: \|seed {s0} − seed {s1}\|",
            "effect ≤ noise",
        ]
    ]
    holds, missing = {}, []
    for col in base.columns:
        a0, a1, b0 = at(base, col.key, s0), at(base, col.key, s1), at(other, col.key, s0)
        if None in (a0, a1, b0):
            missing.append(col.name)
            lines.append(
                [col.name, fmt(a0, col.digits), fmt(a1, col.digits), fmt(b0, col.digits), MISSING, MISSING, MISSING]
            )
            continue
        effect, noise = abs(b0 - a0), abs(a0 - a1)
        holds[col.name] = effect <= noise
        lines.append(
            [
                col.name,
                fmt(a0, col.digits),
                fmt(a1, col.digits),
                fmt(b0, col.digits),
                fmt(effect, col.digits),
                fmt(noise, col.digits),
                "yes" if holds[col.name] else "no",
            ]
        )
    must, at_least = check.get("must_hold", []), check["at_least"]
    rule = (
        f"{precisions[0]} stands if the effect is no larger than the noise"
        + (f" on {', '.join(must)} and" if must else "")
        + f" on at least {at_least} of {len(base.columns)} columns"
    )
    n = sum(holds.values())
    if missing:
        verdict = f"**Undecided**: no score yet for {', '.join(missing)} (each column needs all three records)."
    elif all(holds[m] for m in must) and n >= at_least:
        verdict = f"**{precisions[0]} stands**: the effect is within the noise on {n} of {len(holds)} columns" + (
            f", {', '.join(must)} among them." if must else "."
        )
    else:
        failed = [m for m in must if not holds[m]]
        verdict = (
            f"**{precisions[0]} does not stand**: the effect is within the noise on {n} of {len(holds)} columns"
            + (f", not on {', '.join(failed)}" if failed else "")
            + f"; every row re-runs in {precisions[1]}."
        )
    return [
        f"The {base.label} row ran in {precisions[0]}; {other.label} re-ran its seed {s0} in {precisions[1]}. {rule}.",
        "",
        markdown(lines),
        "",
        verdict,
    ]


def convergence_lines(rows: list[Row], spec: dict) -> list[str]:
    """The table's convergence check (render.convergence, the rule: repro.results.convergence): per ok record of each
    row, its dev-loss curve, the last part's start and best, the relative improvement and the verdict; then per row,
    whether every seed had stopped improving. Markdown lines."""
    last, below = float(spec.get("last", 0.2)), float(spec.get("below", 0.01))
    lines = [["Row", "Task", "Seed", "dev loss (step: loss)", "last part: start → best", "improvement", "verdict"]]
    summary = []
    for row in rows:
        checks = [(r, convergence(r, last, below)) for r in row.records if r.ok]
        for r, c in checks:
            lines.append(
                [
                    row_title(row)[1],
                    r.task or MISSING,
                    str(r.seed),
                    ", ".join(f"{step}: {loss:.3f}" for step, loss in c.curve) or MISSING,
                    f"{c.start[1]:.3f} @{c.start[0]} → {c.best_after[1]:.3f} @{c.best_after[0]}"
                    if c.start
                    else MISSING,
                    f"{100 * c.improvement:.2f}%" if c.improvement is not None else MISSING,
                    c.verdict,
                ]
            )
        if checks:
            done = sum(c.converged for _, c in checks)
            verdict = "converged" if done == len(checks) else "**not converged**"
            summary.append(f"- {row_title(row)[1]}: {verdict} ({done} of {len(checks)} records)")
    return [
        f"A cell has stopped improving when its dev loss fell by less than {100 * below:g}% (relative) over the last "
        f"{100 * last:g}% of its training steps: from the last evaluation at or before that point to the lowest dev "
        "loss after it (repro.results.convergence; under a decaying learning rate this says the run ended on a "
        "plateau, not that a longer schedule could not go lower).",
        "",
        markdown(lines),
        "",
        *summary,
    ]


def markdown(lines: list[list[str]]) -> str:
    head, *body = lines
    out = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    out += ["| " + " | ".join(x.replace("|", "\\|") for x in line) + " |" for line in body]
    return "\n".join(out)


def latex_escape(s: str) -> str:
    return (
        s.replace("\\", "\\textbackslash{}")
        .replace("&", "\\&")
        .replace("%", "\\%")
        .replace("_", "\\_")
        .replace("#", "\\#")
        .replace("±", "$\\pm$")
        .replace("Δ", "$\\Delta$")
        .replace("−", "$-$")
        .replace("†", "$^\\dagger$")
        .replace("×", "$\\times$")
        .replace(UNTRACED, "\\S{}")
    )


def latex(lines: list[list[str]], caption: str) -> str:
    head, *body = lines
    cols = "ll" + "l" + "l" + "r" * (len(head) - 4)
    out = [
        "\\begin{table}[t]",
        "\\centering",
        "\\tiny",
        f"\\begin{{tabular}}{{{cols}}}",
        "\\toprule",
        " & ".join(latex_escape(h) for h in head) + " \\\\",
        "\\midrule",
    ]
    for i, line in enumerate(body):
        if i and i % 4 == 0:
            out.append("\\midrule")
        out.append(" & ".join(latex_escape(x) for x in line) + " \\\\")
    out += ["\\bottomrule", "\\end{tabular}", f"\\caption{{{latex_escape(caption)}}}", "\\end{table}"]
    return "\n".join(out)


def long_rows(rows: list[Row]) -> list[dict]:
    """One line per row x task: every statistic, for the CSV."""
    out = []
    for row in rows:
        for col, c in zip(row.columns, row.cells.values()):
            out.append(
                {
                    "model": row.model,
                    "paper_model": row.paper_model,
                    "method": row.method,
                    "variant": row.variant,
                    "label": row.label,
                    "cited": row.cited,
                    "stand_in": row.stand_in,
                    "task": col.task,
                    "column": col.name,
                    "metric": col.metric or main_metric(col.task),
                    "scale": col.scale,
                    "n": c.n,
                    "seeds": " ".join(map(str, c.seeds)),
                    "scores": " ".join(f"{s:.2f}" for s in c.scores),
                    "mean": c.mean,
                    "std": c.std,
                    "median": c.median,
                    "paper": c.paper,
                    "diff_median_paper": c.diff,
                    "failed": sum(c.failed.values()),
                    "failed_reasons": "; ".join(f"{r} ×{n}" for r, n in c.failed.items()),
                    "did_not_train_seeds": " ".join(str(seed) for seed, _, _ in c.untrained),
                    "untraced": len(c.untraced),
                }
            )
    return out


def render(
    table_name: str, results_dir: str | Path, out_dir: str | Path | None = None, table: dict | None = None
) -> str:
    """Lay out, write <out_dir>/<table>.{md,csv,tex} (default <results_dir>/tables) and return the markdown."""
    rows, unmatched, table = build(table_name, results_dir, table)
    paper = load_paper(table) or {}
    tasks = list(table["tasks"])
    cols = table_columns(table, paper)
    by_metric = any(c.metric for c in cols)
    lines = table_lines(rows, tasks, cols)
    if by_metric:
        scores = (
            f"Scores: {tasks[0]}'s metrics as the paper prints them ("
            + ", ".join(f"{c.name} = {c.metric}" + (f" ×{c.scale:g}" if c.scale != 1 else "") for c in cols)
            + ")"
        )
    else:
        scores = "Scores ×100 (" + ", ".join(f"{c.name}: {main_metric(c.task)}" for c in cols) + ")"
    title = f"Table {table_name}" + (f" — {paper['source']['paper']}" if paper.get("source") else "")
    n_records = sum(
        c.n + sum(c.failed.values()) for r in rows for col, c in zip(r.columns, r.cells.values()) if col.first_of_task
    ) + len(unmatched)
    every, unreadable = load_records(results_dir, table_name)
    walls = [r.wall_s for r in every]
    n_all = len(walls)
    counted = (
        f" ({n_records} in the rows; the other {n_all - n_records}: tuning candidates not chosen, under Tuning)"
        if n_all > n_records
        else ""
    )
    timed = [w for w in walls if w is not None]
    if timed:  # what the table cost to run: every record, chosen or not, ok or failed
        counted += (
            f"; cell time in all {sum(timed) / 3600:.1f} h (the sum of `wall_s` over {len(timed)} records, "
            "each cell on its own threads)"
        )
    md = [
        f"# {title}",
        "",
        f"Records: {max(n_all, n_records)} under {Path(results_dir) / table_name}{counted}. {scores}, each at the epoch the "
        "run selected (`train.select`; `best` = the paper's best dev epoch). mean ± std over seeds (n = seeds behind "
        "the cell) is the suite's statistic; the median over seeds is the paper's. \"paper\" is the paper's number, "
        'Δ = median − paper. "(cited)": the paper copied that row from prior work (marked * there). Stand-in rows '
        "(\"X (for Y)\") ran a small model with the row's method settings; the paper's numbers are those of Y. "
        f'"{MISSING}": no record; "failed ×k": k failed seeds (reasons below).'
        + (
            ""
            if by_metric
            else f' Avg: mean over the task columns ("(k/{len(tasks)} tasks)" when some are missing; Δ only when complete)'
            + (
                ""
                if len(tasks) + 1 == len(paper.get("columns", []))
                else f"; the paper's Avg here is the mean of its numbers on these {len(tasks)} tasks, not its printed Avg"
            )
            + "."
        ),
        "",
        markdown(lines),
    ]
    if (table.get("render") or {}).get("cost") and rows:
        md += [
            "",
            "## Cost",
            "",
            "Medians over the row's ok cells, as the runner recorded them on this machine: peak RSS = the cell's "
            "peak resident memory (model load, training and evaluation; `peak_rss_mb`) over the cells that ran first "
            "in a fresh process (`process_cell_index` 0: later cells of an in-process sweep start on memory earlier "
            "cells left allocated; `hydra/launcher=submitit_local` runs every cell in its own process), s / step = (the Trainer's "
            "`train_runtime_s` − the dev evaluations' runtime) / steps, min / cell = `wall_s` (set-up and scoring "
            "included). Avg as above; Δ Avg only when both rows have every task.",
            "",
            markdown(cost_lines(rows, len(tasks), cols[headline_column(cols)].name if by_metric else "Avg")),
        ]
    if check := (table.get("render") or {}).get("precision_check"):
        md += ["", "## Precision check", ""] + precision_check(rows, check)
    if spec := (table.get("render") or {}).get("convergence"):
        md += ["", "## Convergence", ""] + convergence_lines(rows, spec)
    if any(row.tuning for row in rows):
        md += [
            "",
            "## Tuning",
            "",
            f"Rows tuned per task (repro/tune.py): every candidate ran the selection seed {(table.get('tune') or {}).get('seed', 0)}; "
            f"the one with {criterion_text(table)} (✓) ran the other seeds, and the row above reports its seeds.",
            "",
            markdown(tuning_lines(rows, tasks, table)),
        ]
    failures = [
        (row, col.task, reason, n)
        for row in rows
        for col, c in zip(row.columns, row.cells.values())
        if col.first_of_task
        for reason, n in c.failed.items()
    ]
    if failures:
        md += ["", "Failed cells:", ""]
        md += [
            f"- {row_title(row)[0]} {row_title(row)[1]} / {task}: {reason} ×{n}" for row, task, reason, n in failures
        ]
    untrained = [
        (row, col.task, seed, why)
        for row in rows
        for col, c in zip(row.columns, row.cells.values())
        if col.first_of_task
        for seed, _, why in c.untrained
    ]
    if untrained:
        md += [
            "",
            f'Seeds that did not train ("{DID_NOT_TRAIN} ×k"; repro.results.did_not_train: the training loss fell '
            "less than 5%, most outputs are empty, or the score is at or below a constant prediction's). Their scores "
            "are in the row's statistics; the claims count such a baseline neither for nor against LoRA:",
            "",
        ]
        md += [
            f"- {row_title(row)[0]} {row_title(row)[1]} / {task} seed {seed}: {why}"
            for row, task, seed, why in untrained
        ]
    untraced = [(p, why) for row in rows for c in row.cells.values() for p, why in c.untraced]
    if untraced:
        md += [
            "",
            f"{UNTRACED} Records whose code cannot be traced ({len(untraced)}): written from a tree with uncommitted "
            "changes that the record does not carry (no seed<k>.diff), or with no git commit. Re-run them from a "
            "clean tree (force=true) when the table is re-run:",
            "",
        ]
        md += [f"- {p}: {why}" for p, why in untraced]
    if unmatched:
        md += ["", f"Records that are no row of table {table_name} ({len(unmatched)}):", ""]
        md += [
            f"- {r.path}: status {r.status}, model {r.model}, method {r.method}, variant {r.variant}" for r in unmatched
        ]
    if unreadable:  # never left out silently: named under the table (repro.tables --strict refuses them)
        md += ["", f"Records that could not be read ({len(unreadable)}), in no row above:", ""]
        md += [f"- {p}: {why}" for p, why in unreadable]
    text = "\n".join(md) + "\n"
    out_dir = Path(out_dir) if out_dir else Path(results_dir) / "tables"
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{table_name}.md").write_text(text)
    with open(out_dir / f"{table_name}.csv", "w", newline="") as f:
        long = long_rows(rows)
        writer = csv.DictWriter(f, fieldnames=list(long[0]) if long else ["model"])
        writer.writeheader()
        writer.writerows(long)
    (out_dir / f"{table_name}.tex").write_text(latex(lines, title) + "\n")
    return text


# ---------------------------------------------------------------- compact: one number per cell

STATS = {  # --stat: a Cell's statistic -> what it is
    "median": "the median over seeds (the paper's statistic)",
    "mean": "the mean over seeds",
    "std": "the standard deviation over seeds",
    "n": "the number of seeds scored",
    "paper": "the paper's number",
    "diff": "the median over seeds minus the paper's number",
}
NOT_AVERAGED = ("std", "n")  # statistics whose mean over tasks means nothing


def stat_cell(c: Cell, stat: str, nd: int) -> str:
    """One cell as one number: `failed ×N` where every seed failed (except the paper's number, which is not ours),
    `-` where there is none, § where a record's code cannot be traced."""
    mark = f" {UNTRACED}" if c.untraced and stat != "paper" else ""
    if stat == "n":
        return str(c.n) + mark
    value = getattr(c, stat)
    if value is None and stat != "paper" and c.n == 0 and c.failed:
        return f"failed ×{sum(c.failed.values())}" + mark
    return fmt(value, nd) + mark


def stat_average(row: Row, stat: str, n_tasks: int) -> float | None:
    """The row's Avg of a statistic over its task columns, only when every task has it (else None)."""
    if stat == "paper":
        return paper_average(row, n_tasks)
    if stat == "diff":
        med, k = row.average("median")
        paper = paper_average(row, n_tasks)
        return med - paper if med is not None and paper is not None and k == n_tasks else None
    value, k = row.average(stat)
    return value if k == n_tasks else None


def compact(table_name: str, results_dir: str | Path, stat: str, table: dict | None = None) -> str:
    """The table as one number per cell (`--stat`: a key of STATS), one line per row, an Avg over the task columns
    where every task has the statistic. Markdown only: nothing is written."""
    if stat not in STATS:
        raise SystemExit(f"--stat {stat}: allowed: {', '.join(STATS)}")
    rows, unmatched, table = build(table_name, results_dir, table)
    cols = table_columns(table, load_paper(table))
    averaged = stat not in NOT_AVERAGED and not any(c.metric for c in cols)
    lines = [["Model", "Method", *[c.name for c in cols]] + (["Avg"] if averaged else [])]
    for row in rows:
        cells = [stat_cell(c, stat, col.digits) for c, col in zip(row.cells.values(), cols)]
        if averaged:
            cells.append(fmt(stat_average(row, stat, len(table["tasks"]))))
        lines.append([*row_title(row), *cells])
    note = (
        f"Each cell: {STATS[stat]}"
        + ("" if stat == "n" or any(c.metric for c in cols) else ", score ×100")
        + (f"; Avg: over the {len(table['tasks'])} task columns, only where every task has one" if averaged else "")
        + f'. "{MISSING}": none; "failed ×k": every seed failed. The full table, with the reasons: '
        f"`python -m repro.tables {table_name}`."
    )
    extra = f"\n\n{len(unmatched)} records are no row of this table (listed by the full table)." if unmatched else ""
    return f"# Table {table_name}: {stat}\n\n{note}\n\n{markdown(lines)}{extra}\n"


@command
def main(argv: list[str] | None = None) -> int:
    p = parser("tables", __doc__)
    p.add_argument("table", help=f"a table config under conf/table/ ({', '.join(options('table'))})")
    add_results_dir(p)
    add_out_dir(p, "<results-dir>/tables")
    add_strict(p)
    p.add_argument("--stat", choices=list(STATS), help="one number per cell (prints only, writes nothing)")
    args = p.parse_args(argv)
    load_table_config(args.table)  # an unknown table: refused before anything is read
    results = str(input_dir(results_dir(args), "--results-dir"))
    if args.stat:
        report_unreadable(load_records(results, args.table)[1], args.strict)
        sys.stdout.write(compact(args.table, results, args.stat))
        return 0
    out_dir = output_dir(args.out_dir or Path(results) / "tables", "--out-dir")
    report_unreadable(load_records(results, args.table)[1], args.strict)
    sys.stdout.write(render(args.table, results, out_dir))
    return 0


if __name__ == "__main__":
    sys.exit(main())
