"""The official scorer of each generation dataset (task name -> Scorer): the runner scores its decoded outputs with it
(repro.tasks.generation) and `python -m repro.score` scores files with it. A new generation dataset adds one line.

    e2e      tuetschek/e2e-metrics' measure_scores.py: BLEU, NIST, METEOR, ROUGE_L, CIDEr (repro.metrics.e2e)
    webnlg   WebNLG/GenerationEval: BLEU, METEOR, TER on the seen, unseen and all inputs (repro.metrics.nlg)
    dart     WebNLG/GenerationEval: BLEU, METEOR, TER (repro.metrics.nlg)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from repro.metrics.e2e import e2e_scores
from repro.metrics.nlg import gem_scores, webnlg_scores


@dataclass(frozen=True)
class Scorer:
    """A dataset's scores of hypotheses against their references (one list of references per hypothesis); `by_seen`,
    where the dataset splits its inputs into seen and unseen categories, scores each part given one flag per input."""

    score: Callable[[list[str], list[list[str]]], dict[str, float]]
    by_seen: Callable[[list[str], list[list[str]], list[bool]], dict[str, float]] | None = None


SCORERS = {
    "e2e": Scorer(e2e_scores),
    "webnlg": Scorer(gem_scores, by_seen=webnlg_scores),
    "dart": Scorer(gem_scores),
}


def score(task_name: str, hyps: list[str], refs: list[list[str]], seen: list[bool] | None = None) -> dict[str, float]:
    """The scores of `task_name`'s outputs: split by seen/unseen where the dataset has the split and `seen` is given,
    else on all inputs."""
    scorer = SCORERS[task_name]
    if seen is not None and scorer.by_seen is not None:
        return scorer.by_seen(hyps, refs, seen)
    return scorer.score(hyps, refs)
