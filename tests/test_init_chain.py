"""Table 2's MNLI chain (RTE, MRPC, STS-B LoRA start from the MNLI LoRA of the same model and seed), end to end on
tiny-roberta: the checkpoint names its source record, a smoke checkpoint is refused as an init unless
train.allow_smoke_init=true, and a dependent cell's fingerprint follows its source's, so re-running MNLI with another
config makes the cells that started from it not done.

MNLI is not in ../shared/data: the MNLI cell reads a 24-row MNLI file made here from RTE sentences (the chain's
mechanism, not its accuracy, is under test), in a data folder that links everything else to REPRO_DATA_DIR."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import pytest

from repro import records
from repro.cell import resolve_cell
from repro.errors import ReproError
from repro.methods.checkpoint import read_metadata
from repro.run import run_cell

FAST = ["train.max_steps=2", "data.max_train_samples=16", "data.max_eval_samples=16", "train.global_batch_size=8"]


def mnli_data_dir(shared: str, tmp_path: Path) -> Path:
    root = tmp_path / "data"
    (root / "glue" / "MNLI").mkdir(parents=True)
    for p in Path(shared).iterdir():
        if p.name != "glue":
            os.symlink(p, root / p.name)
    for p in (Path(shared) / "glue").iterdir():
        os.symlink(p, root / "glue" / p.name)
    with open(Path(shared) / "glue" / "RTE" / "train.tsv", encoding="utf-8") as f:
        rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))[1:25]
    labels = ("entailment", "neutral", "contradiction")
    lines = ["sentence1\tsentence2\tgold_label"] + [f"{r[1]}\t{r[2]}\t{labels[i % 3]}" for i, r in enumerate(rows)]
    for name in ("train.tsv", "dev_matched.tsv", "dev_mismatched.tsv"):
        (root / "glue" / "MNLI" / name).write_text("\n".join(lines) + "\n")
    return root


def test_mnli_chain_end_to_end(compose_config, data_dir, tmp_path):
    data = mnli_data_dir(data_dir, tmp_path)

    def cell(overrides):
        overrides = [
            "+table=glue",
            "model=tiny-roberta",
            "method=lora",
            "seed=0",
            *FAST,
            f"paths.data_dir={data}",
            *overrides,
        ]
        return resolve_cell(compose_config(overrides), overrides)

    mnli = cell(["task=mnli"])
    source = run_cell(mnli)
    assert source["status"] == "ok", source.get("error")
    weights = records.weights_path(mnli)
    meta = read_metadata(weights)
    assert meta["source_fingerprint"] == source["fingerprint"] == records.fingerprint(mnli)
    assert json.loads(meta["steps"]) == source["steps"] == 2
    assert "train.max_steps=2" in json.loads(meta["smoke"])

    # a smoke checkpoint is not an init for a table cell ...
    rte_overrides = ["task=rte", f"train.init_from={weights}"]
    with pytest.raises(ReproError, match=r"smoke run .*train.allow_smoke_init=true"):
        run_cell(cell(rte_overrides))
    assert not records.record_path(cell(rte_overrides)).exists()

    # ... unless asked for: the dependent cell's fingerprint includes its source's
    rte = cell([*rte_overrides, "train.allow_smoke_init=true"])
    dependent = run_cell(rte)
    assert dependent["status"] == "ok", dependent.get("error")
    assert records.finished_record(rte) is not None
    assert records.fingerprint(rte) == records.fingerprint(cell(rte_overrides))  # the switch is not in the fingerprint

    # re-running MNLI with another config changes its checkpoint's fingerprint: RTE is no longer done
    mnli2 = cell(["task=mnli", "train.learning_rate=1e-3"])
    assert run_cell(mnli2)["status"] == "ok" and records.weights_path(mnli2) == weights
    assert read_metadata(weights)["source_fingerprint"] == records.fingerprint(mnli2) != records.fingerprint(mnli)
    assert records.fingerprint(rte) != dependent["fingerprint"]
    assert records.finished_record(rte) is None
