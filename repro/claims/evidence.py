"""What the claims read: the records of every table (through repro.results), the benchmark JSONs under bench/, the
Section 7 reports under analysis/, and the paper's numbers (repro/paper/*.yaml, through repro.tables' loaders).

A table's records count as evidence when their status is `ok` (the others are counted as excluded); a table with tune
groups contributes its chosen candidates' records as its rows (repro.results.Tuning) and is marked unfinished until
its tuning is decided and the chosen candidates have run every seed. `counts` says, per table, how many records were
read, how many are ok and, for a tuned table, how many of the ok ones are the chosen candidates' (the rest are
candidates not chosen). Quality claims read scores from `cells`, which leaves out the models with random weights.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from repro import tables
from repro.config import read_group
from repro.errors import ReproError
from repro.results import Cell, Record, Tuning, load_records, record_score


@dataclass
class Evidence:
    results_dir: Path
    records: dict[
        str, list[Record]
    ]  # table -> its ok records (a tuned table: its chosen candidates'), random-weight models kept
    excluded: Counter  # table -> records with status != ok
    bench: dict[str, tuple[str, dict]]  # bench file stem -> (path, json)
    analysis: dict[str, tuple[str, dict]]  # path under analysis/ -> (path, json)
    unfinished: dict[str, str] = field(default_factory=dict)  # tuned table -> why it is not used yet
    unreadable: list = field(default_factory=list)  # (path, why) of the files that could not be read: records,
    # benchmark and analysis JSONs (listed by the report, never left out silently)
    counts: dict[str, dict] = field(default_factory=dict)  # table -> {records, ok, chosen (tuned tables; else None)}


def table_config(name: str) -> dict | None:
    """conf/table/<name>.yaml's table node; None for a results folder with no (readable) table config."""
    try:
        return tables.load_table_config(name)
    except (ReproError, OSError, KeyError, ValueError):
        return None


def load_json(folder: Path, pattern: str, unreadable: list) -> dict[str, tuple[str, dict]]:
    """{path under folder, without .json: (path, its JSON)}; a file that cannot be read as JSON is left out and added
    to `unreadable` as (path, why)."""
    out = {}
    for p in sorted(folder.glob(pattern)) if folder.is_dir() else []:
        try:
            out[str(p.relative_to(folder).with_suffix(""))] = (str(p), json.loads(p.read_text()))
        except (json.JSONDecodeError, UnicodeDecodeError, OSError) as exc:
            unreadable.append((p, f"{type(exc).__name__}: {exc}"))
    return out


def load_evidence(results_dir: str | Path) -> Evidence:
    root = Path(results_dir)
    loaded, unreadable = load_records(root)
    found: dict[str, list[Record]] = {}
    for r in loaded:
        parts = r.path.relative_to(root).parts
        if len(parts) == 5:  # <table>/<model>/<method>/<task>/seed<k>.json only
            found.setdefault(parts[0], []).append(r)
    records: dict[str, list[Record]] = {}
    excluded: Counter = Counter()
    unfinished, counts = {}, {}
    for table, recs in found.items():
        counts[table] = {"records": len(recs), "ok": sum(r.ok for r in recs), "chosen": None}
        excluded[table] = len(recs) - counts[table]["ok"]
        config = table_config(table)
        tuning = Tuning.of(config, recs) if config is not None else None
        if tuning is not None:
            if why := tuning.unfinished(recs):
                unfinished[table] = why
            recs = tuning.chosen(recs)
        records[table] = [r for r in recs if r.ok]
        if tuning is not None:
            counts[table]["chosen"] = len(records[table])
    return Evidence(
        root,
        records,
        excluded,
        load_json(root / "bench", "*.json", unreadable),
        load_json(root / "analysis", "**/*.json", unreadable),
        unfinished,
        unreadable,
        counts,
    )


_MODEL_SOURCE: dict[str, str | None] = {}


def random_weights(model: str) -> bool:
    """A smoke-test model (conf/model/<model>.yaml `source: tiny`): never evidence of quality."""
    if model not in _MODEL_SOURCE:
        _MODEL_SOURCE[model] = (read_group("model", model) or {}).get("source")
    return _MODEL_SOURCE[model] == "tiny"


def cells(ev: Evidence, table: str) -> dict[tuple, Cell]:
    """Cell key (model, method, variant, task) -> the Cell of the table's scored ok records on pretrained models, in
    record order."""
    out: dict[tuple, Cell] = {}
    for r in ev.records.get(table, []):
        if record_score(r) is None or random_weights(r.model or ""):
            continue
        out.setdefault(r.key, Cell()).add(r)
    return out


def paper(name: str) -> dict:
    """A paper file of repro/paper/ through repro.tables' loader."""
    return tables.load_paper({"paper": name}) or {}
