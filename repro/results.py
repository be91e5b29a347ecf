"""The results model: what the records say, read one way by every reader (tables, plots, the claims report, the
ablation tables, the planner's tuning wait).

    records, unreadable = load_records("results", "glue")   # Records sorted by path; the files that could not be read

`repro.run` writes one JSON record per grid cell and seed, <results_dir>/<table>/<model>/<method>[.<variant>]/<task>/
seed<k>.json; `load_records` reads each into a typed `Record`. On top of it, the rules every reader shares:

- the cell key (`Record.key`): (model, method, variant, task); the seeds of a cell share it;
- the score rule (`record_score`): the task's main metric x 100 at the epoch the run selected, or a named metric
  times its scale (NLG tables print some metrics on their own scale: NIST 8.62);
- the parameter rule (`shown_params`): the count a row shows, all trainable parameters for full fine-tuning and the
  adapter's (trainable less the task head) for every other method;
- cell cost (`cell_cost`): a cell's peak memory, wall time and seconds per optimizer step;
- the aggregation of a cell's seeds (`Cell`): their scores, mean ± std and median, what failed and why, their costs;
- tuned-table resolution (`Tuning`): per task, the candidate of a tune group (repro/tune.py) that the records on the
  selection seed choose; its records stand as the row's.
"""

from __future__ import annotations

import json
import statistics
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

from repro import tune
from repro.config import read_group
from repro.errors import ReproError
from repro.records import untraced

# Two scores "match" when within one point (x100 scale): about one seed std of the 2-seed CPU cells; the paper's own
# LoRA-vs-FT gaps on GLUE are 0.1-0.8 points. The claims report and the ablation tables' ordering both use it.
MATCH_PTS = 1.0


# ---------------------------------------------------------------- the record


@dataclass(frozen=True)
class Record:
    """One seed of one cell, as repro.run wrote it (the fields are the JSON's keys; `raw` is the whole record, for the
    fields no reader needs a name for: traceback, resumed_from, skipped_steps, world_size, ...)."""

    path: Path | None
    status: str | None  # "ok", "failed"
    error: str | None  # why a failed cell failed ("Diverged: ...")
    table: str | None
    model: str | None
    method: str | None
    variant: str  # "default" when the record names none
    task: str | None
    seed: int | None
    metrics: dict  # metric -> value on its own scale (accuracy 0.91, BLEU 0.68, NIST 8.6)
    trainable_params: int | None  # adapter + task head
    adapter_params: int | None  # trainable less the task head
    head_params: int | None
    total_params: int | None
    steps: int | None  # optimizer steps taken
    wall_s: float | None  # the whole cell: set-up, training, scoring
    train_runtime_s: float | None  # the Trainer's train_runtime (None: it logged none)
    peak_rss_mb: float | None
    peak_rss_scope: str | None  # "cell": since the cell started; "process": the sweep process's peak
    process_cell_index: int | None  # 0: the first cell its process ran
    history: dict  # train_loss [{step, epoch, loss}], eval [{step, epoch, dev_<metric>, ...}]
    selected: dict  # the step whose weights were scored: {rule, step, epoch}
    decode: dict  # NLG: how the test inputs were decoded
    batch: dict  # the global batch's split: per_device, accumulation, world_size
    config: dict  # the resolved config the cell ran
    provenance: dict  # git commit, dirty, diff sha256, versions, host
    fingerprint: str | None
    raw: dict = field(repr=False)

    @classmethod
    def from_dict(cls, data: Mapping, path: Path | None = None) -> Record:
        named = {f.name for f in fields(cls)} - {"path", "raw", "variant"}
        values = {name: data.get(name) for name in named}
        for name in ("metrics", "history", "selected", "decode", "batch", "config", "provenance"):
            values[name] = values[name] or {}
        return cls(path=path, variant=data.get("variant") or "default", raw=dict(data), **values)

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def key(self) -> tuple:
        """The cell key: (model, method, variant, task)."""
        return self.model, self.method, self.variant, self.task

    @property
    def main_metric(self) -> str:
        return main_metric(self.task or "", self.config)

    @property
    def precision(self) -> str | None:
        """The precision the cell trained in (`config.train.precision`)."""
        return (self.config.get("train") or {}).get("precision")


class UnreadableRecord(ReproError):
    """A record file that cannot be read: missing, not UTF-8 JSON, or JSON that is not an object."""


