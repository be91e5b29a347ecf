"""The task-family seam (repro/tasks/): every task config reaches a family that implements the protocol, every
generation task has its data source and its scorer, and the traits the schema reads match the families' models."""

from __future__ import annotations

import inspect
import subprocess
import sys

import pytest
from omegaconf import OmegaConf

from repro import CONF_DIR
from repro.errors import ReproError
from repro.tasks import FAMILIES, TaskFamily, family, kind_for_model, traits
from repro.tasks.scorers import SCORERS

TASKS = sorted(p.stem for p in (CONF_DIR / "task").glob("*.yaml"))


def task_cfg(name: str):
    """conf/task/<name>.yaml's task node (a generation task's file is global: `task:` and `decode:`)."""
    cfg = OmegaConf.load(CONF_DIR / "task" / f"{name}.yaml")
    return cfg.task if "task" in cfg else cfg


@pytest.mark.parametrize("name", TASKS)
def test_every_task_config_has_a_family(name):
    task = task_cfg(name)
    assert task.kind in FAMILIES
    module = family(task.kind)
    for member in ("head", "load_data", "train_and_score"):  # the protocol, by name and parameters
        expected = list(inspect.signature(getattr(TaskFamily, member)).parameters)[1:]  # less `self`
        assert list(inspect.signature(getattr(module, member)).parameters) == expected, (task.kind, member)
    head = module.head(task.get("num_labels"))
    assert head.num_labels == task.get("num_labels")  # a classifier gets the task's labels, a language model none


@pytest.mark.parametrize("name", TASKS)
def test_every_decoding_task_has_a_source_and_a_scorer(name):
    task = task_cfg(name)
    if not traits(task.kind).decodes:
        return
    assert task.name in SCORERS
    assert task.name in family(task.kind).DATASETS


def test_model_kinds_match_the_models():
    """Each family's model kind is one that conf/model/ has, and each model kind has one family (repro.params counts
    a bare model with its family's head)."""
    model_kinds = {OmegaConf.load(p).kind for p in (CONF_DIR / "model").glob("*.yaml")}
    assert {t.model_kind for t in FAMILIES.values()} == model_kinds
    for model_kind in model_kinds:
        assert traits(kind_for_model(model_kind)).model_kind == model_kind


def test_an_unknown_kind_is_one_clear_error():
    with pytest.raises(ReproError, match="task kind 'ranking' has no task family; known: classification, generation"):
        family("ranking")


def test_the_family_modules_are_imported_on_first_use():
    """repro.tasks stays light: the schema reads its traits without torch or transformers."""
    code = (
        "import sys, repro.schema, repro.tasks; print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
