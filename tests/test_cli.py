"""The command line every command shares (repro/cli.py, repro/paths.py): bad input of every kind -- a missing file, a
file that cannot be read as what is expected (an image for a record, a folder for a file, broken JSON), an output
folder that cannot be created, an unknown name or flag -- is refused by every entry point with one line `error: ...`
and exit 2, writing nothing; records that cannot be read are named by every reader, and --strict refuses them; the
old flag spellings still work with one line on stderr; `--help` answers before the heavy libraries load; every
command is a console script."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tomllib
from importlib import import_module
from pathlib import Path

import pytest

from repro import PROJECT_ROOT, analyze, cli, paths, plots, records, score, serve, tables
from repro.bench.__main__ import main as bench_main
from repro.cell import check_paths, resolve_cell
from repro.claims import report as claims_report
from repro.params import main as params_main
from repro.plan.__main__ import main as plan_main
from repro.results import UnreadableRecord, load_record, load_records

PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(64)


def write_record(root: Path, task: str = "rte", seed: int = 0, score: float = 0.6, table: str = "glue") -> Path:
    """A minimal ok record of tiny-roberta LoRA (a stand-in row of table glue)."""
    path = root / table / "tiny-roberta" / "lora" / task / f"seed{seed}.json"
    records.write_json_atomic(
        path,
        {
            "status": "ok",
            "table": table,
            "model": "tiny-roberta",
            "method": "lora",
            "variant": "default",
            "task": task,
            "seed": seed,
            "metrics": {"accuracy": score},
            "trainable_params": 3048,
            "adapter_params": 2048,
            "config": {"task": {"name": task, "main_metric": "accuracy"}},
            "fingerprint": "x",
            "provenance": {"git_commit": "c0ffee", "git_dirty": False},
        },
    )
    return path


@pytest.fixture
def bad(tmp_path) -> dict[str, Path]:
    """Inputs of every wrong kind, and folders that exist."""
    (tmp_path / "image.png").write_bytes(PNG)
    (tmp_path / "folder").mkdir()
    (tmp_path / "broken.json").write_text('{"status": "ok", ')
    (tmp_path / "list.json").write_text("[1, 2]")
    (tmp_path / "text.txt").write_text("a b c\n")
    results = tmp_path / "results"
    write_record(results)
    return {
        "missing": tmp_path / "missing",
        "png": tmp_path / "image.png",
        "folder": tmp_path / "folder",
        "broken": tmp_path / "broken.json",
        "list": tmp_path / "list.json",
        "text": tmp_path / "text.txt",
        "results": results,
        "under_file": tmp_path / "image.png" / "out",  # cannot be created: its parent is a file
        "out": tmp_path / "out",  # can be created: must not be, by a refused command
    }


# ---------------------------------------------------------------- every entry point, every kind of bad input
MAINS = {
    "tables": tables.main,
    "claims": claims_report.main,
    "plots": plots.main,
    "analyze": analyze.main,
    "score": score.main,
    "serve": serve.main,
    "params": params_main,
    "bench": bench_main,
    "plan": plan_main,
}

CASES = [
    # (command, argv with {placeholders} from `bad`, what the one line says)
    ("tables", ["nope", "--results-dir", "{results}"], "table=nope: no such table (conf/table/nope.yaml); tables: "),
    ("tables", ["glue", "--results-dir", "{missing}", "--out-dir", "{out}"], "--results-dir={missing}: no such folder"),
    (
        "tables",
        ["glue", "--results-dir", "{png}", "--out-dir", "{out}"],
        "--results-dir={png}: is a file, not a folder",
    ),
    ("tables", ["glue", "--results-dir", "{results}", "--out-dir", "{under_file}"], "--out-dir={under_file}: is under"),
    ("tables", ["glue", "--results-dir", "{results}", "--colour"], "unrecognized arguments: --colour; see "),
    ("claims", ["--results-dir", "{missing}", "--out-dir", "{out}"], "--results-dir={missing}: no such folder"),
    ("claims", ["--results-dir", "{results}", "--out-dir", "{png}"], "--out-dir={png}: is a file"),
    ("plots", ["nope", "--results-dir", "{results}", "--out-dir", "{out}"], "table=nope: no such table"),
    (
        "plots",
        ["glue", "--results-dir", "{folder}/x", "--out-dir", "{out}"],
        "--results-dir={folder}/x: no such folder",
    ),
    ("analyze", ["ablation", "nope"], "argument table: invalid choice: 'nope'"),
    ("analyze", ["ablation", "rank", "--results-dir", "{png}", "--out-dir", "{out}"], "--results-dir={png}: is a file"),
    (
        "analyze",
        ["report", "--table", "nope", "--results-dir", "{results}", "--out-dir", "{out}"],
        "--table=nope: no such table; tables: ",
    ),
    (
        "analyze",
        ["subspace", "--a", "{png}", "--b", "{png}", "--out-dir", "{out}"],
        "--a={png}: not a safetensors file",
    ),
    (
        "analyze",
        ["spectrum", "--adapter", "{folder}", "--out-dir", "{out}"],
        "--adapter={folder}: is a folder, not a file",
    ),
    ("analyze", ["amplification", "--adapter", "{missing}", "--out-dir", "{out}"], "--adapter={missing}: no such file"),
    ("score", ["e2e", "--refs", "{missing}", "--hyps", "{text}"], "--refs={missing}: no such file"),
    ("score", ["e2e", "--refs", "{png}", "--hyps", "{text}"], "--refs={png}: not a text file (not UTF-8 text"),
    ("score", ["e2e", "--refs", "{text}", "--hyps", "{folder}"], "--hyps={folder}: is a folder, not a file"),
    ("score", ["nope", "--refs", "{text}", "--hyps", "{text}"], "argument task: invalid choice: 'nope'"),
    ("serve", ["{missing}", "{missing}", "--out-dir", "{out}"], "record={missing}: no such file"),
    ("serve", ["{png}", "{png}", "--out-dir", "{out}"], "record={png}: not a JSON file (not UTF-8 text"),
    ("serve", ["{folder}", "{folder}", "--out-dir", "{out}"], "record={folder}: is a folder, not a file"),
    ("serve", ["{broken}", "{broken}", "--out-dir", "{out}"], "record={broken}: not a JSON file (JSONDecodeError"),
    (
        "serve",
        ["{list}", "{list}", "--out-dir", "{out}"],
        "record={list}: not a JSON file (a JSON list, not an object)",
    ),
    ("serve", ["{broken}", "--out-dir", "{out}"], "give at least two records to combine"),
    ("serve", ["{text}", "{text}", "--weights", "1", "inf", "--out-dir", "{out}"], "--weights=[1.0, inf]: one finite"),
    ("serve", ["{text}", "{text}", "--out-dir", "{under_file}"], "--out-dir={under_file}: is under"),
    ("params", ["--format", "yaml"], "argument --format: invalid choice: 'yaml'"),
    ("bench", ["nope"], "argument what: invalid choice: 'nope'"),
    (
        "bench",
        ["latency", "--quick", "--device", "cpu", "--out-dir", "{under_file}"],
        "--out-dir={under_file}: is under",
    ),
    (
        "bench",
        ["all", "--quick", "--device", "cpu", "--name", "x", "--out-dir", "{out}"],
        "--name=x: names the output of one",
    ),
    ("plan", ["model=minilm"], "give a table, +table=<name> (dart, e2e,"),
]


@pytest.mark.parametrize("command,argv,says", CASES, ids=[f"{c}-{i}" for i, (c, _, _) in enumerate(CASES)])
def test_every_entry_point_refuses_bad_input_in_one_line(command, argv, says, bad, capsys, monkeypatch):
    monkeypatch.delenv("REPRO_DEBUG", raising=False)
    argv = [a.format(**bad) for a in argv]
    assert MAINS[command](argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: "), err
    assert says.format(**bad) in err, err
    assert not bad["out"].exists()  # nothing written
    assert bad["png"].read_bytes() == PNG


def test_repro_debug_shows_the_traceback(bad, monkeypatch):
    monkeypatch.setenv("REPRO_DEBUG", "1")
    with pytest.raises(paths.PathError):
        tables.main(["glue", "--results-dir", str(bad["missing"])])


@pytest.mark.parametrize(
    "argv,says",
    [
        (["+table=nope"], "error: In 'config': Could not find 'table/nope'; Available options in 'table': dart,"),
        (
            ["+table=glue", "model=nope"],
            "error: In 'config': Could not find 'model/nope'; Available options in 'model'",
        ),
    ],
)
def test_the_planner_refuses_what_hydra_cannot_compose_in_one_line(argv, says):
    env = {k: v for k, v in os.environ.items() if k != "REPRO_DEBUG"}
    proc = subprocess.run(
        [sys.executable, "-m", "repro.plan", *argv], cwd=PROJECT_ROOT, env=env, capture_output=True, text=True
    )
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and proc.stderr.startswith(says), proc.stderr


def test_a_hydra_app_that_cannot_create_its_folder_is_one_line(capsys, tmp_path):
    def app():
        (tmp_path / "a-file").write_text("")
        Path(tmp_path / "a-file" / "runs").mkdir(parents=True)  # what Hydra does with hydra.run.dir

    with pytest.raises(SystemExit) as exit_:
        cli.hydra_command(app)
    assert exit_.value.code == 2
    assert capsys.readouterr().err == f"error: {tmp_path / 'a-file' / 'runs'}: Not a directory\n"


# ---------------------------------------------------------------- paths
def test_an_output_folder_is_tested_and_nothing_is_left(tmp_path):
    target = tmp_path / "a" / "b" / "c"
    assert paths.output_dir(target, "--out-dir") == target and not (tmp_path / "a").exists()
    (tmp_path / "f").write_text("x")
    with pytest.raises(paths.PathError, match=r"^--out-dir=.*/f/x: is under .*/f, which is a file"):
        paths.output_dir(tmp_path / "f" / "x", "--out-dir")
    with pytest.raises(paths.PathError, match=r"^--out-dir=/proc/repro-test/x: cannot be created"):
        paths.output_dir("/proc/repro-test/x", "--out-dir")  # a filesystem that refuses new folders, even to root


def test_a_cell_checks_its_paths_before_anything(compose_config, tmp_path):
    """Results and log folders that cannot be created, a data folder that does not exist, an init_from that is a folder
    or not a checkpoint: one line naming the field, before the cell reads its record or loads anything."""
    (tmp_path / "image.png").write_bytes(PNG)
    base = ["+table=glue", "model=tiny-roberta", "method=lora", "task=rte"]
    for override, says in [
        (f"paths.results_dir={tmp_path}/image.png/r", "paths.results_dir="),
        (f"paths.log_dir={tmp_path}/image.png/l", "paths.log_dir="),
        (f"paths.data_dir={tmp_path}/nothing", "paths.data_dir="),
        (f"train.init_from={tmp_path}", "train.init_from="),
        (f"train.init_from={tmp_path}/image.png", "train.init_from="),
        (f"train.init_from={tmp_path}/mnli.safetensors", "train.init_from="),
    ]:
        cfg = resolve_cell(compose_config([*base, override]), [*base, override])
        with pytest.raises(paths.PathError) as err:
            check_paths(cfg)
        assert str(err.value).startswith(says) and "\n" not in str(err.value), str(err.value)
    assert "run the cell that writes it first" in str(err.value)  # a missing init_from says what writes it


# ---------------------------------------------------------------- records that cannot be read: named, or --strict
@pytest.fixture
def with_unreadable(tmp_path) -> tuple[Path, Path]:
    results = tmp_path / "results"
    write_record(results, "rte", 0, 0.6)
    broken = results / "glue" / "tiny-roberta" / "lora" / "rte" / "seed1.json"
    broken.write_text('{"status": "ok", "metrics": ')  # a record cut off mid-write
    return results, broken


def test_tables_name_an_unreadable_record_and_strict_refuses_it(with_unreadable, tmp_path, capsys):
    results, broken = with_unreadable
    assert tables.main(["glue", "--results-dir", str(results), "--out-dir", str(tmp_path / "t")]) == 0
    out, err = capsys.readouterr()
    assert f"warning: cannot read record {broken} (JSONDecodeError: " in err
    md = (tmp_path / "t" / "glue.md").read_text()
    assert "Records that could not be read (1), in no row above:" in md and f"- {broken}: JSONDecodeError: " in md
    assert out == md
    assert tables.main(["glue", "--results-dir", str(results), "--out-dir", str(tmp_path / "s"), "--strict"]) == 2
    err = capsys.readouterr().err
    assert (
        err.startswith(f"error: 1 record(s) cannot be read (--strict): {broken} (JSONDecodeError")
        and err.count("\n") == 1
    )
    assert not (tmp_path / "s").exists()


def test_a_table_without_unreadable_records_gains_no_line(tmp_path):
    results = tmp_path / "results"
    write_record(results)
    assert "could not be read" not in tables.render("glue", results, tmp_path / "t")


def test_claims_list_an_unreadable_record_and_strict_refuses_it(with_unreadable, tmp_path, capsys):
    results, broken = with_unreadable
    (results / "bench").mkdir()
    (results / "bench" / "latency.json").write_bytes(PNG)  # a benchmark file that is no JSON: listed too
    assert claims_report.main(["--results-dir", str(results), "--out-dir", str(tmp_path / "c")]) == 0
    err = capsys.readouterr().err
    assert f"warning: cannot read record {broken} (JSONDecodeError" in err
    md = (tmp_path / "c" / "claims.md").read_text()
    assert "Files that could not be read (2), left out of every claim below:" in md
    assert (
        f"- `{broken}`: JSONDecodeError" in md and f"- `{results / 'bench' / 'latency.json'}`: UnicodeDecodeError" in md
    )
    data = json.loads((tmp_path / "c" / "claims.json").read_text())
    assert [p for p, _ in data["unreadable"]] == [str(broken), str(results / "bench" / "latency.json")]
    assert claims_report.main(["--results-dir", str(results), "--out-dir", str(tmp_path / "s"), "--strict"]) == 2
    assert capsys.readouterr().err.startswith("error: 2 record(s) cannot be read (--strict): ")
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize(
    "run",
    [
        lambda r, o: plots.main(["glue", "--results-dir", r, "--out-dir", o, "--strict"]),
        lambda r, o: analyze.main(["ablation", "rank", "--results-dir", r, "--out-dir", o, "--strict"]),
        lambda r, o: analyze.main(["report", "--results-dir", r, "--out-dir", o, "--strict"]),
    ],
    ids=["plots", "analyze-ablation", "analyze-report"],
)
def test_other_readers_refuse_unreadable_records_with_strict(run, tmp_path, capsys):
    broken = tmp_path / "results" / "rank" / "minilm" / "lora.qv_r8" / "sst2" / "seed0.json"
    broken.parent.mkdir(parents=True)
    broken.write_bytes(PNG)
    (tmp_path / "results" / "glue" / "x" / "y" / "z").mkdir(parents=True)
    (tmp_path / "results" / "glue" / "x" / "y" / "z" / "seed0.json").write_bytes(PNG)
    assert run(str(tmp_path / "results"), str(tmp_path / "out")) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: 1 record(s) cannot be read (--strict): ") and "UnicodeDecodeError" in err, err
    assert not (tmp_path / "out").exists()


def test_one_record_is_read_or_refused_with_its_path():
    path = PROJECT_ROOT / "results" / "glue_cpu" / "minilm" / "lora" / "rte" / "seed0.json"
    assert load_record(path).ok
    with pytest.raises(UnreadableRecord, match=r"seed9\.json: cannot be read as a record \(FileNotFoundError"):
        load_record(path.with_name("seed9.json"))


def test_the_sweep_names_an_unreadable_record_instead_of_running_over_it(compose_config):
    from hydra_plugins.repro_table_sweeper.table_sweeper import unreadable_record

    overrides = ["+table=glue", "model=tiny-roberta", "method=lora", "task=rte"]
    cfg = resolve_cell(compose_config(overrides), overrides)
    assert unreadable_record(cfg) is None  # no record: not done, nothing to say
    path = records.record_path(cfg)
    path.parent.mkdir(parents=True)
    path.write_text("{")
    assert unreadable_record(cfg).startswith(f"{path}: cannot be read as a record (JSONDecodeError")
    assert load_records(path.parents[4])[1][0][0] == path


# ---------------------------------------------------------------- one flag convention; the old spellings for a release
def test_old_flag_spellings_work_with_a_deprecation_line(tmp_path, capsys):
    results = tmp_path / "results"
    write_record(results)
    assert tables.main(["glue", "--results", str(results), "--out", str(tmp_path / "t")]) == 0
    err = capsys.readouterr().err.splitlines()
    assert err == [
        "warning: --results is deprecated and goes in the next release; use --results-dir",
        "warning: --out is deprecated and goes in the next release; use --out-dir",
    ]
    assert (tmp_path / "t" / "glue.md").exists()
    # claims' --out was a file stem: it keeps meaning one
    assert claims_report.main(["--results-dir", str(results), "--out", str(tmp_path / "c" / "mine")]) == 0
    assert (tmp_path / "c" / "mine.md").exists() and (tmp_path / "c" / "mine.json").exists()
    assert "use --out-dir DIR" in capsys.readouterr().err


@pytest.mark.parametrize(
    "command,sub,flags",
    [
        ("tables", [], ("--results-dir DIR", "--out-dir DIR", "--strict")),
        ("claims", [], ("--results-dir DIR", "--out-dir DIR", "--strict")),
        ("plots", [], ("--results-dir DIR", "--out-dir DIR", "--strict")),
        ("analyze", ["report"], ("--results-dir DIR", "--out-dir DIR", "--strict")),
        ("analyze", ["ablation"], ("--results-dir DIR", "--out-dir DIR", "--strict")),
        ("analyze", ["subspace"], ("--out-dir DIR",)),
        ("serve", [], ("--out-dir DIR",)),
        ("bench", [], ("--out-dir DIR",)),
    ],
)
def test_one_flag_convention(command, sub, flags, capsys):
    """--results-dir DIR for the records' root, --out-dir DIR for a folder written, --strict: the same words in every
    command's usage text; the old spellings are not shown."""
    with pytest.raises(SystemExit) as exit_:
        MAINS[command]([*sub, "--help"])
    text = capsys.readouterr().out
    assert exit_.value.code == 0 and all(f in text for f in flags), text
    assert not re.search(r"--(results|out)(?![-\w])", text), text


