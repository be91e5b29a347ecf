"""GLUE loading from the original tsv files: every offline task parses into the hub's schema."""

import pytest
from omegaconf import OmegaConf

from repro import CONF_DIR
from repro.data.glue import load_split
from repro.errors import DataFileMissing

# (task, split, rows in ../shared/data/README.md, label set)
EXPECTED = [
    ("rte", "train", 2490, {0, 1}),
    ("rte", "dev", 277, {0, 1}),
    ("mrpc", "train", 3668, {0, 1}),
    ("mrpc", "dev", 408, {0, 1}),
    ("cola", "train", 8551, {0, 1}),
    ("cola", "dev", 1043, {0, 1}),
    ("sst2", "dev", 872, {0, 1}),
    ("qnli", "dev", 5463, {0, 1}),
]


def task_cfg(name):
    return OmegaConf.load(CONF_DIR / "task" / f"{name}.yaml")


@pytest.mark.parametrize("task,split,rows,labels", EXPECTED)
def test_local_tsv_rows_and_labels(data_dir, task, split, rows, labels):
    cfg = task_cfg(task)
    ds = load_split(cfg, split, data_dir)
    assert len(ds) == rows
    assert set(ds["label"]) == labels
    assert set(ds.column_names) == {*cfg.text_fields, "label"}
    assert all(isinstance(t, str) and t for t in list(ds[cfg.text_fields[0]])[:50])


def test_string_labels_follow_hub_order(data_dir):
    ds = load_split(task_cfg("rte"), "dev", data_dir)
    # first dev row of RTE is "not_entailment", which is id 1 in nyu-mll/glue
    assert ds[0]["label"] == 1 and ds[0]["sentence2"] == "Christopher Reeve had an accident."


def test_stsb_is_regression(data_dir):
    ds = load_split(task_cfg("stsb"), "dev", data_dir)
    assert len(ds) == 1500 and ds[0]["label"] == pytest.approx(5.0)


def test_missing_split_names_path_and_remedy(data_dir):
    with pytest.raises(DataFileMissing) as err:
        load_split(task_cfg("mnli"), "train", data_dir)
    assert "glue/MNLI/train.tsv" in str(err.value) and "prepare_data.py" in str(err.value)
