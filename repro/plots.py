"""Records -> PNG figures under results/plots/: `python -m repro.plots glue_cpu`.

Every table:

- `<table>_curves.png`: training loss, dev loss and the dev score (the task's main metric ×100, where the records
  log it) against the optimizer step; a row of panels per task, a line per row of the table (the median over its
  seeds at each logged step, the band spanning the seeds' min..max).

Tables in the paper's Table 2/3 layout (repro.tables):

- `<table>_score_vs_params.png`: per column (and the average), the score against the trainable parameters on a log
  axis, as in the paper's figures: ours filled (median over seeds, bar = min..max), the paper's hollow at the
  paper's parameter counts.
- `<table>_lora_minus_ft.png` (tables with a LoRA and an FT row on one model): LoRA − FT per column, one panel per
  unit (scores ×100; metrics as measured): the bar is LoRA's median over seeds minus FT's (the tables' statistic),
  the dots are each seed's LoRA − FT (seeds paired), the hollow diamond the paper's LoRA − FT.

The Section 7 ablation tables (a table config that names `paper_ref`: repro.analysis.ablation reads them, not
repro.tables), from repro.analysis.ablation.build:

- `<table>_score_vs_r.png` (Table 6: a weight set at several ranks): the score against r, a line per weight set.
- `<table>_bars.png` (Table 5: one rank per weight set): a bar per weight set.

Both put the paper's GPT-3 panels (WikiSQL, MultiNLI) above ours (a panel per task: the mean over seeds, each seed a
dot). Each series keeps one colour and one marker in every panel of a figure, distinct from every other series'
(`series_styles`); legends sit outside the panels (constrained layout), so nothing overlaps.
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import NullFormatter  # noqa: E402

from repro.analysis import ablation  # noqa: E402
from repro.cli import (  # noqa: E402
    add_out_dir,
    add_results_dir,
    add_strict,
    command,
    parser,
    report_unreadable,
    results_dir,
)
from repro.config import options  # noqa: E402
from repro.paths import input_dir, output_dir  # noqa: E402
from repro.results import load_records, main_metric  # noqa: E402
from repro.tables import (  # noqa: E402
    build,
    load_paper,
    load_table_config,
    paper_average,
    parse_label,
    parse_params,
    table_columns,
)

MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">", "h", "p")
# tab20's dark shades (tab10's colours), then its light ones: up to 10 series get tab10, up to 20 twenty colours
TAB20_ORDER = [*range(0, 20, 2), *range(1, 20, 2)]
DPI = 110


# ---------------------------------------------------------------- style and layout


def series_styles(labels) -> dict[str, dict]:
    """{label: {"color", "marker"}}, in the labels' order: every colour differs up to 20 series (tab10 up to 10,
    then tab20's dark shades before its light ones; beyond 20, evenly spaced on a continuous map), and the markers
    cycle over MARKERS, so that no two series share both colour and marker."""
    labels = list(dict.fromkeys(labels))
    n = len(labels)
    if n <= 10:
        colours = [plt.get_cmap("tab10")(i) for i in range(n)]
    elif n <= 20:
        colours = [plt.get_cmap("tab20")(TAB20_ORDER[i]) for i in range(n)]
    else:
        colours = [plt.get_cmap("turbo")(i / (n - 1)) for i in range(n)]
    return {label: {"color": colours[i], "marker": MARKERS[i % len(MARKERS)]} for i, label in enumerate(labels)}


def figure(nrows: int, ncols: int, width: float, height: float):
    """A constrained-layout figure of nrows × ncols panels, each width × height inches: panel titles, axis labels,
    the suptitle and an `outside` legend get their own room."""
    return plt.subplots(
        nrows, ncols, figsize=(width * ncols, height * nrows + 0.9), squeeze=False, layout="constrained"
    )


def legend_below(fig, handles: dict, ncol: int | None = None) -> None:
    """One legend for the figure, below the panels: {label: handle}, each label once."""
    if handles:
        ncol = ncol or min(len(handles), 4)
        fig.legend(list(handles.values()), list(handles), loc="outside lower center", ncol=ncol, fontsize=8)


def collect_handles(fig) -> dict:
    handles: dict = {}
    for ax in fig.axes:
        for h, label in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(label, h)
    return handles


def save(fig, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, bbox_inches="tight")  # a legend wider than the panels widens the image
    plt.close(fig)
    return path


def hide_unused(axes, used: int) -> None:
    flat = [ax for row in axes for ax in row]
    for ax in flat[used:]:
        ax.axis("off")


def is_ablation(table: dict) -> bool:
    """Tables 5 and 6 (Section 7.1/7.2): their config names the paper file repro.analysis.ablation reads."""
    return bool(table.get("paper_ref"))


# ---------------------------------------------------------------- Table 2/3 layout: score against parameters


def score_vs_params(table_name: str, results_dir, out_dir) -> Path:
    rows, _, table = build(table_name, results_dir)
    paper = load_paper(table) or {}
    tasks = list(table["tasks"])
    cols = table_columns(table, paper)  # one panel per task (+ Avg), or per metric of a one-task NLG table
    columns = [c.name for c in cols] + ([] if any(c.metric for c in cols) else ["Avg"])
    ncol = min(3, len(columns))
    nrow = -(-len(columns) // ncol)
    fig, axes = figure(nrow, ncol, 4.2, 3.0)
    styles = series_styles(parse_label(row.label)["method"] for row in rows)
    for i, col in enumerate(columns):
        ax = axes[i // ncol][i % ncol]
        for row in rows:
            method = parse_label(row.label)["method"]
            style = styles[method]
            # ours: median over seeds, bar = min..max, at the median trainable-parameter count of the records
            if row.trainable:
                x = statistics.median(row.trainable)
                if col == "Avg":
                    med, k = row.average("median")
                    lo = hi = med = med if k == len(tasks) else None
                else:
                    cell = row.cells[cols[i].key]
                    med = cell.median
                    lo, hi = (min(cell.scores), max(cell.scores)) if cell.scores else (None, None)
                if med is not None:
                    ax.errorbar(
                        [x],
                        [med],
                        yerr=[[med - lo], [hi - med]],
                        fmt=style["marker"],
                        color=style["color"],
                        capsize=2,
                        label=f"{method} ({row.model})",
                    )
            # the paper's: hollow marker at the paper's count
            if row.paper:
                px = parse_params(row.paper.get("params"))
                py = paper_average(row, len(tasks)) if col == "Avg" else row.cells[cols[i].key].paper
                if px and py is not None:
                    ax.scatter(
                        [px],
                        [py],
                        facecolors="none",
                        edgecolors=[style["color"]],
                        marker=style["marker"],
                        label=f"{method} (paper, {row.paper['model']})",
                    )
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())  # 2×10⁵, 3×10⁵, ... labels run into each other
        ax.set_title(col, fontsize=10)
        ax.set_xlabel("trainable parameters (log)", fontsize=8)
        ax.set_ylabel("score ×100" if col == "Avg" or cols[i].scale == 100 else "score", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    hide_unused(axes, len(columns))
    legend_below(fig, collect_handles(fig), ncol=3)
    fig.suptitle(
        f"{table_name}: score against trainable parameters (filled: ours, median over seeds, bar = min..max; "
        "hollow: the paper's)",
        fontsize=10,
    )
    return save(fig, Path(out_dir) / f"{table_name}_score_vs_params.png")


# ---------------------------------------------------------------- LoRA − FT


def lora_ft_pairs(rows) -> list[tuple]:
    """(LoRA row, FT row) on one model: the default variants (a tune group's row counts as its default)."""
    return [
        (lo, ft)
        for lo in rows
        if (lo.method, lo.variant) == ("lora", "default")
        for ft in rows
        if (ft.method, ft.variant) == ("ft", "default") and ft.model == lo.model
    ]


def paired_differences(lo, ft) -> dict[int, float]:
    """{seed: LoRA − FT} over the seeds both cells scored."""
    a, b = dict(zip(lo.seeds, lo.scores)), dict(zip(ft.seeds, ft.scores))
    return {s: a[s] - b[s] for s in sorted(set(a) & set(b))}


def lora_minus_ft(table_name: str, results_dir, out_dir) -> Path | None:
    """None when the table has no LoRA and FT rows with a score in a common column."""
    rows, _, table = build(table_name, results_dir)
    pairs = [(lo, ft) for lo, ft in lora_ft_pairs(rows) if any(lo.cells[k].n and ft.cells[k].n for k in lo.cells)]
    if not pairs:
        return None
    cols = rows[0].columns
    by_metric = any(c.metric for c in cols)
    # one panel per unit: the columns scored ×100 (and their average), then those on the metric's own scale
    units = {}
    for col in cols:
        units.setdefault("score ×100" if col.scale == 100 else "as measured", []).append(col)
    styles = series_styles(lo.model for lo, _ in pairs)
    widths = [len(v) + (0 if by_metric or unit != "score ×100" else 1) for unit, v in units.items()]
    fig, axes = plt.subplots(
        1,
        len(units),
        figsize=(max(7.5, 0.75 * sum(widths) + 1.5 * len(units)), 4.0),
        squeeze=False,
        layout="constrained",
        width_ratios=widths,
    )
    for ax, (unit, ucols) in zip(axes[0], units.items()):
        names = [c.name for c in ucols] + ([] if by_metric or unit != "score ×100" else ["Avg"])
        width = 0.8 / len(pairs)
        for p, (lo, ft) in enumerate(pairs):
            style = styles[lo.model]
            xs, bars, papers, seed_points = [], [], [], []
            per_seed_avg: dict[int, list[float]] = {}
            for j, col in enumerate(ucols):
                a, b = lo.cells[col.key], ft.cells[col.key]
                x = j + (p - (len(pairs) - 1) / 2) * width
                xs.append(x)
                bars.append(a.median - b.median if a.n and b.n else None)
                papers.append(a.paper - b.paper if a.paper is not None and b.paper is not None else None)
                for seed, d in paired_differences(a, b).items():
                    seed_points.append((x, d))
                    per_seed_avg.setdefault(seed, []).append(d)
            if len(names) > len(ucols):  # Avg: over the task columns, only where every task has both rows
                x = len(ucols) + (p - (len(pairs) - 1) / 2) * width
                xs.append(x)
                complete = all(v is not None for v in bars)
                bars.append(statistics.fmean(bars) if complete else None)
                pa, pb = paper_average(lo, len(ucols)), paper_average(ft, len(ucols))
                papers.append(pa - pb if pa is not None and pb is not None else None)
                seed_points += [(x, statistics.fmean(d)) for d in per_seed_avg.values() if len(d) == len(ucols)]
            shown = [(x, v) for x, v in zip(xs, bars) if v is not None]
            ax.bar(
                [x for x, _ in shown],
                [v for _, v in shown],
                width=width * 0.9,
                color=style["color"],
                alpha=0.55,
                label=f"median over seeds of LoRA − of FT ({lo.model})",
            )
            if seed_points:
                ax.scatter(
                    [x for x, _ in seed_points],
                    [d for _, d in seed_points],
                    s=14,
                    color="black",
                    marker=style["marker"],
                    zorder=3,
                    label="each seed (paired)",
                )
            shown = [(x, v) for x, v in zip(xs, papers) if v is not None]
            if shown:
                ax.scatter(
                    [x for x, _ in shown],
                    [v for _, v in shown],
                    s=48,
                    facecolors="none",
                    edgecolors="tab:red",
                    marker="D",
                    zorder=4,
                    label=f"paper ({lo.paper['model'] if lo.paper else '?'})",
                )
        ax.axhline(0.0, color="grey", lw=0.8)
        ax.set_xticks(range(len(names)), names, fontsize=8, rotation=30 if len(names) > 5 else 0)
        ax.set_ylabel(f"LoRA − FT ({unit})", fontsize=8)
        ax.tick_params(axis="y", labelsize=7)
        ax.grid(alpha=0.3, axis="y")
    legend_below(fig, collect_handles(fig), ncol=3)
    fig.suptitle(f"{table_name}: LoRA − FT per column (above 0: LoRA scores higher on the metric)", fontsize=10)
    return save(fig, Path(out_dir) / f"{table_name}_lora_minus_ft.png")


# ---------------------------------------------------------------- training and dev curves


def dev_value(entry: dict, name: str):
    """An evaluation's `name` (loss, or a metric) on the dev set: keyed `dev_<name>` where the evaluation had named
    sets (the classifier's), `<name>` where it had one (the generator's)."""
    return entry.get(f"dev_{name}", entry.get(name))


def record_curves(record) -> dict[str, list[tuple[int, float]]]:
    """{"training loss", "dev loss", "dev score"}: (step, value) points of one record's history; an evaluation logged
    twice at one step (the re-evaluation of the selected weights) counts once, its first time."""
    history = record.history or {}
    out = {"training loss": [(p["step"], p["loss"]) for p in history.get("train_loss") or []]}
    seen, dev_loss, dev_score = set(), [], []
    metric = main_metric(record.task) if record.task else None
    for e in history.get("eval") or []:
        if e["step"] in seen:
            continue
        seen.add(e["step"])
        if (v := dev_value(e, "loss")) is not None:
            dev_loss.append((e["step"], v))
        if metric and (v := e.get(f"dev_{metric}")) is not None:
            dev_score.append((e["step"], 100 * v))
    out["dev loss"], out["dev score"] = dev_loss, dev_score
    return out


def seed_band(curves: list[list[tuple[int, float]]]) -> tuple[list, list, list, list]:
    """(steps, median, min, max) over the seeds' curves at each logged step."""
    at: dict[int, list[float]] = {}
    for curve in curves:
        for step, v in curve:
            at.setdefault(step, []).append(v)
    steps = sorted(at)
    return steps, [statistics.median(at[s]) for s in steps], [min(at[s]) for s in steps], [max(at[s]) for s in steps]


def curves(table_name: str, results_dir, out_dir) -> Path | None:
    """None when no record of the table logged a curve (a 5-step smoke run logs none: the Trainer logs every
    `train.logging_steps`)."""
    rows, _, _ = build(table_name, results_dir)
    records = {str(r.path): r for r in load_records(results_dir, table_name)[0]}
    models = {row.model for row in rows}
    label = {id(row): row.label + (f" ({row.model})" if len(models) > 1 else "") for row in rows}
    tasks = [col for col in (rows[0].columns if rows else []) if col.first_of_task]
    # (task, row) -> the curves of the row's scored seeds in that task's column
    data = {
        (col.task, id(row)): [record_curves(records[p]) for p in cell.paths if p in records]
        for row in rows
        for col, cell in zip(row.columns, row.cells.values())
        if col.first_of_task
    }
    kinds = [k for k in ("training loss", "dev loss", "dev score") if any(c[k] for cs in data.values() for c in cs)]
    tasks = [col for col in tasks if any(c[k] for row in rows for c in data[(col.task, id(row))] for k in kinds)]
    if not tasks:
        return None
    styles = series_styles(label[id(row)] for row in rows)
    fig, axes = figure(len(tasks), len(kinds), 4.0, 2.6)
    for i, col in enumerate(tasks):
        for j, kind in enumerate(kinds):
            ax = axes[i][j]
            if j:  # a task's panels share the step axis: a single dev evaluation sits at its step, not alone
                ax.sharex(axes[i][0])
            for row in rows:
                seeds = [c[kind] for c in data.get((col.task, id(row)), []) if c[kind]]
                if not seeds:
                    continue
                style = styles[label[id(row)]]
                steps, med, lo, hi = seed_band(seeds)
                ax.plot(
                    steps,
                    med,
                    color=style["color"],
                    marker=style["marker"],
                    markevery=max(1, len(steps) // 6),
                    markersize=4,
                    lw=1.1,
                    label=label[id(row)],
                )
                if len(seeds) > 1:
                    ax.fill_between(steps, lo, hi, color=style["color"], alpha=0.12, lw=0)
            name = kind if kind != "dev score" else f"dev {main_metric(col.task)} ×100"
            ax.set_title(f"{col.name}: {name}", fontsize=9)
            ax.set_xlabel("optimizer step", fontsize=8)
            ax.tick_params(labelsize=7)
            ax.grid(alpha=0.3)
            if not ax.has_data():
                ax.text(0.5, 0.5, "not logged", ha="center", va="center", transform=ax.transAxes, fontsize=8)
    legend_below(fig, collect_handles(fig), ncol=min(5, max(1, len(styles))))
    fig.suptitle(
        f"{table_name}: training and dev curves per row (median over seeds; band: the seeds' min..max)", fontsize=10
    )
    return save(fig, Path(out_dir) / f"{table_name}_curves.png")


# ---------------------------------------------------------------- Tables 5 and 6 (Section 7 ablations)


def ablation_panels(result: dict) -> list[tuple[str, dict]]:
    """(title, {variant: (value, [seed scores])}) per panel: the paper's datasets, then our tasks with a score."""
    panels = [
        (f"{d} (paper, GPT-3)", {r["variant"]: (r[f"paper_{d}"], []) for r in result["rows"]})
        for d in ablation.DATASETS
    ]
    names = result.get("task_names", {})
    panels += [
        (
            f"{names.get(t, t)} (ours, {result['rows'][0]['model']})",
            {r["variant"]: (r["tasks"][t]["mean"], r["tasks"][t]["scores"]) for r in result["rows"]},
        )
        for t in ablation.tasks_with_scores(result)
    ]
    return [(title, {v: x for v, x in vals.items() if x[0] is not None}) for title, vals in panels]


def score_vs_r(result: dict, path: Path) -> Path:
    """Table 6: the score against r (log scale), a line per weight set; our seeds as dots."""
    rows = result["rows"]
    sets = list(dict.fromkeys(ablation.weights_label(r) for r in rows))
    styles = series_styles(sets)
    ranks = sorted({r["r"] for r in rows})
    panels = ablation_panels(result)
    fig, axes = figure(-(-len(panels) // 2), 2, 4.4, 2.9)
    for ax, (title, vals) in zip([a for row in axes for a in row], panels):
        for s in sets:
            pts = sorted(
                (r["r"], *vals[r["variant"]]) for r in rows if ablation.weights_label(r) == s and r["variant"] in vals
            )
            if not pts:
                continue
            style = styles[s]
            ax.plot([p[0] for p in pts], [p[1] for p in pts], color=style["color"], marker=style["marker"], label=s)
            dots = [(rank, v) for rank, _, seeds in pts for v in seeds]
            if dots:
                ax.scatter([x for x, _ in dots], [y for _, y in dots], s=10, color=style["color"], alpha=0.45, lw=0)
        ax.set_xscale("log", base=2)
        ax.set_xticks(ranks, [str(k) for k in ranks])
        ax.minorticks_off()
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("rank r", fontsize=8)
        ax.set_ylabel("accuracy" if "paper" in title else "score ×100 (mean; dots: seeds)", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    hide_unused(axes, len(panels))
    legend_below(fig, collect_handles(fig), ncol=len(sets))
    fig.suptitle("Table 6: validation score against the rank r, a line per weight set", fontsize=10)
    return save(fig, path)


def wrap_weights(label: str, per_line: int = 2) -> str:
    """'W_q,W_k,W_v,W_o' -> 'W_q,W_k\\nW_v,W_o': tick labels that fit under their bar."""
    names = label.split(",")
    return "\n".join(",".join(names[i : i + per_line]) for i in range(0, len(names), per_line))


def weight_set_bars(result: dict, path: Path) -> Path:
    """Table 5: a bar per weight set (at the table's rank), the y axis zoomed to the panel's range; our seeds as
    dots."""
    rows = result["rows"]
    labels = {r["variant"]: f"{wrap_weights(ablation.weights_label(r))}\nr={r['r']}" for r in rows}
    styles = series_styles(labels.values())
    panels = ablation_panels(result)
    fig, axes = figure(-(-len(panels) // 2), 2, 5.0, 3.0)
    for ax, (title, vals) in zip([a for row in axes for a in row], panels):
        order = [r["variant"] for r in rows if r["variant"] in vals]
        heights = [vals[v][0] for v in order]
        ax.bar(
            range(len(order)),
            heights,
            color=[styles[labels[v]]["color"] for v in order],
            alpha=0.8,
            width=0.7,
        )
        for k, v in enumerate(order):
            seeds = vals[v][1]
            ax.scatter([k] * len(seeds), seeds, s=12, color="black", zorder=3, lw=0)
        spread = [y for v in order for y in (vals[v][0], *vals[v][1])]
        lo, hi = min(spread), max(spread)
        pad = max(0.5, 0.15 * (hi - lo))
        ax.set_ylim(lo - 2 * pad, hi + pad)
        ax.set_xticks(range(len(order)), [labels[v] for v in order], fontsize=6.5)
        ax.set_title(title + " (y axis zoomed)", fontsize=9)
        ax.set_ylabel("accuracy" if "paper" in title else "score ×100 (mean; dots: seeds)", fontsize=8)
        ax.tick_params(axis="y", labelsize=7)
        ax.grid(alpha=0.3, axis="y")
    hide_unused(axes, len(panels))
    fig.suptitle("Table 5: validation score per weight set at a fixed parameter budget", fontsize=10)
    return save(fig, path)


def ablation_figure(table_name: str, results_dir, out_dir) -> Path:
    """Table 6's lines when some weight set appears at several ranks, else Table 5's bars."""
    result = ablation.build(table_name, results_dir)
    sets = [ablation.weights_label(r) for r in result["rows"]]
    if len(set(sets)) < len(sets):
        return score_vs_r(result, Path(out_dir) / f"{table_name}_score_vs_r.png")
    return weight_set_bars(result, Path(out_dir) / f"{table_name}_bars.png")


# ---------------------------------------------------------------- every figure of a table


def render(table_name: str, results_dir, out_dir=None) -> list[Path]:
    out_dir = Path(out_dir) if out_dir else Path(results_dir) / "plots"
    if is_ablation(load_table_config(table_name)):
        figures = [ablation_figure(table_name, results_dir, out_dir)]
    else:
        figures = [
            score_vs_params(table_name, results_dir, out_dir),
            lora_minus_ft(table_name, results_dir, out_dir),
        ]
    figures.append(curves(table_name, results_dir, out_dir))
    return [f for f in figures if f is not None]


@command
def main(argv: list[str] | None = None) -> int:
    p = parser("plots", __doc__)
    p.add_argument("table", help=f"a table config under conf/table/ ({', '.join(options('table'))})")
    add_results_dir(p)
    add_out_dir(p, "<results-dir>/plots")
    add_strict(p)
    args = p.parse_args(argv)
    load_table_config(args.table)  # an unknown table: refused before anything is read
    results = str(input_dir(results_dir(args), "--results-dir"))
    out_dir = output_dir(args.out_dir or Path(results) / "plots", "--out-dir")
    report_unreadable(load_records(results, args.table)[1], args.strict)
    for path in render(args.table, results, out_dir):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
