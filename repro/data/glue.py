"""GLUE: the original tsv files under data_dir/glue/<TASK>/ (as in ../shared/data), else the hub's nyu-mll/glue.

Both paths yield the same columns: the task's text fields and an integer (or float, STS-B) `label`, in the hub's
label order, so tokenization and metrics never know where the data came from.
"""

from __future__ import annotations

import csv
from pathlib import Path

import datasets
from omegaconf import DictConfig

from repro.errors import DataFileMissing

HOW_TO_GET = (
    "Get the GLUE files with `python scripts/prepare_data.py glue --out $REPRO_DATA_DIR` on a machine with internet, "
    "or point REPRO_DATA_DIR at a folder that has them (../shared/data has RTE, MRPC, CoLA, STS-B, SST-2 and QNLI dev), "
    "or unset REPRO_DATA_DIR to read from the Hugging Face hub."
)


def glue_file(task: DictConfig, split: str, data_dir: str) -> Path:
    path = Path(data_dir) / "glue" / task.glue_dir / task.splits[split].local
    if not path.exists():
        raise DataFileMissing(f"task={task.name}: the {split} split is missing: {path} does not exist. {HOW_TO_GET}")
    return path


def _read_tsv(path: Path, task: DictConfig) -> dict[str, list]:
    """Quoting off: GLUE fields hold stray double quotes. MRPC's header starts with a byte-order mark."""
    with open(path, encoding="utf-8-sig", newline="") as f:
        rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    if task.header:
        header, rows = rows[0], rows[1:]
        index = {field: header.index(column) for field, column in task.columns.items()}
    else:
        index = dict(task.columns)
    return {field: [row[i] for row in rows] for field, i in index.items()}


def _label_ids(raw: list[str], task: DictConfig) -> list:
    if task.num_labels == 1:
        return [float(x) for x in raw]
    names = list(task.label_names)
    return [int(x) if x.isdigit() else names.index(x) for x in raw]


def load_split(task: DictConfig, split: str, data_dir: str | None) -> datasets.Dataset:
    """One split with columns text_fields + label."""
    if data_dir:
        columns = _read_tsv(glue_file(task, split, data_dir), task)
        columns["label"] = _label_ids(columns["label"], task)
        return datasets.Dataset.from_dict(columns)
    ds = datasets.load_dataset(task.hub.path, task.hub.name, split=task.splits[split].hub)
    return ds.select_columns([*task.text_fields, "label"])


def subsample(ds: datasets.Dataset, n: int | None, seed: int) -> datasets.Dataset:
    if n is None or n >= len(ds):
        return ds
    return ds.shuffle(seed=seed).select(range(n))


def tokenize(ds: datasets.Dataset, tokenizer, task: DictConfig, max_length: int) -> datasets.Dataset:
    """Truncate to max_length; padding is dynamic, per batch (DataCollatorWithPadding)."""

    def encode(batch):
        texts = [batch[field] for field in task.text_fields]
        return tokenizer(*texts, truncation=True, max_length=max_length)

    return ds.map(encode, batched=True, remove_columns=list(task.text_fields), desc=f"tokenize {task.name}")


def load_glue(task: DictConfig, tokenizer, data_cfg: DictConfig, data_dir: str | None, seed: int) -> dict[str, datasets.Dataset]:
    """Tokenized train and dev split(s) of a GLUE task: {"train": ..., "dev": ..., ["dev_mm": ...]}."""
    out = {}
    for split in task.splits:
        ds = load_split(task, split, data_dir)
        limit = data_cfg.max_train_samples if split == "train" else data_cfg.max_eval_samples
        out[split] = tokenize(subsample(ds, limit, seed), tokenizer, task, data_cfg.max_seq_length)
    return out
