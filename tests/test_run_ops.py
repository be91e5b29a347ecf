"""Operations of the runner: torchrun cells, the cell lock without flock, checks before training (GPU, Java, hub
datasets)."""

import errno
import json
import logging
import os
import shutil
import subprocess
import sys

import pytest
import torch

from repro import PROJECT_ROOT, records
from repro.cell import resolve_cell
from repro.errors import DataFileMissing, ReproError
from repro.run import run_cell


def cell(compose_config, overrides):
    return resolve_cell(compose_config(overrides), overrides)


def written_outside_logs(root):
    return [p for p in root.rglob("*") if p.is_file() and "logs" not in p.relative_to(root).parts]


# ------------------------------------------------------------------ torchrun


@pytest.mark.skipif(not torch.distributed.is_available() or shutil.which("torchrun") is None, reason="no torchrun")
def test_torchrun_two_processes_write_one_ok_record(tmp_path, data_dir):
    cmd = [
        shutil.which("torchrun"),
        "--nproc_per_node=2",
        "-m",
        "repro.run",
        "+table=glue",
        "model=tiny-roberta",
        "method=lora",
        "task=rte",
        "train.max_steps=4",
        f"paths.results_dir={tmp_path}",
        f"paths.log_dir={tmp_path}/logs",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    found = sorted(tmp_path.rglob("seed*.json"))
    assert [p.relative_to(tmp_path).as_posix() for p in found] == ["glue/tiny-roberta/lora/rte/seed0.json"]
    rec = json.loads(found[0].read_text())
    assert rec["status"] == "ok" and rec["world_size"] == 2 and rec["batch"]["world_size"] == 2
    assert rec["batch"]["per_device"] * rec["batch"]["accumulation"] * 2 == rec["config"]["train"]["global_batch_size"]
    assert rec["steps"] == 4
    assert (found[0].parent / "seed0.safetensors").exists()
    assert not (found[0].parent / "checkpoints" / "seed0").exists()


# ------------------------------------------------------------------ the cell lock without flock


def test_cell_lock_falls_back_to_a_lock_file_without_flock(compose_config, tmp_path, monkeypatch, caplog):
    def no_flock(fd, op):
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

    monkeypatch.setattr(records.fcntl, "flock", no_flock)
    monkeypatch.setattr(records, "_warned_no_flock", False)
    cfg = compose_config(["model=tiny-roberta", "task=rte"])
    pid_file = records.lock_path(cfg).with_name(records.lock_path(cfg).name + ".pid")
    with caplog.at_level(logging.WARNING, logger="repro.records"):
        with records.cell_lock(cfg) as held:
            assert held == pid_file
            holder = json.loads(pid_file.read_text())
            assert holder["pid"] == os.getpid() and holder["host"]
            with pytest.raises(records.CellBusy, match="no flock on this filesystem"):
                with records.cell_lock(cfg):  # a second job of the cell, while the first runs
                    pass
        assert not pid_file.exists()  # released
        with records.cell_lock(cfg):  # and taken again
            pass
    warnings = [r for r in caplog.records if "flock is not supported" in r.getMessage()]
    assert len(warnings) == 1  # one clear warning per process

    # a lock file left by a dead process on this host is stale: taken over
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid_file.write_text(json.dumps({"pid": int(dead.stdout), "host": holder["host"], "slurm_job": None}))
    with records.cell_lock(cfg):
        assert json.loads(pid_file.read_text())["pid"] == os.getpid()
    # one on another host is not: busy, and the message says what to delete
    pid_file.write_text(json.dumps({"pid": 1, "host": "elsewhere", "slurm_job": "1234"}))
    with pytest.raises(records.CellBusy, match="delete the file"):
        with records.cell_lock(cfg):
            pass
    # unless it is this very SLURM job, requeued onto another node
    monkeypatch.setenv("SLURM_JOB_ID", "1234")
    with records.cell_lock(cfg):
        pass
    assert not pid_file.exists()


def test_cell_lock_other_flock_errors_still_raise(compose_config, monkeypatch):
    def bad_fd(fd, op):
        raise OSError(errno.EBADF, os.strerror(errno.EBADF))

    monkeypatch.setattr(records.fcntl, "flock", bad_fd)
    with pytest.raises(OSError):
        with records.cell_lock(compose_config(["model=tiny-roberta", "task=rte"])):
            pass


# ------------------------------------------------------------------ checks before training


def test_paper_model_refuses_cpu_unless_allowed(compose_config, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    overrides = ["+table=glue", "model=roberta-base", "method=lora", "task=cola"]
    with pytest.raises(ReproError, match="allow_cpu=true"):
        run_cell(cell(compose_config, overrides))
    assert written_outside_logs(tmp_path) == []
    # allowed: past the check (offline, the hub model is then unavailable: a different error)
    with pytest.raises(ReproError) as err:
        run_cell(cell(compose_config, [*overrides, "allow_cpu=true"]))
    assert "allow_cpu" not in str(err.value)
    # allow_cpu does not change what the cell computes: not in the fingerprint
    assert records.fingerprint(cell(compose_config, overrides)) == records.fingerprint(
        cell(compose_config, [*overrides, "allow_cpu=true"])
    )


@pytest.mark.parametrize(
    "overrides",
    [
        ["+table=glue", "model=minilm", "method=lora", "task=rte"],  # a stand-in of a paper table
        ["+table=glue_cpu", "model=minilm", "method=lora", "task=rte"],  # a CPU table
        ["model=roberta-base", "method=lora", "task=rte"],  # the adhoc table
    ],
)
def test_cpu_check_leaves_stand_ins_cpu_tables_and_adhoc_alone(compose_config, monkeypatch, overrides):
    from repro.run import check_cpu_allowed

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    check_cpu_allowed(cell(compose_config, overrides))


def test_cli_paper_cell_on_cpu_exits_2_naming_allow_cpu(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present: the cell is allowed")
    env = {**os.environ, "REPRO_RESULTS_DIR": str(tmp_path), "REPRO_LOG_DIR": str(tmp_path / "logs")}
    proc = subprocess.run(
        [sys.executable, "-m", "repro.run", "+table=glue", "model=roberta-large", "method=lora", "task=cola"],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2 and "allow_cpu=true" in proc.stderr
    assert written_outside_logs(tmp_path) == []


def test_meteor_cell_without_java_fails_before_training(compose_config, tmp_path, data_dir, monkeypatch):
    import repro.run
    from repro.tasks import generation

    real_which = shutil.which
    monkeypatch.setattr(
        repro.run.shutil, "which", lambda name, *a, **k: None if name == "java" else real_which(name, *a, **k)
    )
    trained = []
    monkeypatch.setattr(generation, "train_and_score", lambda *a, **k: trained.append(1))
    overrides = [
        "+table=e2e",
        "model=tiny-gpt2",
        "method=ft",
        "task=e2e",
        "train.max_steps=1",
        "decode.max_inputs=1",
        "data.max_train_samples=8",
        "data.max_eval_samples=4",
    ]
    with pytest.raises(ReproError, match="Java") as err:
        run_cell(cell(compose_config, overrides))
    assert "default-jre-headless" in str(err.value)
    assert trained == [] and written_outside_logs(tmp_path) == []


def test_nlg_from_the_hub_names_prepare_data(compose_config, data_dir, monkeypatch):
    from repro.data import nlg as data_nlg
    from repro.models import load_tokenizer
    from repro.tasks.generation import load_data

    def no_scripts(*args, **kwargs):
        raise RuntimeError("Dataset scripts are no longer supported, but found e2e_nlg.py")

    monkeypatch.setattr(data_nlg.datasets, "load_dataset", no_scripts)
    cfg = cell(compose_config, ["+table=e2e", "model=tiny-gpt2", "method=ft", "task=e2e"])
    tokenizer = load_tokenizer(cfg.model, data_dir)
    cfg.paths.data_dir = None  # as with REPRO_DATA_DIR unset
    with pytest.raises(DataFileMissing) as err:
        load_data(cfg, tokenizer)
    text = str(err.value)
    assert "scripts/prepare_data.py" in text and "REPRO_DATA_DIR" in text and "loading script" in text
    monkeypatch.undo()
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(DataFileMissing, match="scripts/prepare_data.py"):  # offline: the hub is unreachable
        load_data(cfg, tokenizer)


def test_decoding_shards_reassemble_in_order():
    from repro import dist

    items = list(range(11))
    for world in (1, 2, 3, 16):
        assert dist.unshard([items[r::world] for r in range(world)], len(items)) == items


def test_trainer_keeps_one_checkpoint_per_cell(compose_config, tmp_path):
    from repro.train import training_arguments

    cfg = cell(compose_config, ["+table=glue", "model=tiny-roberta", "method=lora", "task=rte"])
    assert training_arguments(cfg, tmp_path / "ckpt", "eval_dev_accuracy").save_total_limit == 1
