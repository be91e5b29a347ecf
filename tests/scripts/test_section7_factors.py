"""scripts/section7_factors.py: a rerun's LoRA factors go beside a committed record only when the rerun's record has
the committed one's fingerprint and metrics; otherwise the cell is named, nothing is written, exit 1."""

import importlib.util
import json
import shutil

from repro import PROJECT_ROOT
from repro.analysis.factors import FACTORS_FORMAT, load_adapter
from repro.methods.checkpoint import read_metadata
from tests.analysis.test_report import _write_cell

spec = importlib.util.spec_from_file_location("section7_factors", PROJECT_ROOT / "scripts" / "section7_factors.py")
section7_factors = importlib.util.module_from_spec(spec)
spec.loader.exec_module(section7_factors)

CELL = "rank/tiny-roberta/lora.qv_r2/sst2"
ARGS = ["--model", "tiny-roberta", "--ranks", "2", "--seeds", "0", "1"]


def trees(tmp_path):
    rerun, committed = tmp_path / "rerun", tmp_path / "results"
    for seed in (0, 1):
        _write_cell(rerun, "qv_r2", 2, seed)
        (committed / CELL).mkdir(parents=True, exist_ok=True)
        shutil.copy(rerun / CELL / f"seed{seed}.json", committed / CELL / f"seed{seed}.json")
    return rerun, committed


def test_equal_reruns_put_their_factors_beside_the_records(tmp_path, capsys):
    rerun, committed = trees(tmp_path)
    records_before = {p.name: p.read_bytes() for p in (committed / CELL).glob("*.json")}
    assert section7_factors.main([str(rerun), "--results-dir", str(committed), "--check", *ARGS]) == 0
    assert not list((committed / CELL).glob("*.safetensors"))  # --check writes nothing
    assert section7_factors.main([str(rerun), "--results-dir", str(committed), *ARGS]) == 0
    for seed in (0, 1):
        kept = committed / CELL / f"seed{seed}.safetensors"
        assert read_metadata(kept)["format"] == FACTORS_FORMAT
        assert set(load_adapter(kept).factors) == set(load_adapter(rerun / CELL / f"seed{seed}.safetensors").factors)
    assert {p.name: p.read_bytes() for p in (committed / CELL).glob("*.json")} == records_before  # records untouched
    assert capsys.readouterr().out.count("equal: ") == 4  # two cells, checked twice


def test_a_rerun_with_other_metrics_writes_nothing(tmp_path, capsys):
    rerun, committed = trees(tmp_path)
    rec = json.loads((committed / CELL / "seed1.json").read_text())
    rec["metrics"]["accuracy"] += 1e-9
    (committed / CELL / "seed1.json").write_text(json.dumps(rec))
    assert section7_factors.main([str(rerun), "--results-dir", str(committed), *ARGS]) == 1
    assert not list((committed / CELL).glob("*.safetensors"))  # not even the equal seed 0
    err = capsys.readouterr().err
    assert "seed1.json: metrics: committed" in err and "nothing written" in err
