"""Task families: what a kind of task (`task.kind` in conf/task/) brings to a cell.

A family is one module of this package that implements `TaskFamily`:

    head(num_labels)                   the transformers auto class on the backbone, and its number of labels
    load_data(cfg, tokenizer)          the task's splits, tokenized
    train_and_score(cfg, model, tokenizer, data, output_dir) -> Outcome
                                       train (repro.train.fit), then score the selected weights

and one line in FAMILIES below, which also holds the traits that are read before anything heavy is imported (the
schema's rules): the backbone the family trains and whether its cells decode text. Nothing outside this package
branches on a task's kind or name; the runner, the model loader, the schema and the benchmarks ask the family.

    classification   GLUE (Table 2): a sequence classifier on an encoder; scored on every dev split
    generation       E2E, WebNLG, DART (Tables 3, 13, 14): a causal LM; beam search on the test inputs, then the
                     dataset's official scorer (repro.tasks.scorers)

This module stays light (no torch, no transformers): a family's module is imported on first use.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, cast

from repro.errors import ReproError

if TYPE_CHECKING:  # for the annotations only: repro.train brings torch and transformers
    from omegaconf import DictConfig

    from repro.train import Outcome


@dataclass(frozen=True)
class Head:
    """What a family puts on the backbone: the transformers auto class (AutoModelForSequenceClassification, ...) and
    the number of labels of a classifier (None: a language-model head over the vocabulary)."""

    auto_class: Any
    num_labels: int | None = None


class TaskFamily(Protocol):
    """The functions a family's module defines (see the module docstring)."""

    def head(self, num_labels: int | None) -> Head: ...

    def load_data(self, cfg: DictConfig, tokenizer) -> dict: ...

    def train_and_score(self, cfg: DictConfig, model, tokenizer, data: dict, output_dir: Path) -> Outcome: ...


@dataclass(frozen=True)
class Traits:
    """A family's registry line: its module, and what the schema needs to know of it without importing it."""

    module: str  # the module implementing TaskFamily
    model_kind: str  # the backbone it trains: "encoder" or "decoder" (conf/model/*.yaml `kind`)
    decodes: bool  # its cells generate text and need the `decode:` settings
    eval_batch_floor: int  # the per-device eval batch is the training's, and at least this (repro.train.eval_batch)


FAMILIES = {
    # classifiers evaluate in batches of at least 32 (a forward pass, no gradients); a causal LM's dev loss runs at the
    # training's per-device batch, never gathering its B x T x V logits (repro.tasks.generation)
    "classification": Traits("repro.tasks.classification", model_kind="encoder", decodes=False, eval_batch_floor=32),
    "generation": Traits("repro.tasks.generation", model_kind="decoder", decodes=True, eval_batch_floor=0),
}


def traits(kind: str) -> Traits:
    """The registry line of task kind `kind`; an unknown kind is a ReproError naming the known ones."""
    if kind not in FAMILIES:
        raise ReproError(f"task kind {kind!r} has no task family; known: {', '.join(FAMILIES)}")
    return FAMILIES[kind]


def family(kind: str) -> TaskFamily:
    """The family of task kind `kind` (a task config's `kind`): its module, imported on first use."""
    return cast(TaskFamily, importlib.import_module(traits(kind).module))


def kind_for_model(model_kind: str) -> str:
    """The task kind whose family trains a backbone of `model_kind` (the head to count a bare model with)."""
    kind = next((kind for kind, t in FAMILIES.items() if t.model_kind == model_kind), None)
    if kind is None:
        raise ReproError(
            f"no task family trains a model of kind {model_kind!r}; known: "
            f"{', '.join(sorted({t.model_kind for t in FAMILIES.values()}))}"
        )
    return kind
