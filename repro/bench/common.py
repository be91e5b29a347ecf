"""Shared pieces of the efficiency benchmarks: machine description, load check, timing, statistics, model and
method construction, atomic JSON output and plain-text tables.

Conventions (nanoGPT's bench.py style): warm-up before timing, `torch.cuda.synchronize()` around every timed
region on CUDA, wall-clock `time.perf_counter()`, and every ratio taken between measurements interleaved in one
process so that drift in machine load hits all variants alike.
"""

from __future__ import annotations

import json
import math
import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
import transformers
from safetensors.torch import load_file, save_file
from transformers.initialization import no_init_weights

from repro import PROJECT_ROOT
from repro.config import load_group, options
from repro.methods import METHODS
from repro.models import build_from_arch

RESULTS_DIR = PROJECT_ROOT / "results" / "bench"
PAPER_DIR = PROJECT_ROOT / "repro" / "paper"


# ----------------------------------------------------------------------------------------------- machine and load
def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load_average() -> dict[str, float]:
    one, five, fifteen = os.getloadavg()
    return {"1min": round(one, 2), "5min": round(five, 2), "15min": round(fifteen, 2)}


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def git_revision() -> dict[str, Any]:
    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=10
        ).stdout.strip()

    try:
        return {"commit": git("rev-parse", "HEAD"), "dirty": bool(git("status", "--porcelain", "--untracked-files=no"))}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


def machine_info(device: str) -> dict[str, Any]:
    info: dict[str, Any] = {
        "cpu_model": cpu_model(),
        "cpu_cores_visible": os.cpu_count(),
        "cpu_cores_available": available_cores(),
        "torch_threads": torch.get_num_threads(),
        "memory_total_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "torch_version": torch.__version__,
        "transformers_version": transformers.__version__,
        "python_version": platform.python_version(),
        "platform": platform.platform(),
        "device": device,
        "gpu_name": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "cuda_version": torch.version.cuda,
        "load_average": load_average(),
        "git": git_revision(),
    }
    try:
        import peft  # optional: the train benchmark's comparison with PEFT's LoRA

        info["peft_version"] = peft.__version__
    except ImportError:
        info["peft_version"] = None
    return info


def wait_for_quiet(
    threshold: float = 1.5, max_wait_s: float = 600.0, poll_s: float = 20.0, log=print
) -> dict[str, Any]:
    """Wait (at most max_wait_s) until the 1-minute load average is at or below `threshold`. Never fails: the
    load at the start of the measurement is recorded either way, with how long we waited and whether it settled."""
    start = time.monotonic()
    before = load_average()
    while os.getloadavg()[0] > threshold and time.monotonic() - start < max_wait_s:
        log(f"  load average {os.getloadavg()[0]:.2f} > {threshold}: waiting ({time.monotonic() - start:.0f}s so far)")
        time.sleep(poll_s)
    after = load_average()
    return {
        "threshold_1min": threshold,
        "waited_s": round(time.monotonic() - start, 1),
        "before": before,
        "at_start": after,
        "quiet": after["1min"] <= threshold,
    }


# ---------------------------------------------------------------------------------------------------- timing, stats
def resolve_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda asked for, but torch.cuda.is_available() is False on this machine")
    return torch.device(name)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: torch.device) -> float:
    """Seconds taken by fn(), with the device synchronized before and after."""
    synchronize(device)
    t0 = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - t0


def summarize(seconds: Iterable[float]) -> dict[str, Any]:
    """Milliseconds: median (the headline figure), quartiles, IQR, mean, std, min, max and the raw samples."""
    ms = sorted(1000.0 * s for s in seconds)
    n = len(ms)
    if n == 0:
        raise ValueError("no samples")
    q1, q3 = (statistics.quantiles(ms, n=4, method="inclusive")[i] for i in (0, 2)) if n > 1 else (ms[0], ms[0])
    return {
        "n": n,
        "median_ms": statistics.median(ms),
        "q1_ms": q1,
        "q3_ms": q3,
        "iqr_ms": q3 - q1,
        "mean_ms": statistics.fmean(ms),
        "std_ms": statistics.stdev(ms) if n > 1 else 0.0,
        "min_ms": ms[0],
        "max_ms": ms[-1],
        "samples_ms": [round(x, 3) for x in ms],
    }


# --------------------------------------------------------------------------------------------- models and methods
def build_model(name: str, task_kind: str, *, seed: int = 0, num_labels: int = 2) -> torch.nn.Module:
    """The architecture of conf/model/<name>.yaml with random weights (no download) and the head of the task
    family `task_kind` (repro.tasks): a causal LM for generation (GPT2LMHeadModel for GPT-2), a sequence classifier
    for classification."""
    torch.manual_seed(seed)
    model = build_from_arch(load_group("model", name), task_kind, num_labels)
    if getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = model.config.eos_token_id
    return model


