"""One JSON record per grid cell, written atomically: the only thing tables, plots and analysis read.

Layout: <results_dir>/<table>/<model>/<method>/<task>/seed<k>.json, the cell's trainable weights beside it as
seed<k>.safetensors, the uncommitted code change it ran with (if any) as seed<k>.diff, and resumable Trainer checkpoints under checkpoints/seed<k>/ while the cell runs.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
import platform
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from repro import PROJECT_ROOT

log = logging.getLogger(__name__)

# Keys that do not change what a cell computes, left out of its fingerprint (dotted paths): where results and logs
# go; how a cell runs (a guard policy, a smoke-init switch, the device it may run on); how the global batch is split
# over memory (per-device cap, activation checkpointing: the same optimization, see train.batch_plan); how a table
# is printed (table.render); tracking (wandb); a debug preset's name and settings (`debug`: the settings it applies
# are hashed where they land, train.max_steps etc.).
VOLATILE_KEYS = (
    "force",
    "dry_run",
    "paths",
    "wandb",
    "debug",
    "cli_overrides",
    "allow_cpu",
    "threads",
    "table.render",
    "train.keep_checkpoints",
    "train.logging_steps",
    "train.allow_smoke_init",
    "train.divergence_patience",
    "model.max_per_device_batch_size",
    "model.gradient_checkpointing",
)


def method_dirname(cfg: DictConfig) -> str:
    return cfg.method.name if cfg.variant == "default" else f"{cfg.method.name}.{cfg.variant}"


def cell_dir(cfg: DictConfig) -> Path:
    return Path(cfg.paths.results_dir) / cfg.table.name / cfg.model.name / method_dirname(cfg) / cfg.task.name


def record_path(cfg: DictConfig) -> Path:
    return cell_dir(cfg) / f"seed{cfg.seed}.json"


def weights_path(cfg: DictConfig) -> Path:
    return cell_dir(cfg) / f"seed{cfg.seed}.safetensors"


def checkpoint_dir(cfg: DictConfig) -> Path:
    return cell_dir(cfg) / "checkpoints" / f"seed{cfg.seed}"


def lock_path(cfg: DictConfig) -> Path:
    """Beside the cell's checkpoints (git-ignored), not inside them: the folder is removed when the cell is done."""
    return cell_dir(cfg) / "checkpoints" / f"seed{cfg.seed}.lock"


class CellBusy(RuntimeError):
    """Another process holds this cell's lock (two jobs of one cell never run at once)."""


# flock errors that mean "this filesystem has no flock" (NFS without lockd, Lustre mounted without -o flock)
NO_FLOCK = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS}
_warned_no_flock = False


@contextlib.contextmanager
def cell_lock(cfg: DictConfig):
    """An exclusive, non-blocking flock on the cell: released by the OS when the holder dies (a killed or requeued
    job never leaves a stale lock behind). Where the filesystem has no flock, an exclusive lock file instead
    (`exclusive_file_lock`), with one warning."""
    global _warned_no_flock
    path = lock_path(cfg)
    path.parent.mkdir(parents=True, exist_ok=True)
    f = open(path, "a+")
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        holder = f.read().strip()
        f.close()
        raise CellBusy(f"{record_path(cfg)} is being run by another job ({holder or 'unknown'}); lock {path}") from None
    except OSError as exc:
        f.close()
        if exc.errno not in NO_FLOCK:
            raise
        no_flock = exc.errno
    else:
        no_flock = None
    if no_flock is not None:
        if not _warned_no_flock:
            _warned_no_flock = True
            log.warning(
                "flock is not supported on %s (%s): cell locks fall back to exclusive lock files "
                "(seed<k>.lock.pid, holding pid, host and SLURM job). A job killed with SIGKILL on another host "
                "leaves its file behind: delete it by hand if no job of that cell runs (the same SLURM job, "
                "requeued, and a dead pid on the same host take it over).",
                path.parent,
                os.strerror(no_flock),
            )
        with exclusive_file_lock(cfg, path.with_name(path.name + ".pid")) as held:
            yield held
        return
    try:
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()} on {platform.node()}\n")
        f.flush()
        yield path
    finally:
        fcntl.flock(f.fileno(), fcntl.LOCK_UN)
        f.close()


def _lock_owner() -> dict:
    return {"pid": os.getpid(), "host": platform.node(), "slurm_job": os.environ.get("SLURM_JOB_ID")}