def _read(path: Path) -> tuple[dict | None, str | None]:
    """(the record's JSON, None) or (None, why it cannot be read)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        return None, f"{type(exc).__name__}: {exc}"
    if not isinstance(data, dict):
        return None, f"not a record: a JSON {type(data).__name__}"
    return data, None


def load_record(path: str | Path) -> Record:
    """One record file as a Record; UnreadableRecord (the path and why) when it cannot be read."""
    data, why = _read(Path(path))
    if why is not None:
        raise UnreadableRecord(f"{path}: cannot be read as a record ({why})")
    return Record.from_dict(data, Path(path))


def load_records(results_dir: str | Path, table: str | None = None) -> tuple[list[Record], list[tuple[Path, str]]]:
    """Every seed*.json under <results_dir>[/<table>], sorted by path: (the Records, the paths that could not be read,
    each with why). A reader names every unreadable path to its user (repro.cli.report_unreadable; the tables and the
    claims report list them; --strict refuses them): none is dropped silently."""
    root = Path(results_dir) / table if table else Path(results_dir)
    records, unreadable = [], []
    for path in sorted(root.rglob("seed*.json")):
        data, why = _read(path)
        if why is not None:
            unreadable.append((path, why))
        else:
            records.append(Record.from_dict(data, path))
    return records, unreadable


def by_cell(records: Iterable[Record]) -> dict[tuple, list[Record]]:
    """Records by cell key, each cell's in the order given."""
    out: dict[tuple, list[Record]] = {}
    for r in records:
        out.setdefault(r.key, []).append(r)
    return out


# ---------------------------------------------------------------- the rules


def main_metric(task: str, config: Mapping | None = None) -> str:
    """The task's main metric: a record's own config (`task.main_metric`), else conf/task/<task>.yaml's, else
    accuracy."""
    cfg_task = (config or {}).get("task") or {}
    if cfg_task.get("main_metric"):
        return cfg_task["main_metric"]
    data = read_group("task", task)
    if data is None:
        return "accuracy"
    return (data.get("task") or data).get("main_metric", "accuracy")  # the NLG task files nest it under `task:`


def record_score(record: Record | Mapping, metric: str | None = None, scale: float = 100.0) -> float | None:
    """The score rule: the record's `metric` (default: its task's main metric) times `scale`; None when the record
    has no such metric. A record as written (a dict: the planner reads finished records so) is read as a Record."""
    if not isinstance(record, Record):
        record = Record.from_dict(record)
    value = record.metrics.get(metric or record.main_metric)
    return None if value is None else scale * float(value)


def score_text(record: Record | Mapping) -> str:
    """A record's main score as a person reads it: `accuracy 61.37` (the score rule, x100), or `no accuracy recorded`."""
    if not isinstance(record, Record):
        record = Record.from_dict(record)
    score = record_score(record)
    return f"{record.main_metric} {score:.2f}" if score is not None else f"no {record.main_metric} recorded"


def shown_params(record: Record) -> int | None:
    """The parameter rule, the count a row shows for its method: full fine-tuning (`ft`) all its trainable
    parameters, every other method its adapter's (the trainable parameters less the task head)."""
    return record.trainable_params if record.method == "ft" else record.adapter_params


def cell_cost(record: Record) -> dict:
    """What a cell cost: its peak resident memory, wall time, and seconds per optimizer step = (the Trainer's
    train_runtime_s, or wall time for older records, − the dev evaluations' runtime) / steps. The memory is the
    cell's own only when it was the first cell its process ran (process_cell_index 0, peak_rss_scope "cell": since
    the cell started, model load included): a later cell of an in-process sweep starts on what earlier cells left
    allocated, and older records hold their sweep process's peak; those give none."""
    evals = sum(e.get("dev_runtime", 0.0) for e in record.history.get("eval", []))
    steps, wall = record.steps, record.wall_s
    runtime = record.train_runtime_s if "train_runtime_s" in record.raw else wall  # older records: no such field
    own = record.peak_rss_scope == "cell" and record.process_cell_index == 0
    return {
        "peak_rss_mb": record.peak_rss_mb if own else None,
        "wall_s": wall,
        "s_per_step": (runtime - evals) / steps if steps and runtime is not None else None,
    }


def short_reason(error: str | None) -> str:
    """A failed record's reason, its error's first line cut to 90 characters."""
    first = (error or "unknown").strip().splitlines()[0]
    return first if len(first) <= 90 else first[:87] + "..."


# ---------------------------------------------------------------- a cell's seeds


