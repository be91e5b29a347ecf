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
- did it train (`did_not_train`): a record whose training did not move its loss, whose outputs are mostly empty, or
  whose score is no better than a constant prediction's; such a seed is shown as "did not train" and, as a baseline,
  counts neither for nor against the method it is compared with;
- the seed noise of a margin between two rows (`margin_noise`, `beyond_noise`): a margin inside it is no win;
- the convergence test (`convergence`): whether a cell's dev loss had stopped falling over the last fifth of training;
- the aggregation of a cell's seeds (`Cell`): their scores, mean ± std and median, what failed and why, which seeds
  did not train, their costs;
- tuned-table resolution (`Tuning`): per task, the candidate of a tune group (repro/tune.py) that the records on the
  selection seed choose; its records stand as the row's.
"""

from __future__ import annotations

import json
import math
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
    trainable_params: int | None  # what the optimizer trained: adapter + task head (+ a reparametrization it drops)
    adapter_params: int | None  # |Θ|: trainable less the task head; a reparametrized prefix: the prefix it keeps
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


def weights_beside(record: Record) -> Path:
    """The trained weights a cell wrote beside its record (seed<k>.safetensors); ReproError naming the command that
    writes them again when they are missing (weights are not committed)."""
    weights = record.path.with_suffix(".safetensors")
    if not weights.exists():
        raise ReproError(
            f"{weights} is missing (weights are not committed): rerun the cell to write it, e.g. python -m repro.run "
            f"+table={record.table} model={record.model} method={record.method} task={record.task} "
            f"seed={record.seed} force=true"
        )
    return weights


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


def selection_score(record: Record | Mapping, table: Mapping) -> float | None:
    """A tune candidate's score on the table's criterion (repro/tune.py `criterion`): the task's main metric x 100,
    or the named metric on its own scale (dev_loss)."""
    metric, _ = tune.criterion(table)
    return record_score(record) if metric is None else record_score(record, metric, scale=1.0)


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


# ---------------------------------------------------------------- did it train? is a margin more than noise?

# A record "did not train" (did_not_train) when any of these holds; each is read from the record alone:
FLAT_LOSS = 0.05  # its training loss fell by less than 5%: first logged value -> mean of the last fifth of the log
MOSTLY_EMPTY = 0.5  # more than half of its decoded outputs are empty (decode.empty_hypotheses / decode.inputs)
# ... or its main metric is at or below a constant prediction's (chance_score). A constant prediction correlates with
# nothing: these metrics score it 0 whatever the data.
CONSTANT_PREDICTION = {"matthews_correlation": 0.0, "pearson": 0.0, "spearmanr": 0.0}


def chance_score(record: Record) -> float | None:
    """What a constant prediction scores on the record's main metric (the metric's own scale), where the record fixes
    it: 0 for a correlation (CONSTANT_PREDICTION); for accuracy 1 / num_labels, a lower bound of the majority class's
    share of the dev set (the share itself needs the dev labels, which no record holds); None for every other metric
    (BLEU, ...)."""
    metric = record.main_metric
    if metric in CONSTANT_PREDICTION:
        return CONSTANT_PREDICTION[metric]
    labels = (record.config.get("task") or {}).get("num_labels")
    return 1.0 / labels if metric == "accuracy" and labels else None


def did_not_train(record: Record) -> str | None:
    """Why an ok record did not train, or None: the one rule every reader uses (tables mark the seed, the claims
    count such a baseline neither for nor against LoRA). It did not train when
    - more than MOSTLY_EMPTY of its decoded outputs are empty, or
    - its training loss moved by less than FLAT_LOSS: the mean of the last fifth of its logged training losses is
      less than 5% below the first logged one (the first log averages the first `logging_steps` steps, so it stands
      for the untrained model; a dev-loss rule would need an evaluation before training, which no record holds), or
    - its main metric is at or below what a constant prediction scores (chance_score).
    A record without a training-loss log, decoded outputs or a known chance level is judged on what it has."""
    if not record.ok:
        return None
    why = []
    empty, inputs = record.decode.get("empty_hypotheses"), record.decode.get("inputs")
    if isinstance(empty, int) and isinstance(inputs, int) and inputs and empty > MOSTLY_EMPTY * inputs:
        why.append(f"{empty} of {inputs} outputs empty")
    losses = [e.get("loss") for e in record.history.get("train_loss", [])]
    losses = [x for x in losses if isinstance(x, (int, float)) and math.isfinite(x)]
    if len(losses) >= 2 and losses[0] > 0:
        end = statistics.fmean(losses[-max(1, len(losses) // 5) :])
        if end > (1 - FLAT_LOSS) * losses[0]:
            why.append(
                f"training loss {losses[0]:.3g} -> {end:.3g} (first logged -> mean of the last fifth), a fall of "
                f"{100 * (losses[0] - end) / losses[0]:.1f}% (< {100 * FLAT_LOSS:.0f}%)"
            )
    chance, score = chance_score(record), record.metrics.get(record.main_metric)
    if chance is not None and isinstance(score, (int, float)) and score <= chance:
        why.append(f"{record.main_metric} {score:.3g}, at or below a constant prediction's {chance:.3g}")
    return "; ".join(why) or None


@dataclass(frozen=True)
class Noise:
    """The seed noise of a margin between two rows over their common tasks (margin_noise): `points` (x100 scale),
    and on how many of the tasks it was measured (the others, where neither cell has two seeds, take MATCH_PTS)."""

    points: float
    measured: int
    tasks: int

    def __str__(self) -> str:
        how = "" if self.measured == self.tasks else f", {self.tasks - self.measured} of {self.tasks} tasks unmeasured"
        return f"seed noise {self.points:.1f}{how}"


def margin_noise(pairs: Iterable[tuple[Cell, Cell]]) -> Noise:
    """The seed noise of the margin between two rows' averages: over the compared tasks (one (a, b) pair of cells
    each), the mean of the larger of the two cells' seed standard deviations (sample std over a cell's seeds, in
    score points). The larger of the two, not a standard error: with 2-3 seeds a std is itself uncertain, and a win
    should clear the spread of either row. A task where neither cell has two seeds contributes MATCH_PTS (about one
    seed std of the suite's 2-seed CPU cells) and is counted as unmeasured."""
    per_task, measured = [], 0
    for a, b in pairs:
        stds = [s for s in (a.std, b.std) if s is not None]
        per_task.append(max(stds) if stds else MATCH_PTS)
        measured += bool(stds)
    return Noise(statistics.fmean(per_task) if per_task else MATCH_PTS, measured, len(per_task))


def beyond_noise(margin: float, noise: Noise | float) -> int:
    """+1: a win (the margin is above the noise), -1: a loss (below minus the noise), 0: inside the noise (neither)."""
    bound = noise.points if isinstance(noise, Noise) else noise
    return 1 if margin > bound else -1 if margin < -bound else 0


@dataclass(frozen=True)
class Convergence:
    """Whether a cell had stopped improving on the dev set when training ended (`convergence`): its dev-loss curve,
    the point where the last part of training begins, the relative improvement after it, and the verdict."""

    curve: list  # [(step, dev loss)] of the evaluations during training, in step order
    start: tuple | None  # (step, dev loss) of the last evaluation at or before the last part of training
    best_after: tuple | None  # (step, dev loss) of the lowest dev loss after it
    improvement: float | None  # (start loss - best loss after it) / start loss; negative when it rose
    verdict: str  # "converged", "still improving", or "undecided: <why>"

    @property
    def converged(self) -> bool:
        return self.verdict == "converged"


def dev_loss_curve(record: Record) -> list[tuple[int, float]]:
    """(step, dev loss) of each evaluation during training, from the record's history. Left out: a repeated step (the
    evaluation of the selected weights that generation cells log after training, at the last step: `fit`) and, with
    `train.eval_strategy: steps`, a step that is no multiple of `train.eval_steps` (the same, when the last step is
    no evaluation step)."""
    train = record.config.get("train") or {}
    every = train.get("eval_steps") if train.get("eval_strategy") == "steps" else None
    curve: dict[int, float] = {}
    for e in record.history.get("eval", []):
        step, loss = e.get("step"), e.get("loss")
        if step is None or loss is None or step in curve or (every and step % every):
            continue
        curve[int(step)] = float(loss)
    return sorted(curve.items())


def convergence(record: Record, last: float = 0.2, below: float = 0.01) -> Convergence:
    """The convergence test (issue 28): a cell has stopped improving when its dev loss improved by less than `below`
    (relative) over the last `last` of its training steps: from the last evaluation at or before step (1 - last) x
    steps to the lowest dev loss after it. A curve with no evaluation on either side of that step is undecided.
    Under a decaying learning rate the last part trains at a small rate, so passing says the schedule ended on a
    plateau of its own, not that a longer schedule could not do better."""
    curve = dev_loss_curve(record)
    steps = record.steps or (curve[-1][0] if curve else None)
    if not curve or not steps:
        return Convergence(curve, None, None, None, "undecided: no dev-loss curve in the record")
    boundary = (1.0 - last) * steps
    before = [p for p in curve if p[0] <= boundary]
    after = [p for p in curve if p[0] > boundary]
    if not before or not after:
        side = "at or before" if not before else "after"
        return Convergence(
            curve,
            None,
            None,
            None,
            f"undecided: no dev evaluation {side} step {boundary:g} of {steps} (evaluate more often)",
        )
    start, best = before[-1], min(after, key=lambda p: p[1])
    improvement = (start[1] - best[1]) / start[1]
    return Convergence(curve, start, best, improvement, "converged" if improvement < below else "still improving")


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
    untrained: list = field(default_factory=list)  # (seed, record path, why) of the scored seeds that did not train
    paper: float | None = None
    added: list = field(default_factory=list, repr=False)  # (record, metric, scale) as added, for `trained`

    def add(self, record: Record, metric: str | None = None, scale: float = 100.0) -> None:
        self.added.append((record, metric, scale))
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
            if (why := did_not_train(record)) is not None:
                self.untrained.append((record.seed, str(record.path), why))
        elif record.ok:
            self.failed[f"no {metric or record.main_metric} in metrics"] += 1
        else:
            self.failed[short_reason(record.error)] += 1

    def trained(self) -> Cell:
        """This cell without its seeds that did not train (did_not_train): what a baseline counts with."""
        out = Cell(paper=self.paper)
        for record, metric, scale in self.added:
            if did_not_train(record) is None:
                out.add(record, metric, scale)
        return out

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
    with the best dev score on the selection seed (on the table's criterion: `selection_score`). `choices`: (model,
    method, tune name, task) -> (chosen variant or
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

        def candidate_score(model, method, variant, task, seed):
            for r in cells.get((model, method, variant, task), []):
                if r.seed == seed:
                    return selection_score(r, table) if r.ok else None
            return tune.NOT_RUN

        return cls(table, tune.choices(table, table["tasks"], candidate_score))

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
