"""Shared fixtures: compose the real Hydra configs (never mocks), tiny models, the offline data folder."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from repro import CONF_DIR

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ["WANDB_MODE"] = "disabled"  # tracking is never on in tests
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def data_dir() -> str:
    """The offline data folder (../shared/data in CI), from REPRO_DATA_DIR: the suite never guesses a path."""
    path = os.environ.get("REPRO_DATA_DIR")
    if not path or not Path(path).is_dir():
        pytest.fail("set REPRO_DATA_DIR to the offline data folder (e.g. ../shared/data) to run the tests")
    return path


def compose_cfg(overrides: list[str], results_dir: Path | None = None) -> DictConfig:
    """The real config, composed as `python -m repro.run <overrides>` would compose it."""
    extra = [f"paths.results_dir={results_dir}", f"paths.log_dir={results_dir}/logs"] if results_dir else []
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="config", overrides=[*overrides, *extra])


@pytest.fixture
def compose_config(tmp_path):
    """compose_config(["+table=glue", "model=tiny-roberta"]) -> a composed config writing under tmp_path."""

    def _compose(overrides: list[str]) -> DictConfig:
        return compose_cfg(overrides, tmp_path)

    return _compose