@dataclass
class Cell:
    """The seeds of one cell scored in one column (a metric at a scale): an ok record with a score counts, one
    without the metric and a failed one count as failed, with the reason. `paper` is the paper's number for the
    cell when a table prints it beside ours (repro.tables)."""

    scores: list[float] = field(default_factory=list)  # one per scored seed, in the order added
    seeds: list[int] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)  # the scored records
    params: list[int] = field(default_factory=list)  # shown_params of the scored records that have one
    costs: list[dict] = field(default_factory=list)  # cell_cost of each scored record
    precisions: list = field(default_factory=list)  # the precision each scored record ran in
    failed: Counter = field(default_factory=Counter)  # reason -> count
    untraced: list = field(default_factory=list)  # (record path, why its code cannot be traced)
    paper: float | None = None

    def add(self, record: Record, metric: str | None = None, scale: float = 100.0) -> None:
        if (why := untraced(record.path, record.raw)) is not None:
            self.untraced.append((record.path, why))
        score = record_score(record, metric, scale)
        if record.ok and score is not None:
            self.scores.append(score)
            self.seeds.append(record.seed)
            self.paths.append(str(record.path))
            if (params := shown_params(record)) is not None:
                self.params.append(params)
            self.costs.append(cell_cost(record))
            self.precisions.append(record.precision)
        elif record.ok:
            self.failed[f"no {metric or record.main_metric} in metrics"] += 1
        else:
            self.failed[short_reason(record.error)] += 1

    @property
    def n(self) -> int:
        return len(self.scores)

    @property
    def mean(self):
        return statistics.fmean(self.scores) if self.scores else None

    @property
    def std(self):
        return statistics.stdev(self.scores) if len(self.scores) > 1 else None  # undefined for one seed

    @property
    def median(self):
        return statistics.median(self.scores) if self.scores else None

    @property
    def diff(self):
        return None if self.median is None or self.paper is None else self.median - self.paper


# ---------------------------------------------------------------- tuned tables


@dataclass(frozen=True)
class Tuning:
    """A tuned table's choices, read from its records with repro/tune.py's rule: per (tune group, task) the candidate
    with the best dev score on the selection seed. `choices`: (model, method, tune name, task) -> (chosen variant or
    None, why, {variant: score on the selection seed, None if it failed, tune.NOT_RUN if it has no record})."""

    table: Mapping
    choices: dict

    @classmethod
    def of(cls, table: Mapping, records: Iterable[Record]) -> Tuning | None:
        """The choices of a table config over its records; None for a table without tune groups."""
        seed = tune.selection_seed(table)
        if seed is None:
            return None
        cells = by_cell(records)

        def selection_score(model, method, variant, task, seed):
            for r in cells.get((model, method, variant, task), []):
                if r.seed == seed:
                    return record_score(r) if r.ok else None
            return tune.NOT_RUN

        return cls(table, tune.choices(table, table["tasks"], selection_score))

    def unfinished(self, records: Iterable[Record]) -> str | None:
        """Why the table does not stand for its rows yet, or None: every (group, task) choice must be made and the
        chosen candidates must have run every seed of the row (a half-run tuned grid, say one task of five, or the
        selection seed alone, whose score is the best of its candidates on the same dev set, would otherwise stand
        for the whole comparison)."""
        undecided = sum(c[0] is None for c in self.choices.values())
        if undecided:
            return f"tuning not finished ({undecided} of {len(self.choices)} (row, task) choices undecided)"
        have = {(*r.key, r.seed) for r in records}
        seeds_of = {
            (row["model"], row["method"], row.get("variant", "default")): row.get("seeds")
            or self.table.get("seeds")
            or [0]
            for row in self.table["rows"]
        }
        wanted = [
            (model, method, chosen, task, seed)
            for (model, method, _, task), (chosen, _, _) in self.choices.items()
            for seed in seeds_of[(model, method, chosen)]
        ]
        missing = sum(key not in have for key in wanted)
        if missing:
            return f"tuning not finished (the chosen candidates' seeds: {missing} of {len(wanted)} not run)"
        return None

    def chosen(self, records: Iterable[Record]) -> list[Record]:
        """The records that stand for the table's rows: per task, the chosen candidate's, as the row's (variant
        "default"), none of the other candidates'; the records of rows without a tune group as they are."""
        out = []
        for r in records:
            group = tune.group_of(self.table, r.model, r.method, r.variant)
            if group is None:
                out.append(r)
            elif self.choices.get((*group, r.task), (None,))[0] == r.variant:
                out.append(replace(r, variant="default"))
        return out
