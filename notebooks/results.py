# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # lora-repro results
#
# Loads the cell records (`results/<table>/<model>/<method>[.<variant>]/<task>/seed<k>.json`), draws the paper's
# tables (one number per cell, then the full layout: mean ± std over seeds, the paper's median, the paper's numbers
# and Δ), the figures, and Section 7 (Tables 5 and 6, then the subspace, spectrum and Table 7 report of the
# committed LoRA factors). Kept as a jupytext percent script; run it top to bottom with
#
#     jupytext --to notebook notebooks/results.py && jupyter execute --inplace notebooks/results.ipynb
#
# (`notebooks/*.ipynb` is git-ignored). Inputs from the environment: `REPRO_RESULTS_DIR` (the records; default
# `results/`), `REPRO_TABLES` (comma-separated table names; default every table with records), `REPRO_OUT_DIR`
# (where the tables, figures and the Section 7 report are written; default a new scratch folder, never `results/`).

# %%
import os
import tempfile
from pathlib import Path

import pandas as pd
from IPython import get_ipython
from IPython.display import Image, Markdown, display

from repro import PROJECT_ROOT, plots, tables
from repro.analysis import ablation
from repro.analysis.report import find_ranks, report
from repro.results import load_records

results_dir = Path(os.environ.get("REPRO_RESULTS_DIR") or PROJECT_ROOT / "results")
out_dir = Path(os.environ.get("REPRO_OUT_DIR") or tempfile.mkdtemp(prefix="repro-notebook-"))
available = sorted(
    {p.stem for p in (PROJECT_ROOT / "conf" / "table").glob("*.yaml") if (results_dir / p.stem).is_dir()}
)
table_names = [t for t in os.environ.get("REPRO_TABLES", ",".join(available)).split(",") if t]
print("records:", results_dir, "| tables:", table_names, "| outputs:", out_dir)


def show(path) -> None:
    """A figure inline; run as a plain script (no IPython: nowhere to draw), its path."""
    if get_ipython() is None:
        print(path)
    else:
        display(Image(filename=str(path)))


# %% [markdown]
# ## All records

# %%
frame = pd.DataFrame(
    [
        {
            "path": str(r.path.relative_to(results_dir)),
            "status": r.status,
            "table": r.table,
            "model": r.model,
            "method": r.method,
            "variant": r.variant,
            "task": r.task,
            "seed": r.seed,
            **{f"metric.{k}": v for k, v in r.metrics.items()},
            "adapter_params": r.adapter_params,
            "wall_s": r.wall_s,
            "error": r.error,
        }
        for r in load_records(results_dir)[0]
    ]
)
print(f"{len(frame)} records")
frame.head(20)

# %% [markdown]
# ## At a glance: the median over seeds, one number per cell (`python -m repro.tables <table> --stat median`)
#
# The Section 7 ablation tables (Tables 5 and 6) have their own layout, below.

# %%
layout_tables = [n for n in table_names if not plots.is_ablation(tables.load_table_config(n))]
for name in layout_tables:
    display(Markdown(tables.compact(name, results_dir, "median")))

# %% [markdown]
# ## Tables in the paper's layout

# %%
for name in layout_tables:
    display(Markdown(tables.render(name, results_dir, out_dir / "tables")))

# %% [markdown]
# ## One line per row × task (the CSV)

# %%
for name in layout_tables:
    display(pd.read_csv(out_dir / "tables" / f"{name}.csv"))

# %% [markdown]
# ## Figures
#
# Per table: score against trainable parameters, LoRA − FT per column with each seed, and the training and dev
# curves of every row; for Tables 5 and 6, bars per weight set and score against r (`python -m repro.plots <table>`).

# %%
for name in table_names:
    for path in plots.render(name, results_dir, out_dir / "plots"):
        show(path)

# %% [markdown]
# ## Section 7: Tables 5 and 6 (which weight matrices, how small a rank)

# %%
for name in ("which_weights", "rank"):
    if (results_dir / name).is_dir():
        md, _ = ablation.write(name, results_dir, out_dir / "analysis")
        display(Markdown(md))
    else:
        print(f"no records of table {name} under {results_dir}")

# %% [markdown]
# ## Section 7: subspaces, spectra and Table 7 (`python -m repro.analyze report`)
#
# From the LoRA factors of the W_q,W_v cells of `rank` at r=8 and r=64, seeds 0 and 1, on SST-2 (committed beside
# their records): φ between the two ranks and between the two seeds (Figures 3, 4, 6, 7), the spectra of ΔW against
# W, and Table 7 (how much ΔW amplifies directions of W).

# %%
S7 = {"table": "rank", "model": "minilm", "task": "sst2", "family": "qv", "r_small": 8, "r_large": 64}
ranks = find_ranks(results_dir, S7["table"], S7["model"], S7["task"], S7["family"])
if S7["r_small"] in ranks and S7["r_large"] in ranks:
    s7 = report(results_dir, **S7, out_dir=out_dir / "analysis" / "{table}_{model}_{task}_{family}".format(**S7))
    display(Markdown((Path(s7["out_dir"]) / "report.md").read_text()))
    for path in s7["files"]:
        if path.endswith(".png"):
            show(path)
else:
    print(
        f"no LoRA factors of lora.{S7['family']}_r{S7['r_small']} and _r{S7['r_large']} under "
        f"{results_dir / S7['table'] / S7['model']} (found ranks {ranks or 'none'}): see docs/usage.md, Section 7"
    )

# %%
print(f"tables, figures and the Section 7 report of this run: {out_dir}")
