"""scripts/prepare_data.py writes GLUE in the layout repro.data.glue reads: hub data and tsv data meet in one loader."""

import importlib.util

import datasets
import pytest

from repro import PROJECT_ROOT
from repro.config import load_group
from repro.data.glue import load_split

spec = importlib.util.spec_from_file_location("prepare_data", PROJECT_ROOT / "scripts" / "prepare_data.py")
prepare_data = importlib.util.module_from_spec(spec)
spec.loader.exec_module(prepare_data)

HUB_ROWS = {
    "mnli": {
        "premise": ["A man eats.", "Two dogs run."],
        "hypothesis": ["Someone eats.", "Cats sleep."],
        "label": [0, 2],
    },
    "cola": {"sentence": ["The book was read.", "Book the read was."], "label": [1, 0]},
    "mrpc": {"sentence1": ['He said " yes " .', "A b ."], "sentence2": ["He agreed .", "C d ."], "label": [1, 0]},
    "stsb": {"sentence1": ["A cat.", "A dog."], "sentence2": ["A kitten.", "A car."], "label": [4.75, 0.5]},
}


@pytest.mark.parametrize("name", sorted(HUB_ROWS))
def test_hub_rows_round_trip_through_the_local_loader(name, tmp_path, monkeypatch):
    hub = datasets.Dataset.from_dict(HUB_ROWS[name])
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: hub)
    prepare_data.write_glue_task(name, tmp_path)
    task = load_group("task", name)
    for split in task.splits:
        local = load_split(task, split, str(tmp_path))
        assert local.to_dict() == {k: HUB_ROWS[name][k] for k in local.column_names}
