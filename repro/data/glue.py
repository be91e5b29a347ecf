"""GLUE: the original tsv files under data_dir/glue/<TASK>/ (as in ../shared/data), else the hub's nyu-mll/glue.

Both paths yield the same columns: the task's text fields and an integer (or float, STS-B) `label`, in the hub's
label order, so tokenization and metrics never know where the data came from.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import datasets
from omegaconf import DictConfig

from repro.data import read_text
from repro.errors import DataFileInvalid, DataFileMissing

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


def _expected_rows(task: DictConfig) -> str:
    cols = ", ".join(f"{c}" for c in task.columns.values())
    if task.header:
        return f"a tab-separated GLUE file with a header line naming the columns {cols}"
    return f"a tab-separated GLUE file without a header, the task's fields in columns (0-based) {cols}"


def _read_tsv(path: Path, task: DictConfig) -> dict[str, list]:
    """The task's columns of a local GLUE tsv, checked against the task config: the header names the task's
    `columns`, every row has the header's number of fields (or, headerless, reaches the task's highest column),
    every label is in the task's label set (`label_names` or their ids; a number for regression). Anything else
    is DataFileInvalid naming the file, the line and what was expected.

    Quoting off: GLUE fields hold stray double quotes. MRPC's header starts with a byte-order mark."""
    text = read_text(path, _expected_rows(task), encoding="utf-8-sig")
    reader = csv.reader(io.StringIO(text, newline=""), delimiter="\t", quoting=csv.QUOTE_NONE)
    numbered = [(reader.line_num, row) for row in reader]
    while numbered and not numbered[-1][1]:  # blank lines at the end of the file
        numbered.pop()
    if task.header:
        (_, header), numbered = numbered[0], numbered[1:]
        missing = [c for c in task.columns.values() if c not in header]
        if missing:
            raise DataFileInvalid(
                path,
                1,
                f"the header lacks column(s) {', '.join(map(repr, missing))} (it has {', '.join(map(repr, header))})",
                _expected_rows(task),
            )
        index = {field: header.index(column) for field, column in task.columns.items()}
        n_fields, need = len(header), f"{len(header)} tab-separated fields, as the header has"
    else:
        index = dict(task.columns)
        n_fields = max(index.values()) + 1
        need = f"at least {n_fields} tab-separated fields ({_expected_rows(task)})"
    if not numbered:
        raise DataFileInvalid(
            path, 2 if task.header else 1, "no data rows", _expected_rows(task) + ", then one row per example"
        )
    check_label = _label_check(task)
    for line, row in numbered:
        if len(row) < n_fields or (task.header and len(row) != n_fields):
            raise DataFileInvalid(path, line, f"{len(row)} field(s)", need)
        problem = check_label(row[index["label"]])
        if problem:
            raise DataFileInvalid(path, line, problem[0], problem[1])
    return {field: [row[i] for _, row in numbered] for field, i in index.items()}


def _label_check(task: DictConfig):
    """label -> None if the task's label set has it, else (problem, expected)."""
    if task.num_labels == 1:

        def check(x):
            try:
                float(x)
            except ValueError:
                return f"label {x!r} is not a number", f"a numeric score for task={task.name} (regression)"
            return None

        return check
    names = list(task.label_names)
    allowed = set(names) | {str(i) for i in range(task.num_labels)}
    expected = f"a label of task={task.name}: one of {', '.join(names)} or its id 0..{task.num_labels - 1}"

    def check(x):
        return None if x in allowed else (f"label {x!r} is not in the task's label set", expected)

    return check


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


def load_glue(
    task: DictConfig, tokenizer, data_cfg: DictConfig, data_dir: str | None, seed: int
) -> dict[str, datasets.Dataset]:
    """Tokenized train and dev split(s) of a GLUE task: {"train": ..., "dev": ..., ["dev_mm": ...]}."""
    out = {}
    for split in task.splits:
        ds = load_split(task, split, data_dir)
        limit = data_cfg.max_train_samples if split == "train" else data_cfg.max_eval_samples
        out[split] = tokenize(subsample(ds, limit, seed), tokenizer, task, data_cfg.max_seq_length)
    return out
