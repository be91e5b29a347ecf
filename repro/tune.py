"""Hyperparameter selection as the paper does it for Table 2 (Appendix D): a learning rate tuned per (method, task)
on the dev set, then "the median over 5 random seeds" of the chosen setting.

A table declares a *tune group*: rows with the same model, method and `tune:` name are the candidates (they differ
only in their `set:`, e.g. the learning rate), and `table.tune.seed` is the selection seed:

    table:
      tune: {seed: 0}
      rows:
        - {model: minilm, method: lora, variant: lr5e-4, tune: LoRA, set: {train: {learning_rate: 5.0e-4}}}
        - {model: minilm, method: lora, variant: lr1e-3, tune: LoRA, set: {train: {learning_rate: 1.0e-3}}}

1. every candidate runs on the selection seed;
2. per task, the candidate with the best dev score is *chosen*: by default the task's main metric at the selected
   epoch, the highest (GLUE: dev accuracy, the paper's protocol); a table may name another of the records' metrics
   and whether lower is better (`tune: {seed: 0, metric: dev_loss, goal: min}`: the NLG tables, whose main metric,
   BLEU, is scored on the test set and must not choose); failed candidates (diverged at a large rate, ...) are not
   eligible; ties go to the first candidate in the table; no choice is made while a candidate has no record on the
   selection seed;
3. only the chosen candidate runs the table's other seeds, and the table reports its median over all seeds.

The sweeper (hydra_plugins/repro_table_sweeper) launches the other seeds after the selection seed's jobs have ended;
repro.tables and repro.claims read the choice from the records with the same rule, through repro.results.Tuning.
Choosing on dev and reporting dev is the paper's GLUE protocol (it has no test labels); it favours the tuned rows a
little, alike for every method.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Mapping

NOT_RUN = "not run"  # a candidate with no record on the selection seed


def selection_seed(table: Mapping) -> int | None:
    """The table's selection seed, or None for a table without tune groups."""
    tune = table.get("tune") or {}
    if not any(row.get("tune") for row in table.get("rows") or []):
        return None
    return int(tune.get("seed", 0))


def criterion(table: Mapping) -> tuple[str | None, bool]:
    """(the record metric candidates are compared on, None for the task's main metric; whether lower is better)."""
    tune = table.get("tune") or {}
    return tune.get("metric"), tune.get("goal", "max") == "min"


def groups(table: Mapping) -> OrderedDict[tuple[str, str, str], list[str]]:
    """(model, method, tune name) -> the candidates' variants, in table order."""
    out: OrderedDict = OrderedDict()
    for row in table.get("rows") or []:
        if row.get("tune"):
            out.setdefault((row["model"], row["method"], row["tune"]), []).append(row.get("variant", "default"))
    return out


def group_of(table: Mapping, model: str, method: str, variant: str) -> tuple[str, str, str] | None:
    for key, variants in groups(table).items():
        if key[:2] == (model, method) and variant in variants:
            return key
    return None


def choose(scores: Mapping[str, float | str | None], lower_is_better: bool = False) -> tuple[str | None, str]:
    """(chosen variant or None, why). `scores`: variant -> dev score, None if the candidate failed, NOT_RUN if it has
    no record on the selection seed; in table order (ties go to the first). The highest score wins, or the lowest
    with `lower_is_better` (a loss)."""
    missing = [v for v, s in scores.items() if s == NOT_RUN]
    if missing:
        return None, f"undecided: {', '.join(missing)} not run on the selection seed"
    eligible = {v: s for v, s in scores.items() if s is not None}
    if not eligible:
        return None, "every candidate failed on the selection seed"
    best = (min if lower_is_better else max)(eligible.values())
    chosen = next(v for v, s in eligible.items() if s == best)
    return (
        chosen,
        f"{'lowest' if lower_is_better else 'best'} dev score on the selection seed ({best:.{3 if lower_is_better else 2}f})",
    )


def choices(table: Mapping, tasks, score_of: Callable[[str, str, str, str, int], float | str | None]):
    """{(model, method, tune name, task): (chosen variant or None, why, {variant: score})}.
    score_of(model, method, variant, task, seed) -> score on the table's criterion, None (failed) or NOT_RUN."""
    seed = selection_seed(table)
    lower = criterion(table)[1]
    out = {}
    for (model, method, name), variants in groups(table).items():
        for task in tasks:
            scores = {v: score_of(model, method, v, task, seed) for v in variants}
            chosen, why = choose(scores, lower)
            out[(model, method, name, task)] = (chosen, why, scores)
    return out
