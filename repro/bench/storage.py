"""Storage and task switching (Section 4.2): checkpoint bytes per method (only the trained tensors, adapter + task
head, in safetensors) against the full model, and the time to switch a resident model to another task by
loading + merging a LoRA adapter versus loading a fully fine-tuned checkpoint from disk.

Files live in a temporary folder. "warm" loads read from the page cache (the files were just written); "cold"
loads first ask the kernel to drop the file's cached pages (posix_fadvise DONTNEED, no root needed), so the
bytes come from the disk, as for a checkpoint that has not been read recently.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from repro.bench import common
from repro.bench.train import FULL_MODELS, QUICK_MODELS, overrides_for
from repro.methods import parameter_counts
from repro.methods.common import trainable_state_dict
from repro.methods.lora import merge, unmerge


def drop_page_cache(path: Path) -> bool:
    try:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
        return True
    except (OSError, AttributeError):
        return False


def checkpoint_sizes(model_name: str, task_kind: str, weights: Path, methods: list[str], folder: Path) -> list[dict]:
    full = weights.stat().st_size
    rows = []
    for method in methods:
        try:
            model = common.apply_method(
                common.load_model_file(model_name, task_kind, weights), method, **overrides_for(model_name, method)
            )
            counts = parameter_counts(model)
            path = folder / f"{model_name}-{method}.safetensors"
            if method == "ft":
                common.save_weights(model, path)  # the whole model (GPT-2's tied embedding once)
            else:
                save_file(trainable_state_dict(model), str(path))
            size = path.stat().st_size
            path.unlink()
            rows.append(
                {
                    "model": model_name,
                    "method": method,
                    "status": "ok",
                    "overrides": overrides_for(model_name, method),
                    "params": counts,
                    "checkpoint_bytes": size,
                    "full_model_bytes": full,
                    "fraction_of_full": size / full,
                    "full_over_checkpoint": full / size,
                }
            )
        except Exception as exc:  # noqa: BLE001
            rows.append(
                {"model": model_name, "method": method, "status": "error", "error": f"{type(exc).__name__}: {exc}"}
            )
    return rows


def task_switch(model_name: str, task_kind: str, weights: Path, folder: Path, switches: int) -> dict[str, Any]:
    """Resident LoRA model: unmerge the current task's ΔW, load the next adapter file, merge. Versus a resident
    model into which the next task's full fine-tuned checkpoint is loaded. Alternating tasks A, B, A, ..."""
    over = overrides_for(model_name, "lora")
    model = common.apply_method(common.load_model_file(model_name, task_kind, weights), "lora", **over).eval()
    w0 = {
        n: p.detach().clone()
        for n, p in model.named_parameters()
        if not p.requires_grad
        and "weight" in n
        and p.dim() == 2
        and "lora" not in n
        and ("attn" in n or "attention" in n)
    }
    adapters = []
    for task in ("A", "B"):
        common.randomize_lora_B(model, seed=ord(task))
        with torch.no_grad():
            for n, p in model.named_parameters():
                if p.requires_grad and "lora_B" not in n:
                    p.add_(torch.randn_like(p) * 0.01)
        path = folder / f"{model_name}-lora-{task}.safetensors"
        save_file(trainable_state_dict(model), str(path))
        adapters.append(path)
    ft_paths = []
    for task in ("A", "B"):
        path = folder / f"{model_name}-ft-{task}.safetensors"
        path.write_bytes(weights.read_bytes())  # a full checkpoint: same size and layout as the model
        ft_paths.append(path)
    ft_model = common.load_model_file(model_name, task_kind, weights).eval()
    for path in [*adapters, *ft_paths]:  # no dirty pages under writeback while timing
        fd = os.open(path, os.O_RDONLY)
        os.fsync(fd)
        os.close(fd)

    with torch.no_grad():
        state = load_file(str(adapters[0]))
        model.load_state_dict(state, strict=False)
        merge(model)

    def lora_switch(path: Path) -> None:
        with torch.no_grad():
            unmerge(model)
            state = load_file(str(path))
            missing, unexpected = model.load_state_dict(state, strict=False)
            if unexpected:
                raise RuntimeError(f"adapter keys not in the model: {unexpected[:3]}")
            merge(model)

    def ft_switch(path: Path) -> None:
        with torch.no_grad():
            common.load_weights(ft_model, path)

    cpu = torch.device("cpu")
    out: dict[str, Any] = {
        "model": model_name,
        "switches": switches,
        "merge_impl": "repro.methods.lora",
        "lora_adapter_bytes": adapters[0].stat().st_size,
        "ft_checkpoint_bytes": ft_paths[0].stat().st_size,
    }
    for cache in ("warm", "cold"):
        samples: dict[str, list[float]] = {"lora": [], "ft": []}
        dropped = True
        lora_switch(adapters[1]), ft_switch(ft_paths[1])  # warm-up, not timed
        lora_switch(adapters[0]), ft_switch(ft_paths[0])
        for k in range(switches):
            order = ("lora", "ft") if k % 2 == 0 else ("ft", "lora")
            for kind in order:
                path = (adapters if kind == "lora" else ft_paths)[(k + 1) % 2]
                if cache == "cold":
                    dropped &= drop_page_cache(path)
                fn = lora_switch if kind == "lora" else ft_switch
                samples[kind].append(common.timed(lambda: fn(path), cpu))
        out[cache] = {k: common.summarize(v) for k, v in samples.items()}
        out[cache]["ft_over_lora"] = out[cache]["ft"]["median_ms"] / out[cache]["lora"]["median_ms"]
        if cache == "cold":
            out[cache]["page_cache_dropped"] = dropped
    # merge/unmerge round trips in fp32 leave rounding drift in W: how much after all those switches
    with torch.no_grad():
        unmerge(model)
        drift = max((p.detach() - w0[n]).abs().max().item() for n, p in model.named_parameters() if n in w0)
    out["weight_drift_after_switches_max_abs"] = drift
    out["weights_checked"] = len(w0)
    return out