def available_methods() -> list[str]:
    """Methods that are registered in repro.methods.METHODS and have a conf/method/<name>.yaml."""
    written = options("method")
    return [m for m in METHODS if m in written]


def apply_method(model: torch.nn.Module, name: str, **overrides: Any) -> torch.nn.Module:
    """The method `name` with its conf/method/<name>.yaml and these overrides (e.g. r=4, targets=[q, v])."""
    if name not in METHODS:
        raise KeyError(f"method {name!r} is not registered in repro.methods.METHODS (registered: {sorted(METHODS)})")
    return METHODS[name](model, load_group("method", name, **overrides))


def randomize_lora_B(model: torch.nn.Module, std: float = 0.02, seed: int = 0) -> None:
    """LoRA starts with B = 0, which makes ΔW = 0: give B trained-looking values so merging really changes W."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * std)


# -------------------------------------------------------------------------------------------------------- output
def _finite(obj: Any, path: str = "") -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        raise ValueError(f"non-finite number at {path or '<root>'}: {obj}")
    if isinstance(obj, dict):
        return {k: _finite(v, f"{path}.{k}") for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v, f"{path}[{i}]") for i, v in enumerate(obj)]
    return obj


def write_json(obj: dict, path: Path) -> Path:
    """Atomic: a temporary file in the same folder, then os.replace. Refuses NaN/inf (null means 'not measured')."""
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(_finite(obj), indent=2, allow_nan=False) + "\n"
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
    return path


def fmt(value: Any, spec: str = ".1f") -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return format(value, spec)
    return str(value)


def table(headers: list[str], rows: list[list[Any]]) -> str:
    cells = [[str(h) for h in headers]] + [[c if isinstance(c, str) else fmt(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    line = lambda r: "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths)))  # noqa: E731
    return "\n".join([line(cells[0]), "  ".join("-" * w for w in widths)] + [line(r) for r in cells[1:]])


def header(title: str, machine: dict, load: dict | None = None) -> str:
    la = (load or {}).get("at_start") or machine["load_average"]
    gpu = f", GPU {machine['gpu_name']}" if machine.get("gpu_name") else ""
    return (
        f"== {title} ==\n{machine['cpu_model']} ({machine['cpu_cores_available']} cores available, "
        f"{machine['torch_threads']} torch threads){gpu}; torch {machine['torch_version']}; device {machine['device']}; "
        f"load average {la['1min']}/{la['5min']}/{la['15min']} (1/5/15 min) at start"
    )


def save_weights(model: torch.nn.Module, path: Path) -> Path:
    """The full state dict in safetensors, each shared tensor once (GPT-2's LM head is tied to the embedding)."""
    seen, state = set(), {}
    for name, t in model.state_dict().items():
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape))
        if key not in seen:
            seen.add(key)
            state[name] = t.detach().contiguous()
    save_file(state, str(path))
    return path


def load_weights(model: torch.nn.Module, path: Path) -> torch.nn.Module:
    """Load save_weights()'s file; the only keys allowed to be missing are the tied ones, re-tied afterwards."""
    missing, unexpected = model.load_state_dict(load_file(str(path)), strict=False)
    model.tie_weights()
    state = model.state_dict()
    loaded = {state[n].data_ptr() for n in state if n not in missing}
    untied = [n for n in missing if state[n].data_ptr() not in loaded]
    if unexpected or untied:
        raise RuntimeError(f"{path.name}: missing {untied[:3]}, unexpected {unexpected[:3]}")
    return model


def weights_file(name: str, task_kind: str, folder: Path, *, seed: int = 0) -> Path:
    """A safetensors file of the random-weight model (built once: random init of GPT-2 M takes ~25 s on 2 cores,
    loading the file ~1 s), so that subprocesses and repeated loads share exactly the same weights."""
    path = Path(folder) / f"{name}-{task_kind}-seed{seed}.safetensors"
    if not path.exists():
        save_weights(build_model(name, task_kind, seed=seed), path)
    return path


def load_model_file(name: str, task_kind: str, path: Path, *, num_labels: int = 2) -> torch.nn.Module:
    """The architecture with no init (empty tensors), then the weights of `path` (tied weights re-tied)."""
    with no_init_weights():
        model = build_from_arch(load_group("model", name), task_kind, num_labels)
    load_weights(model, path)
    if getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = model.config.eos_token_id
    return model