# ---------------------------------------------------------------- console scripts, and --help before heavy imports
def test_every_command_is_a_console_script():
    scripts = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert set(scripts) == {f"repro-{name}" for name in [*MAINS, "run"]}
    for name, target in scripts.items():
        module, _, function = target.partition(":")
        assert callable(getattr(import_module(module), function)), name


def test_help_answers_before_torch_loads():
    """Each command's --help, in a fresh interpreter: torch, transformers and PEFT are not imported (serve defines its
    nn.Modules at the top, so torch alone is allowed there)."""
    code = """
import sys
from importlib import import_module
heavy = ("torch", "transformers", "peft", "bitsandbytes", "datasets")
for module, allowed in %r:
    main = import_module(module).main
    try:
        main(["--help"])
    except SystemExit as exit_:
        assert exit_.code == 0, (module, exit_.code)
    loaded = [m for m in heavy if m in sys.modules and m not in allowed]
    assert not loaded, (module, loaded)
print("ok")
"""
    commands = [
        ("repro.tables", ()),
        ("repro.claims.report", ()),
        ("repro.analyze", ()),
        ("repro.score", ()),
        ("repro.params", ()),
        ("repro.bench.__main__", ()),
        ("repro.plan.__main__", ()),
        ("repro.plots", ()),
        ("repro.serve", ("torch",)),  # last: torch stays loaded
    ]
    proc = subprocess.run(
        [sys.executable, "-c", code % (commands,)], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr[-2000:]


def test_prog_is_the_console_script_or_python_m(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["/venv/bin/repro-tables"])
    assert cli.prog("tables") == "repro-tables"
    monkeypatch.setattr(sys, "argv", ["/x/repro/tables.py"])
    assert cli.prog("tables") == "python -m repro.tables"
