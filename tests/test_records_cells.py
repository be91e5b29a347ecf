"""Cells are idempotent: an `ok` record with the same fingerprint is skipped, force reruns, a changed config does not
match, records are written atomically, two jobs of one cell never run at once, checkpoints of another config are
never resumed, and no API key reaches a record."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from repro import PROJECT_ROOT, records
from repro.cell import resolve_cell

FAST = ["train.max_steps=2", "data.max_train_samples=16", "data.max_eval_samples=16", "train.global_batch_size=8"]
CELL = ["+table=glue", "model=tiny-roberta", "method=lora", "task=rte", "seed=0", *FAST]
SENTINEL = "wandb-key-sentinel-0123456789abcdef"


def resolved(compose_config, overrides):
    return resolve_cell(compose_config(overrides), overrides)


@pytest.fixture
def one_cell(compose_config, data_dir, monkeypatch):
    """A real tiny cell, run once with tracking on (mode disabled) and a WANDB_API_KEY in the environment."""
    from repro.run import run_cell

    monkeypatch.setenv("WANDB_API_KEY", SENTINEL)
    overrides = [*CELL, "wandb.enabled=true", "wandb.mode=disabled"]
    cfg = resolved(compose_config, overrides)
    record = run_cell(cfg)
    return cfg, overrides, record


def test_skip_force_and_fingerprint(one_cell, compose_config, monkeypatch):
    import repro.run as run

    cfg, overrides, record = one_cell
    assert record["status"] == "ok", record.get("error")
    path = records.record_path(cfg)
    assert path.exists() and records.read_record(path)["fingerprint"] == records.fingerprint(cfg)
    assert not records.checkpoint_dir(cfg).exists()  # removed once the cell is done

    calls = []
    monkeypatch.setattr(
        run, "_run_cell", lambda cfg, path, *setup: calls.append(path) or {"status": "ok", "metrics": {}}
    )
    again = run.run_cell(resolved(compose_config, overrides))
    assert again.get("skipped") and calls == []  # same fingerprint: skipped, nothing run
    run.run_cell(resolved(compose_config, [*overrides, "force=true"]))
    assert len(calls) == 1  # force reruns
    changed = resolved(compose_config, [*overrides, "train.learning_rate=1e-3"])
    assert records.finished_record(changed) is None  # another config is another fingerprint
    assert records.fingerprint(resolved(compose_config, [*overrides, "train.logging_steps=3"])) == records.fingerprint(
        cfg
    )


def test_no_api_key_in_records_or_logs(one_cell):
    cfg, _, record = one_cell
    assert SENTINEL not in records.record_path(cfg).read_text()
    for path in Path(cfg.paths.log_dir).rglob("*"):
        if path.is_file() and path.stat().st_size < 5_000_000:
            assert SENTINEL not in path.read_text(errors="ignore"), path


def test_record_is_traceable(one_cell):
    """A record from a tree with uncommitted code changes carries their sha256, and seed<k>.diff beside it holds them;
    from a clean tree there is no diff file."""
    cfg, _, record = one_cell
    path = records.record_path(cfg)
    prov = json.loads(path.read_text())["provenance"]
    assert prov["git_commit"] and records.untraced(path, {"provenance": prov}) is None
    assert records.diff_path(path).exists() == prov["git_dirty"] == (prov["git_diff_sha256"] is not None)


def git(repo, *args):
    return subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", *args],
        cwd=repo,
        check=True,
        capture_output=True,
        text=True,
    ).stdout


def test_code_diff_leaves_out_results_and_goes_beside_the_record(tmp_path, monkeypatch):
    repo = tmp_path / "repo"
    (repo / "results" / "t").mkdir(parents=True)
    (repo / "code.py").write_text("x = 1\n")
    (repo / "results" / "t" / "seed0.json").write_text("{}\n")
    git(repo, "init", "-q")
    git(repo, "add", ".")
    git(repo, "commit", "-qm", "init")
    monkeypatch.setattr(records, "PROJECT_ROOT", repo)
    record = repo / "results" / "t" / "seed0.json"
    assert records.code_diff() == "" and records.provenance("")["git_dirty"] is False

    record.write_text('{"a": 1}\n')  # a changed record is not a code change
    assert records.code_diff() == ""
    (repo / "code.py").write_text("x = 2\n")
    diff = records.code_diff()
    assert "code.py" in diff and "+x = 2" in diff and "results/" not in diff
    prov = records.provenance(diff)
    assert prov["git_dirty"] and prov["git_commit"] == git(repo, "rev-parse", "HEAD").strip()
    records.write_diff(record, diff)
    assert records.diff_path(record).read_text() == diff and records.untraced(record, {"provenance": prov}) is None
    git(repo, "apply", "--check", "-R", str(records.diff_path(record)))  # it is the change, as a patch
    records.write_diff(record, "")  # a clean re-run removes the stale diff
    assert not records.diff_path(record).exists()
    assert records.untraced(record, {"provenance": prov}) == "uncommitted changes, seed0.diff missing"
    # this checkout's .gitignore keeps the diffs (they are committed with their records)
    ignored = subprocess.run(
        ["git", "check-ignore", "-q", "--no-index", "results/glue/m/lora/rte/seed0.diff"], cwd=PROJECT_ROOT
    )
    assert ignored.returncode == 1


def test_redact_secrets_on_write(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", SENTINEL)
    path = tmp_path / "r.json"
    records.write_json_atomic(path, {"cli_overrides": [f"wandb.key={SENTINEL}"], "nested": {"x": f"a{SENTINEL}b"}})
    text = path.read_text()
    assert SENTINEL not in text and "<redacted>" in text


def _writer(path, n):
    for i in range(n):
        records.write_json_atomic(Path(path), {"i": i, "pad": "x" * 20000})


def test_atomic_write_never_shows_half_a_record(tmp_path):
    path = tmp_path / "a" / "seed0.json"
    procs = [mp.get_context("fork").Process(target=_writer, args=(str(path), 60)) for _ in range(2)]
    for p in procs:
        p.start()
    seen = 0
    while any(p.is_alive() for p in procs):
        if path.exists():
            json.loads(path.read_text())  # never a partial file
            seen += 1
    for p in procs:
        p.join()
    assert json.loads(path.read_text())["pad"] == "x" * 20000
    assert not list(path.parent.glob("*.tmp"))


def _hold(cfg_yaml, ready, release):
    from omegaconf import OmegaConf

    with records.cell_lock(OmegaConf.create(cfg_yaml)):
        ready.set()
        release.wait(300)  # released by the test; the timeout only bounds a broken test


def test_cell_lock_excludes_a_second_job(compose_config):
    from omegaconf import OmegaConf

    cfg = resolved(compose_config, CELL)
    ctx = mp.get_context("fork")
    ready, release = ctx.Event(), ctx.Event()
    p = ctx.Process(target=_hold, args=(OmegaConf.to_container(cfg, resolve=True), ready, release))
    p.start()
    assert ready.wait(20)
    try:
        with pytest.raises(records.CellBusy):
            with records.cell_lock(cfg):
                pass
        from repro.run import run_cell

        assert run_cell(cfg)["status"] == "busy"
    finally:
        release.set()
        p.join()
    with records.cell_lock(cfg):  # released when the holder ends
        pass


def test_checkpoints_of_another_config_are_not_resumed(compose_config):
    cfg = resolved(compose_config, CELL)
    ckpt = records.checkpoint_dir(cfg)
    (ckpt / "checkpoint-4").mkdir(parents=True)
    (ckpt / "FINGERPRINT").write_text("another-config\n")
    assert records.prepare_checkpoint_dir(cfg) == ckpt and not (ckpt / "checkpoint-4").exists()
    (ckpt / "checkpoint-4").mkdir()
    (ckpt / "checkpoint-4" / "trainer_state.json").write_text('{"global_step": 4}')
    records.prepare_checkpoint_dir(cfg)  # same config: kept, and resumed
    assert records.last_complete_checkpoint(ckpt).name == "checkpoint-4"


def test_a_checkpoint_cut_off_mid_save_is_not_resumed(compose_config):
    """A job killed while the Trainer saves leaves a newest checkpoint without (or with half of) trainer_state.json,
    the file it writes last: resume from the newest complete one and remove the broken ones."""
    cfg = resolved(compose_config, CELL)
    ckpt = records.checkpoint_dir(cfg)
    records.prepare_checkpoint_dir(cfg)
    for step, state in ((10, '{"global_step": 10}'), (20, None), (30, '{"global_st')):
        (ckpt / f"checkpoint-{step}").mkdir()
        (ckpt / f"checkpoint-{step}" / "model.safetensors").write_bytes(b"")
        if state is not None:
            (ckpt / f"checkpoint-{step}" / "trainer_state.json").write_text(state)
    records.prepare_checkpoint_dir(cfg)
    assert records.last_complete_checkpoint(ckpt).name == "checkpoint-10"
    assert sorted(p.name for p in ckpt.glob("checkpoint-*")) == ["checkpoint-10"]


# `python -c PREEMPTED <repro.run arguments>`: the cell, killed with SIGKILL (as a pre-empted job is) right after the
# optimizer step KILL_AT_STEP
PREEMPTED = """
import os, runpy, signal, sys
from transformers import TrainerCallback
import repro.tasks.classification as recipe
import repro.train