def run(args) -> dict[str, Any]:
    models = QUICK_MODELS if args.quick else FULL_MODELS
    if args.models:
        known = {**FULL_MODELS, **QUICK_MODELS}
        models = {m: known.get(m, "classification") for m in args.models.split(",")}
    methods = args.methods.split(",") if args.methods else common.available_methods()
    switches = args.switches or (2 if args.quick else 10)
    load = None if args.quick else common.wait_for_quiet(args.max_load, args.max_wait_s, log=print)
    machine = common.machine_info("cpu")
    started = time.monotonic()
    sizes, switching = [], []
    with tempfile.TemporaryDirectory(prefix="bench-storage-") as tmp:
        folder = Path(tmp)
        for model_name, task_kind in models.items():
            print(f"building {model_name} weights ...", flush=True)
            weights = common.weights_file(model_name, task_kind, folder)
            sizes += checkpoint_sizes(model_name, task_kind, weights, methods, folder)
            print(
                f"  task switching on {model_name}: {switches} switches per kind, warm and cold page cache", flush=True
            )
            try:
                switching.append(task_switch(model_name, task_kind, weights, folder, switches))
            except Exception as exc:  # noqa: BLE001
                switching.append({"model": model_name, "status": "error", "error": f"{type(exc).__name__}: {exc}"})
            for p in folder.glob(f"{model_name}-*"):
                p.unlink()
    result = {
        "benchmark": "storage",
        "quick": args.quick,
        "settings": {
            "format": "safetensors, fp32; adapter checkpoints hold every trained tensor (adapter + task head)",
            "switches": switches,
        },
        "load": load,
        "machine": machine,
        "machine_end_load_average": common.load_average(),
        "wall_s": round(time.monotonic() - started, 1),
        "checkpoints": sizes,
        "task_switch": switching,
    }
    print(render(result))
    return result


def human(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def render(result: dict) -> str:
    lines = [common.header("storage: checkpoint bytes and task switching", result["machine"], result["load"])]
    body, errors = [], []
    for r in result["checkpoints"]:
        if r["status"] != "ok":
            body.append([r["model"], r["method"], "-", "-", "-", "-", "-", "error*"])
            errors.append(f"* {r['model']}/{r['method']}: {r['error'][:200]}")
            continue
        body.append(
            [
                r["model"],
                r["method"],
                f"{r['params']['adapter_params'] / 1e6:.3f}M",
                f"{r['params']['trainable_params'] / 1e6:.3f}M",
                human(r["checkpoint_bytes"]),
                human(r["full_model_bytes"]),
                f"{100 * r['fraction_of_full']:.3f}%",
                f"{r['full_over_checkpoint']:.0f}x",
            ]
        )
    lines.append(
        common.table(
            ["model", "method", "|Θ|", "saved params (+head)", "checkpoint", "full model", "of full", "smaller by"],
            body,
        )
    )
    lines += errors
    body = []
    for s in result["task_switch"]:
        if s.get("status") == "error":
            lines.append(f"task switch {s['model']}: {s['error']}")
            continue
        for cache in ("warm", "cold"):
            c = s[cache]
            body.append(
                [
                    s["model"],
                    cache,
                    f"{c['lora']['median_ms']:.1f} (IQR {c['lora']['iqr_ms']:.1f})",
                    f"{c['ft']['median_ms']:.1f} (IQR {c['ft']['iqr_ms']:.1f})",
                    f"{c['ft_over_lora']:.1f}x",
                    human(s["lora_adapter_bytes"]),
                    human(s["ft_checkpoint_bytes"]),
                ]
            )
    if body:
        lines.append(
            common.table(
                [
                    "model",
                    "page cache",
                    "LoRA unmerge+load+merge ms",
                    "FT load ms",
                    "FT/LoRA",
                    "adapter file",
                    "FT file",
                ],
                body,
            )
        )
    for s in result["task_switch"]:
        if s.get("status") != "error":
            lines.append(
                f"{s['model']}: after {2 * s['switches']} LoRA task switches, max |W - W0| after unmerge = "
                f"{s['weight_drift_after_switches_max_abs']:.1e} (fp32, {s['weights_checked']} attention matrices)"
            )
    return "\n".join(lines)