def _stale(holder: dict) -> bool:
    """A lock file left by a holder that cannot be running: on this host, a pid that no longer exists; on another
    host, the same SLURM job (a requeued job is this job again, on whatever node). Any other holder is assumed alive."""
    me = _lock_owner()
    if holder.get("host") == me["host"] and isinstance(holder.get("pid"), int):
        try:
            os.kill(holder["pid"], 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        return False
    return bool(holder.get("slurm_job")) and holder.get("slurm_job") == me["slurm_job"]


@contextlib.contextmanager
def exclusive_file_lock(cfg: DictConfig, path: Path):
    """The cell lock without flock: O_CREAT | O_EXCL creates the file only if it does not exist (atomic on NFS v3+ and
    Lustre), with the holder's pid, host and SLURM job id; removed on release. A stale file (`_stale`) is replaced."""
    me = _lock_owner()
    for attempt in (1, 2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                holder = json.loads(path.read_text() or "{}")
            except (OSError, json.JSONDecodeError):
                holder = {}
            if attempt == 1 and _stale(holder):
                log.warning("removing the stale cell lock %s (%s)", path, holder)
                path.unlink(missing_ok=True)
                continue
            who = f"pid {holder.get('pid')} on {holder.get('host')}" if holder else "unknown"
            raise CellBusy(
                f"{record_path(cfg)} is being run by another job ({who}); lock file {path} (no flock on "
                f"this filesystem: if no job of this cell is running, delete the file)"
            ) from None
        with os.fdopen(fd, "w") as f:
            json.dump(me, f)
        break
    try:
        yield path
    finally:
        try:
            if json.loads(path.read_text()) == me:
                path.unlink()
        except (OSError, json.JSONDecodeError):
            pass


def last_complete_checkpoint(folder: Path) -> Path | None:
    """The highest-numbered `checkpoint-<step>` in folder that was written to the end, else None.

    The Trainer writes a checkpoint's trainer_state.json last, and not atomically: a job killed during a save (a
    SLURM pre-emption, a time limit) leaves a newest checkpoint without it, or with half of it. transformers'
    `get_last_checkpoint` would pick that one and the resume would crash; this picks the newest whole one and
    removes the broken ones, so the next save of that step can succeed."""
    folder = Path(folder)
    if not folder.is_dir():
        return None
    steps = sorted(
        (
            (int(m.group(1)), p)
            for p in folder.iterdir()
            if p.is_dir() and (m := re.fullmatch(r"checkpoint-(\d+)", p.name))
        ),
        reverse=True,
    )
    for _, ckpt in steps:
        try:
            json.loads((ckpt / "trainer_state.json").read_text())
            return ckpt
        except (FileNotFoundError, json.JSONDecodeError):
            shutil.rmtree(ckpt, ignore_errors=True)
    return None


def prepare_checkpoint_dir(cfg: DictConfig) -> Path:
    """The cell's checkpoint folder, stamped with the config's fingerprint. Checkpoints left by an interrupted run of
    the *same* config are kept (`train.train_resuming` resumes from the last complete one); those of another config
    are removed, so a changed cell never resumes someone else's optimizer state. Returns the folder."""
    path = checkpoint_dir(cfg)
    stamp = path / "FINGERPRINT"
    fp = fingerprint(cfg)
    if path.exists() and (not stamp.exists() or stamp.read_text().strip() != fp):
        shutil.rmtree(path)
    path.mkdir(parents=True, exist_ok=True)
    stamp.write_text(fp + "\n")
    return path


# Keys added to the config after records were written, each with the value that computes exactly what the code did
# before the key existed: a cell at that value hashes as if the key were absent, so committed records stay done (and a
# cell that sets another value is a new cell). A new key that changes the computation goes here with its
# behaviour-preserving default; a key that never changes it goes in VOLATILE_KEYS.
ADDED_KEYS: dict[str, object] = {"train.fast_path": False}


def _drop(data: dict, key: str, only_if=None, check: bool = False) -> None:
    *parents, leaf = key.split(".")
    node = data
    for parent in parents:
        node = node.get(parent) or {}
    if leaf in node and (not check or node[leaf] == only_if):
        node.pop(leaf)


def fingerprint(cfg: DictConfig) -> str:
    """sha256 of the resolved config, less the keys that do not change the result. A cell that starts from another
    cell's weights (train.init_from) also hashes that checkpoint's source fingerprint (None while it does not exist),
    so re-running the source (e.g. MNLI with another config) makes its dependents not done. A cell without init_from
    hashes exactly what it always did (committed records keep their fingerprints); so does a key of ADDED_KEYS at its
    behaviour-preserving value."""
    data = OmegaConf.to_container(cfg, resolve=True)
    for key in VOLATILE_KEYS:
        _drop(data, key)
    for key, default in ADDED_KEYS.items():
        _drop(data, key, only_if=default, check=True)
    if data.get("train", {}).get("init_from"):
        # here, not at the top: the weights file format needs torch, and tables and claims read records without it
        from repro.methods.checkpoint import source_fingerprint

        data["train"]["init_from_fingerprint"] = source_fingerprint(data["train"]["init_from"])
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]


SECRET_ENV = re.compile(r"(API_KEY|TOKEN|SECRET|PASSWORD)", re.I)


def redact(obj):
    """Replace the value of any secret-looking environment variable (WANDB_API_KEY, HF_TOKEN, ...) wherever it
    appears in obj: a record or log never carries a credential, even one pasted on a command line."""
    secrets = [v for k, v in os.environ.items() if SECRET_ENV.search(k) and len(v) >= 8]
    if not secrets:
        return obj
    text = json.dumps(obj, default=str)
    if not any(s in text for s in secrets):
        return obj
    for s in secrets:
        text = text.replace(json.dumps(s)[1:-1], "<redacted>")
    return json.loads(text)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_json_atomic(path: Path, obj) -> None:
    """Write to a temporary file in the same folder, then rename: a reader never sees half a record."""
    path = Path(path)
    obj = redact(obj)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; records are shared on a cluster
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f, indent=2, sort_keys=False, default=str)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_record(path: Path) -> dict | None:
    try:
        return json.loads(Path(path).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def finished_record(cfg: DictConfig) -> dict | None:
    """The cell's `ok` record if it exists with this config's fingerprint, else None."""
    record = read_record(record_path(cfg))
    if record and record.get("status") == "ok" and record.get("fingerprint") == fingerprint(cfg):
        return record
    return None


def diff_path(record: Path) -> Path:
    """seed<k>.diff beside seed<k>.json: the uncommitted code change the record ran with."""
    return Path(record).with_suffix(".diff")


def code_diff() -> str:
    """`git diff HEAD` of the tracked files outside results/ (staged and unstaged): what the working tree's code
    adds to its commit; "" for a clean tree (or no git). Untracked files are not part of it (nor of git_dirty).
    Secret-looking environment values are redacted, as in records."""
    try:
        out = subprocess.run(
            ["git", "diff", "HEAD", "--no-color", "--no-ext-diff", "--binary", "--", ".", ":(exclude)results"],
            cwd=PROJECT_ROOT,
            capture_output=True,
            timeout=30,
        )
    except (OSError, subprocess.SubprocessError):
        return ""
    return redact(out.stdout.decode("utf-8", "replace")) if out.returncode == 0 else ""


def write_diff(record: Path, diff: str) -> None:
    """Write the record's seed<k>.diff (before the record itself), or remove a stale one when the tree is clean."""
    path = diff_path(record)
    if not diff:
        path.unlink(missing_ok=True)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            f.write(diff)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def untraced(path: Path, record: dict) -> str | None:
    """Why the code behind a record cannot be traced (no commit; uncommitted changes with no seed<k>.diff beside it,
    or one whose sha256 is not the record's), else None."""
    prov = record.get("provenance") or {}
    if not prov.get("git_commit"):
        return "no git commit"
    if not prov.get("git_dirty"):
        return None
    if not prov.get("git_diff_sha256"):
        return "uncommitted changes, not recorded"
    diff = diff_path(path)
    if not diff.exists():
        return f"uncommitted changes, {diff.name} missing"
    if hashlib.sha256(diff.read_bytes()).hexdigest() != prov["git_diff_sha256"]:
        return f"uncommitted changes, {diff.name} does not match git_diff_sha256"
    return None


def provenance(diff: str | None = None) -> dict:
    """git commit, whether the code had uncommitted changes (and the sha256 of seed<k>.diff that holds them), versions,
    host. `diff`: code_diff(), taken once by the caller that also writes it beside the record."""
    import torch
    import transformers

    def git(*args):
        try:
            return subprocess.run(
                ["git", *args], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=10
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    diff = code_diff() if diff is None else diff
    return {
        "git_commit": git("rev-parse", "HEAD") or None,
        "git_dirty": bool(diff),
        "git_diff_sha256": hashlib.sha256(diff.encode()).hexdigest() if diff else None,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "host": platform.node(),
        "torch_threads": torch.get_num_threads(),
        "device": torch.cuda.get_device_name(0)
        if torch.cuda.is_available()
        else f"cpu ({platform.processor() or platform.machine()})",
    }
