"""Records -> PNG figures under results/plots/: `python -m repro.plots glue`.

- `<table>_score_vs_params.png`: per task column (and the average), score against trainable parameters on a log
  axis, one colour per method, as in the paper's figures; our rows filled (median over seeds, bars = min..max),
  the paper's rows hollow at the paper's parameter counts.
- `<table>/loss/<model>__<method>__<task>.png`: the training loss of every seed of a cell (record `history.train_loss`).
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

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
from repro.results import load_records  # noqa: E402
from repro.tables import (  # noqa: E402
    build,
    load_paper,
    load_table_config,
    paper_average,
    parse_label,
    parse_params,
    table_columns,
)


def _colour(method: str, cache: dict):
    if method not in cache:
        cache[method] = plt.get_cmap("tab10")(len(cache) % 10)
    return cache[method]


def score_vs_params(table_name: str, results_dir, out_dir) -> Path:
    rows, _, table = build(table_name, results_dir)
    paper = load_paper(table) or {}
    tasks = list(table["tasks"])
    cols = table_columns(table, paper)  # one panel per task (+ Avg), or per metric of a one-task NLG table
    columns = [c.name for c in cols] + ([] if any(c.metric for c in cols) else ["Avg"])
    ncol = 3
    nrow = -(-len(columns) // ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(4.2 * ncol, 3.2 * nrow), squeeze=False)
    colours: dict = {}
    for i, col in enumerate(columns):
        ax = axes[i // ncol][i % ncol]
        for row in rows:
            method = parse_label(row.label)["method"]
            c = _colour(method, colours)
            # ours: median over seeds, bar = min..max, at the median trainable-parameter count of the records
            if row.trainable:
                x = statistics.median(row.trainable)
                if col == "Avg":
                    med, k = row.average("median")
                    lo = hi = med if k == len(tasks) else None
                    med = med if k == len(tasks) else None
                else:
                    cell = row.cells[cols[i].key]
                    med, lo, hi = (
                        cell.median,
                        (min(cell.scores) if cell.scores else None),
                        (max(cell.scores) if cell.scores else None),
                    )
                if med is not None:
                    ax.errorbar(
                        [x],
                        [med],
                        yerr=[[med - lo], [hi - med]],
                        fmt="o",
                        color=c,
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
                        edgecolors=[c],
                        marker="s",
                        label=f"{method} (paper, {row.paper['model']})",
                    )
        ax.set_xscale("log")
        ax.set_title(col)
        ax.set_xlabel("trainable parameters (log)")
        ax.set_ylabel("score ×100" if col == "Avg" or cols[i].scale == 100 else "score")
        ax.grid(alpha=0.3)
    for j in range(len(columns), nrow * ncol):
        axes[j // ncol][j % ncol].axis("off")
    handles = {}
    for ax in fig.axes:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(lab, h)
    if handles:
        fig.legend(list(handles.values()), list(handles), loc="lower center", ncol=3, fontsize=7, frameon=False)
    fig.suptitle(
        f"Table {table_name}: score against trainable parameters (filled: ours, median over seeds; hollow: paper)"
    )
    fig.tight_layout(rect=(0, 0.08 + 0.02 * (len(handles) // 3), 1, 0.96))
    out = Path(out_dir) / f"{table_name}_score_vs_params.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def loss_curves(table_name: str, results_dir, out_dir) -> list[Path]:
    """One PNG per cell (model, method[.variant], task), a line per seed; cells without a logged loss are skipped
    and listed by the caller (a 5-step smoke run logs none: the Trainer logs every `train.logging_steps`)."""
    cells: dict[tuple, list] = {}
    for r in load_records(results_dir, table_name)[0]:
        method = (r.method or "?") + ("" if r.variant == "default" else f".{r.variant}")
        cells.setdefault((r.model, method, r.task), []).append(r)
    written = []
    for (model, method, task), recs in sorted(cells.items()):
        curves = [(r.seed, r.history.get("train_loss") or []) for r in recs]
        curves = [(s, c) for s, c in curves if c]
        if not curves:
            continue
        fig, ax = plt.subplots(figsize=(5, 3.2))
        for seed, curve in sorted(curves, key=lambda x: x[0] or 0):
            ax.plot([p["step"] for p in curve], [p["loss"] for p in curve], marker=".", label=f"seed {seed}")
        ax.set_xlabel("step")
        ax.set_ylabel("training loss")
        ax.set_title(f"{table_name}: {model} / {method} / {task}", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        fig.tight_layout()
        out = Path(out_dir) / table_name / "loss" / f"{model}__{method}__{task}.png"
        out.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(out, dpi=100)
        plt.close(fig)
        written.append(out)
    return written


def render(table_name: str, results_dir, out_dir=None) -> list[Path]:
    out_dir = Path(out_dir) if out_dir else Path(results_dir) / "plots"
    return [score_vs_params(table_name, results_dir, out_dir), *loss_curves(table_name, results_dir, out_dir)]


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
