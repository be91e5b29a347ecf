"""Malformed local data files stop the cell before training, naming the file, the line and what was expected.

Each case copies only the file it breaks (from the offline data folder) into a data folder under tmp_path."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from repro import CONF_DIR, PROJECT_ROOT
from repro.data.glue import load_split
from repro.data.nlg import read_dart, read_e2e, read_webnlg
from repro.errors import DataFileInvalid, ReproError


def task_cfg(name):
    return OmegaConf.load(CONF_DIR / "task" / f"{name}.yaml")


def copy_lines(src: Path, dst: Path, edit=None) -> Path:
    """dst = src with `edit(lines)` applied to its lines (bytes, newline kept)."""
    lines = src.read_bytes().splitlines(keepends=True)
    if edit:
        lines = edit(lines)
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_bytes(b"".join(lines))
    return dst


def set_line(n, new: bytes):
    def edit(lines):
        lines[n - 1] = new
        return lines

    return edit


def glue_case(data_dir, tmp_path, glue_dir, split_file, edit):
    out = tmp_path / "data"
    copy_lines(Path(data_dir) / "glue" / glue_dir / split_file, out / "glue" / glue_dir / split_file, edit)
    return str(out), out / "glue" / glue_dir / split_file


def rte_row(label: bytes) -> bytes:
    return b"7\tA man sleeps.\tSomeone sleeps.\t" + label + b"\n"


# (task, file, edit, line, words in the message besides file and line)
GLUE_CASES = [
    pytest.param(
        "rte",
        "RTE",
        "dev.tsv",
        set_line(5, b"7\tA man sleeps.\n"),
        5,
        ["2 field(s)", "4 tab-separated fields, as the header has"],
        id="rte-missing-columns",
    ),
    pytest.param(
        "rte",
        "RTE",
        "dev.tsv",
        set_line(1, b"index\tsentence1\tsentence2\tgold\n"),
        1,
        ["header lacks column(s) 'label'", "header line naming the columns sentence1, sentence2, label"],
        id="rte-wrong-header",
    ),
    pytest.param(
        "rte",
        "RTE",
        "dev.tsv",
        set_line(3, rte_row(b"entailment\xff")),
        3,
        ["not UTF-8", "b'\\xff'", "expected UTF-8 text"],
        id="rte-undecodable",
    ),
    pytest.param("rte", "RTE", "dev.tsv", lambda lines: [], 1, ["the file is empty", "header line"], id="rte-empty"),
    pytest.param("rte", "RTE", "dev.tsv", lambda lines: lines[:1], 2, ["no data rows"], id="rte-header-only"),
    pytest.param(
        "rte",
        "RTE",
        "dev.tsv",
        set_line(4, rte_row(b"maybe")),
        4,
        ["label 'maybe' is not in the task's label set", "one of entailment, not_entailment or its id 0..1"],
        id="rte-label-outside-set",
    ),
    pytest.param(
        "mrpc",
        "MRPC",
        "dev.tsv",
        set_line(2, b"2\t1\t2\tOne .\tTwo .\n"),
        2,
        ["label '2'", "one of not_equivalent, equivalent or its id 0..1"],
        id="mrpc-label-id-outside-set",
    ),
    pytest.param(
        "cola",
        "CoLA",
        "dev.tsv",
        set_line(6, b"gj04\t1\n"),
        6,
        ["2 field(s)", "at least 4 tab-separated fields", "without a header"],
        id="cola-missing-columns",
    ),
    pytest.param(
        "stsb",
        "STS-B",
        "dev.tsv",
        set_line(9, b"0\tmain-captions\tMSRvid\t2012test\t0001\tnone\tnone\tA man.\tA man.\thigh\n"),
        9,
        ["label 'high' is not a number", "numeric score for task=stsb"],
        id="stsb-score-not-a-number",
    ),
]


@pytest.mark.parametrize("task,glue_dir,split_file,edit,line,words", GLUE_CASES)
def test_malformed_glue_file_names_file_line_and_expectation(
    data_dir, tmp_path, task, glue_dir, split_file, edit, line, words
):
    out, path = glue_case(data_dir, tmp_path, glue_dir, split_file, edit)
    with pytest.raises(DataFileInvalid) as err:
        load_split(task_cfg(task), "dev", out)
    msg = str(err.value)
    assert isinstance(err.value, ReproError)
    assert msg.startswith(f"{path}, line {line}: "), msg
    assert "; expected " in msg and all(w in msg for w in words), msg
    assert "\n" not in msg


def e2e_case(data_dir, tmp_path, edit):
    return copy_lines(Path(data_dir) / "e2e" / "valid.txt", tmp_path / "e2e" / "valid.txt", edit)


@pytest.mark.parametrize(
    "edit,line,words",
    [
        pytest.param(
            set_line(3, b"name : The Vaults | Type : pub the reference without a separator\n"),
            3,
            ["0 `||` separators", "`meaning representation||reference`"],
            id="no-separator",
        ),
        pytest.param(set_line(2, b"name : X||a ref||another\n"), 2, ["2 `||` separators"], id="two-separators"),
        pytest.param(
            set_line(7, b"||a reference without its MR\n"), 7, ["an empty meaning representation"], id="empty-mr"
        ),
        pytest.param(
            set_line(4, b"name : X | Type : pub||caf\xe9 \n"), 4, ["not UTF-8", "expected UTF-8 text"], id="latin-1"
        ),
        pytest.param(lambda lines: [b"\n"], 1, ["the file is empty"], id="empty"),
    ],
)
def test_malformed_e2e_file(data_dir, tmp_path, edit, line, words):
    path = e2e_case(data_dir, tmp_path, edit)
    with pytest.raises(DataFileInvalid) as err:
        read_e2e(path)
    msg = str(err.value)
    assert msg.startswith(f"{path}, line {line}: ") and "; expected " in msg, msg
    assert all(w in msg for w in words), msg


def test_malformed_json_files(tmp_path):
    bad_json = tmp_path / "dart.json"
    bad_json.write_text('[\n  {"tripleset": [["a", "b", "c"]],\n   "annotations": [{"text": "x"}]\n  },\n  {oops}\n]\n')
    with pytest.raises(DataFileInvalid) as err:
        read_dart(bad_json)
    assert str(err.value).startswith(f"{bad_json}, line 5: not JSON") and "DART json" in str(err.value)

    missing_key = tmp_path / "webnlg.json"
    entry = {
        "category": "Airport",
        "modifiedtripleset": [{"subject": "A", "property": "p", "object": "B"}],
        "lexicalisations": [{"comment": "good", "lex": "A p B."}],
    }
    broken = {k: v for k, v in entry.items() if k != "lexicalisations"}
    missing_key.write_text(json.dumps({"entries": [{"1": entry}, {"2": broken}]}))
    with pytest.raises(DataFileInvalid) as err:
        read_webnlg(missing_key)
    assert str(err.value).startswith(f"{missing_key}: entry 2: missing key 'lexicalisations'; expected WebNLG json")

    short_triple = tmp_path / "dart2.json"
    short_triple.write_text(json.dumps([{"tripleset": [["a", "b"]], "annotations": [{"text": "x"}]}]))
    with pytest.raises(DataFileInvalid, match=r"entry 1: ValueError.*expected DART json"):
        read_dart(short_triple)


def test_real_files_pass(data_dir):
    """The rules accept every offline file as it is (all GLUE splits are covered by test_glue_data)."""
    for name in ("train.txt", "valid.txt", "test.txt"):
        assert read_e2e(Path(data_dir) / "e2e" / name)


def test_cli_bad_glue_file_exits_2_with_one_line_and_writes_nothing(data_dir, tmp_path):
    out = tmp_path / "data"
    shutil.copy(
        Path(data_dir) / "glue" / "RTE" / "dev.tsv", (out / "glue" / "RTE").mkdir(parents=True) or out / "glue" / "RTE"
    )
    bad = copy_lines(
        Path(data_dir) / "glue" / "RTE" / "train.tsv",
        out / "glue" / "RTE" / "train.tsv",
        set_line(12, rte_row(b"contradiction")),
    )
    results = tmp_path / "results"
    env = {
        **os.environ,
        "REPRO_DATA_DIR": str(out),
        "REPRO_RESULTS_DIR": str(results),
        "REPRO_LOG_DIR": str(tmp_path / "logs"),
    }
    proc = subprocess.run(
        [sys.executable, "-m", "repro.run", "+table=glue", "model=minilm", "method=ft", "task=rte"],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0] == (
        f"error: {bad}, line 12: label 'contradiction' is not in the task's label set; "
        "expected a label of task=rte: one of entailment, not_entailment or its id 0..1"
    )
    assert not results.exists()
