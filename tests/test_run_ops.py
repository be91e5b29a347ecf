"""Operations of the runner: torchrun cells, the cell lock without flock, checks before training (GPU, Java, hub
datasets)."""

import errno
import json
import logging
import multiprocessing as mp
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

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
    monkeypatch.setattr(records, "_warned_file_locks", False)
    cfg = compose_config(["model=tiny-roberta", "task=rte"])
    pid_file = records.lock_path(cfg).with_name(records.lock_path(cfg).name + ".pid")
    with caplog.at_level(logging.WARNING, logger="repro.records"):
        with records.cell_lock(cfg) as held:
            assert held == pid_file
            holder = json.loads(pid_file.read_text())
            assert holder["pid"] == os.getpid() and holder["host"]
            with pytest.raises(records.CellBusy, match="a lock file, not flock"):
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
    # one on another host is not (squeue cannot tell here, and the file has no heartbeat): busy, and the message says
    # when it would be taken over
    monkeypatch.setenv("PATH", str(tmp_path / "no-slurm-here"))
    pid_file.write_text(json.dumps({"pid": 1, "host": "elsewhere", "slurm_job": "1234"}))
    with pytest.raises(records.CellBusy, match="taken over once its holder is gone"):
        with records.cell_lock(cfg):
            pass
    # unless it is this very SLURM job, requeued onto another node
    monkeypatch.setenv("SLURM_JOB_ID", "1234")
    with records.cell_lock(cfg):
        pass
    assert not pid_file.exists()


MOUNTS = r"""/dev/vda / ext4 rw,relatime 0 0
server:/export/home /home nfs4 rw,vers=4.2,local_lock=none,addr=10.0.0.1 0 0
server:/export/scratch /scratch nfs rw,vers=3,local_lock=flock,addr=10.0.0.1 0 0
server:/export/all /all nfs rw,vers=3,local_lock=all 0 0
server:/export/old /old nfs rw,vers=3,nolock 0 0
mds@o2ib:/lfs /lustre lustre rw,localflock 0 0
mds@o2ib:/lfs2 /lustre2 lustre rw,flock 0 0
server:/export/with\040space /with\040space nfs rw,local_lock=flock 0 0
"""


@pytest.mark.parametrize(
    "path, local",
    [
        ("/home/me/results", None),
        ("/scratch/me/results", "nfs mounted with local_lock=flock"),
        ("/scratch", "nfs mounted with local_lock=flock"),
        ("/scratchpad/results", None),  # "/" (ext4), not /scratch: a mount point is a whole path component
        ("/all/results", "local_lock=all"),
        ("/old/results", "nolock"),
        ("/lustre/results", "lustre mounted with localflock"),
        ("/lustre2/results", None),
        ("/with space/results", "local_lock=flock"),
        ("/tmp/results", None),
    ],
)
def test_flock_that_locks_one_node_only_is_detected_from_the_mounts(path, local):
    """Issue 31 item 7: NFS local_lock=flock|all (or nolock) and Lustre localflock give each node its own flock."""
    found = records.flock_reaches_other_nodes(path, MOUNTS)
    assert (found is None) if local is None else (local in found), found


def test_where_flock_is_local_only_the_cell_lock_is_a_lock_file(compose_config, tmp_path, monkeypatch):
    mounts = tmp_path / "mounts"
    mounts.write_text(f"/dev/vda / ext4 rw 0 0\nserver:/x {tmp_path} nfs rw,vers=3,local_lock=flock 0 0\n")
    monkeypatch.setattr(records, "MOUNTS", mounts)
    cfg = compose_config(["model=tiny-roberta", "task=rte"])
    with records.cell_lock(cfg) as held:
        assert held.name == "seed0.lock.pid" and json.loads(held.read_text())["pid"] == os.getpid()
        with pytest.raises(records.CellBusy):
            with records.cell_lock(cfg):
                pass
    assert not held.exists()


FAKE_SQUEUE = """#!/bin/sh
# squeue -h -j JOB -o %T
case "$3" in
  111) echo RUNNING ;;
  222) echo "slurm_load_jobs error: Invalid job id specified" >&2; exit 1 ;;
  333) echo TIMEOUT ;;
  *) echo "slurm_load_jobs error: Unable to contact slurm controller (connect failure)" >&2; exit 1 ;;
esac
"""


