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
# tables (mean ± std over seeds, the paper's median, the paper's numbers and Δ) and the figures.
# Kept as a jupytext percent script: `jupytext --to ipynb notebooks/results.py` gives the notebook.
#
# Inputs from the environment: `REPRO_RESULTS_DIR` (default `results/`), `REPRO_TABLES` (comma-separated table
# names, default: every table with records), `REPRO_OUT_DIR` (where tables and plots go; default the results folder).

# %%
import os
from pathlib import Path

import pandas as pd

from repro import PROJECT_ROOT, plots, tables
from repro.results import load_records

results_dir = Path(os.environ.get("REPRO_RESULTS_DIR") or PROJECT_ROOT / "results")
out_dir = Path(os.environ.get("REPRO_OUT_DIR") or results_dir)
available = sorted(
    {p.stem for p in (PROJECT_ROOT / "conf" / "table").glob("*.yaml") if (results_dir / p.stem).is_dir()}
)
table_names = [t for t in os.environ.get("REPRO_TABLES", ",".join(available)).split(",") if t]
print("results:", results_dir, "| tables:", table_names)

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
# ## Tables in the paper's layout

# %%
from IPython.display import Markdown, display  # noqa: E402

for name in table_names:
    md = tables.render(name, results_dir, out_dir / "tables")
    display(Markdown(md))

# %% [markdown]
# ## One line per row × task (the CSV)

# %%
for name in table_names:
    display(pd.read_csv(out_dir / "tables" / f"{name}.csv"))

# %% [markdown]
# ## Figures: score against trainable parameters, loss curves

# %%
from IPython.display import Image  # noqa: E402

written = []
for name in table_names:
    written += plots.render(name, results_dir, out_dir / "plots")
for path in written[:6]:
    display(Image(filename=str(path)))
print(f"{len(written)} figures under {out_dir / 'plots'}")
