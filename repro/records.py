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
import threading
import time
import uuid
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from repro import PROJECT_ROOT

log = logging.getLogger(__name__)

# Keys that do not change what a cell computes, left out of its fingerprint (dotted paths): where results and logs
# go; how a cell runs (a guard policy, a smoke-init switch, the device it may run on, how often it saves a resumable
# checkpoint: a resumed cell ends bit-identical); how the global batch is split over memory (per-device cap,
# activation checkpointing: the same optimization, see train.batch_plan); how a table is printed (table.render);
# tracking (wandb); a debug preset's name and settings (`debug`: the settings it applies are hashed where they land,
# train.max_steps etc.).
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
    "train.save_every_steps",
    "train.save_every_minutes",
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
MOUNTS = Path("/proc/mounts")  # where the kernel lists every mount: its type and options
HEARTBEAT_S = 60  # a lock file's holder touches it this often ...
STALE_AFTER_S = 600  # ... and one untouched for this long has no live holder
SLURM_ENDED = {"BOOT_FAIL", "CANCELLED", "COMPLETED", "DEADLINE", "FAILED", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED"}
SLURM_ENDED |= {"TIMEOUT"}  # squeue's terminal job states; a requeued job is PENDING again, under the same id
_warned_file_locks = False


def flock_reaches_other_nodes(path: Path, mounts: str | None = None) -> str | None:
    """None when a flock on `path` excludes processes on every node that sees the file; else why not: the mount that
    holds it locks on this node only. NFS mounted with `local_lock=flock` or `local_lock=all` (or `nolock`) and Lustre
    mounted with `localflock` grant every node its own flock on the same file, so two jobs on two nodes would both
    hold the cell. Read from /proc/mounts (`mounts`: its text): the mount whose mount point is the longest prefix of
    the path's real location, its type and options."""
    if mounts is None:
        try:
            mounts = MOUNTS.read_text()
        except OSError:
            return None
    where = os.path.realpath(path)
    best = None
    for line in mounts.splitlines():
        parts = line.split()
        if len(parts) < 4:
            continue
        point = parts[1].replace("\\040", " ")
        if (where == point or where.startswith(point.rstrip("/") + "/")) and (
            best is None or len(point) > len(best[0])
        ):
            best = (point, parts[2], parts[3].split(","))
    if best is None:
        return None
    point, fstype, options = best
    if fstype.startswith("nfs"):
        local = [o for o in options if o in ("local_lock=flock", "local_lock=all", "nolock")]
        if local:
            return f"{point} is {fstype} mounted with {local[0]}: flock locks on this node only"
    if fstype == "lustre" and "localflock" in options:
        return f"{point} is lustre mounted with localflock: flock locks on this node only"
    return None


@contextlib.contextmanager
def cell_lock(cfg: DictConfig):
    """An exclusive, non-blocking flock on the cell: released by the OS when the holder dies (a killed or requeued
    job never leaves a stale lock behind). An exclusive lock file instead (`exclusive_file_lock`, with one warning)
    where flock cannot exclude other nodes: the filesystem has no flock, or flock reaches this node only
    (`flock_reaches_other_nodes`: NFS local_lock=flock|all, Lustre localflock)."""
    path = lock_path(cfg)
    path.parent.mkdir(parents=True, exist_ok=True)
    why_not = flock_reaches_other_nodes(path.parent)
    if why_not is None:
        f = open(path, "a+")
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip()
            f.close()
            raise CellBusy(
                f"{record_path(cfg)} is being run by another job ({holder or 'unknown'}); lock {path}"
            ) from None
        except OSError as exc:
            f.close()
            if exc.errno not in NO_FLOCK:
                raise
            why_not = f"flock is not supported on {path.parent} ({os.strerror(exc.errno)})"
        else:
            try:
                f.seek(0)
                f.truncate()
                f.write(f"pid {os.getpid()} on {platform.node()}\n")
                f.flush()
                yield path
            finally:
                fcntl.flock(f.fileno(), fcntl.LOCK_UN)
                f.close()
            return
    global _warned_file_locks
    if not _warned_file_locks:
        _warned_file_locks = True
        log.warning(
            "%s: cell locks are exclusive lock files instead (seed<k>.lock.pid: pid, host, SLURM job, refreshed every "
            "%d s). One whose holder is gone (its SLURM job no longer running, its pid ended on this host, or no "
            "refresh for %d s) is taken over.",
            why_not,
            HEARTBEAT_S,
            STALE_AFTER_S,
        )
    with exclusive_file_lock(cfg, path.with_name(path.name + ".pid")) as held:
        yield held


def _lock_owner() -> dict:
    return {
        "pid": os.getpid(),
        "host": platform.node(),
        "slurm_job": os.environ.get("SLURM_JOB_ID"),
        "token": uuid.uuid4().hex,  # this holding: a takeover replaces it, a release removes only its own
        "heartbeat_s": HEARTBEAT_S,  # the holder touches the file this often (a file without it is never aged out)
    }


def slurm_job_ended(job: str) -> str | None:
    """Why SLURM job `job` is no longer running (squeue forgets an ended job, or lists it in a terminal state), or
    None when it is, or squeue cannot tell (not installed, the controller unreachable, timed out)."""
    try:
        out = subprocess.run(["squeue", "-h", "-j", str(job), "-o", "%T"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:  # "Invalid job id specified": ended long enough ago for squeue to forget it (MinJobAge)
        return f"squeue does not know SLURM job {job}" if "invalid job id" in out.stderr.lower() else None
    state = out.stdout.strip().splitlines()[0].strip() if out.stdout.strip() else ""
    if not state:
        return f"squeue lists no SLURM job {job}"
    if state in SLURM_ENDED:
        return f"SLURM job {job} is {state}"
    return None


def _stale(holder: dict, age_s: float) -> str | None:
    """Why a lock file's holder cannot be running, or None: on this host, a pid that no longer exists; the same SLURM
    job as this one (a requeued job is this job again, on whatever node); a SLURM job that has ended (squeue); a
    holder that refreshes its file and has not for STALE_AFTER_S (`age_s`: seconds since the file last changed)."""
    me = _lock_owner()
    if holder.get("host") == me["host"] and isinstance(holder.get("pid"), int):
        try:
            os.kill(holder["pid"], 0)
        except ProcessLookupError:
            return f"pid {holder['pid']} has ended on this host"
        except PermissionError:
            pass
    job = holder.get("slurm_job")
    if job and job == me["slurm_job"]:
        return f"SLURM job {job} is this job, requeued"
    if job and (ended := slurm_job_ended(job)):
        return ended
    if holder.get("heartbeat_s") and age_s > STALE_AFTER_S:
        return f"its holder has not refreshed it for {age_s:.0f} s"
    return None


def _heartbeat(path: Path, token: str, stop: threading.Event) -> None:
    """Touch the lock file every HEARTBEAT_S while it is ours (another job's takeover ends it)."""
    while not stop.wait(HEARTBEAT_S):
        try:
            if json.loads(path.read_text()).get("token") != token:
                log.warning("the cell lock %s was taken over by another job", path)
                return
            os.utime(path)
        except (OSError, json.JSONDecodeError):
            return


@contextlib.contextmanager
def exclusive_file_lock(cfg: DictConfig, path: Path):
    """The cell lock without a flock that reaches other nodes: O_CREAT | O_EXCL creates the file only if it does not
    exist (atomic on NFS v3+ and Lustre), with the holder's pid, host, SLURM job id and a token; refreshed every
    HEARTBEAT_S while held, removed on release.

    A file whose holder is gone (`_stale`) is taken over atomically, without a check-then-delete race: the taker first
    creates `<lock>.takeover-<stale token>` with O_EXCL, so that of all the jobs that found the same stale holder
    exactly one goes on, and that one renames its own file over the lock (os.replace: atomic). Any other job finds a
    live holder, or the marker, and is told the cell is busy."""
    me = _lock_owner()
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        try:
            holder = json.loads(path.read_text() or "{}")
            age = time.time() - path.stat().st_mtime
        except (OSError, json.JSONDecodeError):  # being written, or just removed: someone is taking it
            holder, age = {}, 0.0
        why = _stale(holder, age) if holder else None
        if why is None or not _claim_takeover(path, holder.get("token") or f"pid{holder.get('pid')}"):
            who = f"pid {holder.get('pid')} on {holder.get('host')}" if holder else "unknown"
            job = f", SLURM job {holder['slurm_job']}" if holder.get("slurm_job") else ""
            raise CellBusy(
                f"{record_path(cfg)} is being run by another job ({who}{job}); lock file {path} (a lock file, not "
                f"flock: taken over once its holder is gone: its SLURM job ended, or no refresh for {STALE_AFTER_S} s)"
            ) from None
        log.warning("taking over the cell lock %s: %s (%s)", path, why, holder)
        tmp = path.with_name(f"{path.name}.{me['token']}.tmp")
        tmp.write_text(json.dumps(me))
        os.replace(tmp, path)
    else:
        with os.fdopen(fd, "w") as f:
            json.dump(me, f)
    stop = threading.Event()
    beat = threading.Thread(target=_heartbeat, args=(path, me["token"], stop), daemon=True)
    beat.start()
    try:
        yield path
    finally:
        stop.set()
        try:
            if json.loads(path.read_text()).get("token") == me["token"]:
                path.unlink()
        except (OSError, json.JSONDecodeError):
            pass


def _claim_takeover(path: Path, stale_token: str) -> bool:
    """True for exactly one of the jobs that found the holder `stale_token` gone: the one that creates the marker."""
    try:
        os.close(os.open(path.with_name(f"{path.name}.takeover-{stale_token}"), os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        return True
    except FileExistsError:
        return False


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
ADDED_KEYS: dict[str, object] = {
    "method.reparam": None,  # prefix tuning trained directly (Li & Liang's MLP reparametrization: mlp)
    "method.mid_dim": 512,  # that MLP's hidden width; read only with reparam: mlp
    "method.init": "real_tokens",  # prefix tuning's start (LoRA's own `init` values, kaiming ..., never equal it)
    "train.fast_path": False,  # issue 27's CPU engine (repro.precision); false computes as before
}


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