class Preempt(TrainerCallback):
    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == int(os.environ["KILL_AT_STEP"]):
            os.kill(os.getpid(), signal.SIGKILL)

def fit(cfg, trainer, *args, **kwargs):
    trainer.add_callback(Preempt())
    return repro.train.fit(cfg, trainer, *args, **kwargs)

recipe.fit = fit
sys.argv = ["repro.run", *sys.argv[1:]]
runpy.run_module("repro.run", run_name="__main__", alter_sys=True)
"""


def test_a_killed_cell_resumes_from_its_last_step_checkpoint_bit_identically(compose_config, tmp_path, data_dir):
    """Issue 31 item 5: besides each evaluation's checkpoint (one per epoch of 4 steps), one every
    train.save_every_steps=3 steps. Killed with SIGKILL after step 8 (before that epoch's checkpoint), the same command
    resumes from checkpoint-7, in the middle of the second epoch, and ends with the weights, the dev scores and the
    best-epoch choice of the same cell never stopped."""
    from safetensors.torch import load_file

    from repro.run import run_cell

    overrides = [
        "+table=glue",
        "model=tiny-roberta",
        "method=lora",
        "task=rte",
        "train.num_train_epochs=3",
        "data.max_train_samples=16",
        "data.max_eval_samples=16",
        "train.global_batch_size=4",
        "train.save_every_steps=3",
        "threads=1",  # the same torch threads in this process (an earlier test may have set them) and the resumed one
    ]
    whole = run_cell(resolved(compose_config, overrides))
    assert whole["status"] == "ok" and whole["steps"] == 12 and whole["resumed_from"] is None

    env = {**os.environ, "REPRO_RESULTS_DIR": str(tmp_path / "b"), "REPRO_LOG_DIR": str(tmp_path / "logs")}
    cell = tmp_path / "b/glue/tiny-roberta/lora/rte"
    killed = subprocess.run(
        [sys.executable, "-c", PREEMPTED, *overrides],
        cwd=PROJECT_ROOT,
        env={**env, "KILL_AT_STEP": "8"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert not (cell / "seed0.json").exists()
    assert records.last_complete_checkpoint(cell / "checkpoints/seed0").name == "checkpoint-7"
    out = subprocess.run(
        [sys.executable, "-m", "repro.run", *overrides],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, (out.stdout + out.stderr)[-3000:]
    resumed = json.loads((cell / "seed0.json").read_text())
    assert resumed["status"] == "ok" and resumed["resumed_from"].endswith("checkpoint-7")
    assert (resumed["steps"], resumed["metrics"], resumed["selected"]) == (
        whole["steps"],
        whole["metrics"],
        whole["selected"],
    )

    def scores(history):  # each evaluation's step and dev metrics, without its timings (runtime, samples per second)
        return [{k: v for k, v in e.items() if not k.endswith(("runtime", "per_second"))} for e in history["eval"]]

    assert scores(resumed["history"]) == scores(whole["history"])
    mine, theirs = (
        load_file(cell / "seed0.safetensors"),
        load_file(tmp_path / "glue/tiny-roberta/lora/rte/seed0.safetensors"),
    )
    assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)


def _fingerprint_d925454(cfg) -> str:
    """records.fingerprint as it was before init_from chains (commit d925454), verbatim."""
    import hashlib

    from omegaconf import OmegaConf

    data = OmegaConf.to_container(cfg, resolve=True)
    for key in ("force", "dry_run", "paths", "wandb", "cli_overrides"):
        data.pop(key, None)
    for key in ("keep_checkpoints", "logging_steps"):
        data.get("train", {}).pop(key, None)
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _newer_volatile_keys(cfg) -> list[str]:
    """Keys of cfg that records.fingerprint leaves out but _fingerprint_d925454 did not."""
    old = {"force", "dry_run", "paths", "wandb", "cli_overrides", "train.keep_checkpoints", "train.logging_steps"}
    present = []
    for key in set(records.VOLATILE_KEYS) - old:
        node = cfg
        for part in key.split("."):
            node = node.get(part) if hasattr(node, "get") else None
        if node is not None:
            present.append(key)
    return present


def test_cells_without_init_from_keep_their_fingerprints():
    """Every record committed under results/ keeps its fingerprint: its stored config hashes as the old function did,
    and its cell, composed again from its command line today (with train.allow_smoke_init in the config), hashes to
    the record's fingerprint, so done cells stay done. Composed with the default results_dir: Table 2's rows hold
    init_from paths under it, and the whole table is part of every cell's fingerprint."""
    from omegaconf import OmegaConf

    from tests.conftest import compose_cfg

    found = 0
    for path in sorted((PROJECT_ROOT / "results").rglob("seed*.json")):
        record = records.read_record(path)
        if not record or "config" not in record:
            continue
        found += 1
        stored = OmegaConf.create(record["config"])
        assert not stored.train.get("init_from")
        assert records.fingerprint(stored) == record["fingerprint"], path
        if not _newer_volatile_keys(stored):  # a config with keys made volatile since d925454 hashes differently there
            assert _fingerprint_d925454(stored) == record["fingerprint"], path
        overrides = list(stored.cli_overrides)
        # as the records were made; check=False: the schema and the scratch rule are not what is tested here, and one
        # committed record is a smoke run (results/glue/tiny-roberta/lora/rte, train.max_steps=20 on its command line)
        # that the scratch rule (repro.cell.check_scratch) now refuses to write into results/
        cfg = resolve_cell(compose_cfg([*overrides, "paths.results_dir=results"]), overrides, check=False)
        assert records.fingerprint(cfg) == record["fingerprint"], path
    assert found >= 50