@pytest.mark.parametrize(
    "job, age_s, taken",
    [
        ("111", 0, False),  # running
        ("222", 0, True),  # ended: squeue no longer knows it
        ("333", 0, True),  # ended: timed out
        ("444", 0, False),  # squeue cannot tell (controller unreachable), the heartbeat is fresh
        ("444", 3600, True),  # no refresh for an hour
        (None, 3600, True),  # not a SLURM job, no refresh for an hour
        (None, 0, False),
    ],
)
def test_a_lock_file_whose_holder_is_gone_is_taken_over(compose_config, tmp_path, monkeypatch, job, age_s, taken):
    """Issue 31 item 7: a holder on another node is gone when SLURM says its job ended (fake squeue) or when it has not
    refreshed its lock file for STALE_AFTER_S; otherwise the cell stays busy."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "squeue").write_text(FAKE_SQUEUE)
    (bin_dir / "squeue").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    cfg = compose_config(["model=tiny-roberta", "task=rte"])
    path = records.lock_path(cfg).with_name("seed0.lock.pid")
    path.parent.mkdir(parents=True)
    holder = {"pid": 1, "host": "elsewhere", "slurm_job": job, "token": "t-old", "heartbeat_s": 60}
    path.write_text(json.dumps(holder))
    os.utime(path, (os.path.getmtime(path) - age_s,) * 2)
    if not taken:
        with pytest.raises(records.CellBusy):
            with records.exclusive_file_lock(cfg, path):
                pass
        assert json.loads(path.read_text()) == holder
        return
    with records.exclusive_file_lock(cfg, path):
        assert json.loads(path.read_text())["pid"] == os.getpid()
    assert not path.exists()


def test_the_holder_refreshes_its_lock_file(compose_config, monkeypatch):
    monkeypatch.setattr(records, "HEARTBEAT_S", 0.05)
    cfg = compose_config(["model=tiny-roberta", "task=rte"])
    path = records.lock_path(cfg).with_name("seed0.lock.pid")
    path.parent.mkdir(parents=True)
    with records.exclusive_file_lock(cfg, path):
        os.utime(path, (0, 0))
        for _ in range(100):
            if path.stat().st_mtime > 0:
                break
            time.sleep(0.05)
        assert path.stat().st_mtime > 0


def _race(cfg_yaml, path, start, wins):
    """One job: wait for the others, then try to take the cell's lock file; a winner holds it a moment."""
    start.wait(30)
    try:
        with records.exclusive_file_lock(OmegaConf.create(cfg_yaml), Path(path)):
            wins.put(os.getpid())
            time.sleep(1.0)
    except records.CellBusy:
        pass


def test_of_jobs_racing_for_a_stale_lock_file_exactly_one_takes_it(compose_config, monkeypatch):
    """Issue 31 item 7: 4 jobs find the same stale holder (a pid that has ended on this host) at once. Deciding
    'stale' is slowed down so that all of them have decided before any acts: a check-then-delete takeover then lets
    each delete the file the one before it had just created, and several hold the cell; the takeover marker lets one."""
    cfg = compose_config(["model=tiny-roberta", "task=rte"])
    path = records.lock_path(cfg).with_name("seed0.lock.pid")
    path.parent.mkdir(parents=True)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    path.write_text(json.dumps({"pid": int(dead.stdout), "host": platform.node(), "token": "t-dead"}))
    real = records._stale
    monkeypatch.setattr(records, "_stale", lambda *a: (time.sleep(0.5), real(*a))[1])
    ctx = mp.get_context("fork")
    start, wins = ctx.Barrier(4), ctx.Queue()
    jobs = [
        ctx.Process(target=_race, args=(OmegaConf.to_container(cfg, resolve=True), str(path), start, wins))
        for _ in range(4)
    ]
    for j in jobs:
        j.start()
    for j in jobs:
        j.join(60)
    winners = []
    while not wins.empty():
        winners.append(wins.get())
    assert len(winners) == 1, winners


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


def test_fp16_without_a_gpu_is_refused_before_anything_is_written(compose_config, tmp_path, monkeypatch):
    """Issue 31 item 2: on a CPU, accelerate turns fp16 off and the cell trained in fp32 while its record said fp16."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    overrides = ["model=tiny-roberta", "method=lora", "task=rte", "train.max_steps=2", "train.precision=fp16"]
    with pytest.raises(ReproError, match=r"^train.precision=fp16: .*allowed here: fp32, bf16"):
        run_cell(cell(compose_config, overrides))
    assert written_outside_logs(tmp_path) == []


def test_bf16_on_a_gpu_without_bf16_is_refused(monkeypatch):
    from repro.train import check_precision

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i=0: "Tesla V100-SXM2-32GB")
    with pytest.raises(ReproError, match=r"^train.precision=bf16: Tesla V100-SXM2-32GB has no bf16; allowed here"):
        check_precision(OmegaConf.create({"precision": "bf16"}))
    check_precision(OmegaConf.create({"precision": "fp16"}))  # a GPU: fp16 runs


def test_a_global_batch_the_processes_cannot_share_is_refused_before_the_lock(compose_config, tmp_path, monkeypatch):
    """Issue 31 item 4: 16 over 3 processes failed inside training (a failed record); now bad input, before the
    process group starts and before the lock, at the entry point too (exit 2, one line)."""
    from repro import dist

    monkeypatch.setenv("WORLD_SIZE", "3")
    monkeypatch.setattr(dist, "init", lambda: None)
    overrides = ["model=tiny-roberta", "method=lora", "task=rte", "train.global_batch_size=16", "train.max_steps=2"]
    with pytest.raises(ReproError, match=r"^train.global_batch_size=16: must be a multiple of .* 3 .*e.g. 15 or 18"):
        run_cell(cell(compose_config, overrides))
    assert written_outside_logs(tmp_path) == []
    env = {**os.environ, "WORLD_SIZE": "3", "REPRO_RESULTS_DIR": str(tmp_path), "REPRO_LOG_DIR": str(tmp_path / "logs")}
    proc = subprocess.run(
        [sys.executable, "-m", "repro.run", *overrides], cwd=PROJECT_ROOT, env=env, capture_output=True, text=True
    )
    assert proc.returncode == 2 and proc.stderr.startswith("error: train.global_batch_size=16: must be a multiple")
    assert len(proc.stderr.strip().splitlines()) == 1 and written_outside_logs(tmp_path) == []


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
