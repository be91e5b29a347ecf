"""Adapter checkpoints: only the trained tensors, in safetensors, with the metadata needed to rebuild the method.

File layout: the tensors of `trainable_state_dict(model)` under their parameter names (LoRA keys: see
repro.methods.lora), and string metadata:
  format = "repro-trainable-v1", method (JSON of the method config), method_name, r, alpha, targets (JSON),
  fan_in_fan_out ("true" for GPT-2's Conv1D), init, model (our model name), model_type, base_model (hub id),
  task, head_keys (JSON list of the task-head tensors), and where the cell is known: source_fingerprint (the
  fingerprint of the cell that wrote it, as in its record), steps (JSON: optimizer steps taken), smoke (JSON: null, or
  why the run was a smoke run: repro.cell.smoke_reason); AdaLoRA: rank_pattern (JSON {module: allocated rank}).
The caller that knows the cell (repro.run) passes its fingerprint and smoke reason in: this module reads neither the
records nor the command line.
`load_trainable` refuses a file that does not fit the model or the method config, so that evaluating, say, a
LoRA checkpoint with another alpha is impossible (alpha/r lives outside the tensors: microsoft/LoRA #151).
"""

from __future__ import annotations

import copy
import json
import os
import re
from pathlib import Path

import torch
from omegaconf import DictConfig, ListConfig, OmegaConf
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from repro.errors import CellMismatch, ReproError
from repro.methods.adalora import rank_pattern
from repro.methods.common import is_head, trainable_state_dict
from repro.methods.lora import delta_weights, lora_scaling
from repro.methods.registry import apply_method
from repro.methods.targets import BLOCK_MODULES

FORMAT = "repro-trainable-v1"
# method fields that change the model's function or its tensors' shapes (training-only fields may differ)
STRUCTURAL = (
    "name",
    "r",
    "alpha",
    "targets",
    "sites",
    "activation",
    "adapter_layernorm",
    "train_layernorm",
    "drop",
    "l_p",
    "l_i",
    "mode",
    "top_layers",
    "rslora",
)
LORA_KEYS = ("name", "r", "alpha", "targets", "rslora", "pissa")  # what must match for init_from (only="lora")


def _method_dict(method_cfg) -> dict:
    d = OmegaConf.to_container(method_cfg, resolve=True) if isinstance(method_cfg, DictConfig) else dict(method_cfg)
    out = {k: d[k] for k in STRUCTURAL if k in d}
    if d.get("init") == "pissa":  # PiSSA's A, B only fit the residual W_res its own SVD left in the base
        out["pissa"] = True
    return out


def metadata_for(
    model: nn.Module,
    cfg: DictConfig,
    steps: int | None = None,
    fingerprint: str | None = None,
    smoke: str | None = None,
) -> dict[str, str]:
    m = cfg.method
    state_keys = [n for n, p in model.named_parameters() if p.requires_grad]
    return {
        "format": FORMAT,
        "method": json.dumps(OmegaConf.to_container(m, resolve=True)),
        "method_name": str(m.name),
        "r": json.dumps(m.get("r")),
        "alpha": json.dumps(m.get("alpha")),
        "targets": json.dumps(
            OmegaConf.to_container(m.targets) if isinstance(m.get("targets"), ListConfig) else m.get("targets")
        ),  # a list, or "all_linear"
        "fan_in_fan_out": json.dumps(model.config.model_type == "gpt2"),
        "init": str(m.get("init")),
        "model": str(cfg.model.name),
        "model_type": str(model.config.model_type),
        "base_model": str(cfg.model.get("hub_id") or cfg.model.name),
        "task": str(cfg.task.name) if "task" in cfg else "",
        "head_keys": json.dumps([k for k in state_keys if is_head(k)]),
        **({"source_fingerprint": fingerprint} if fingerprint is not None else {}),
        "steps": json.dumps(steps),
        "smoke": json.dumps(smoke),
        **_adalora_metadata(model),
    }


def _adalora_metadata(model: nn.Module) -> dict[str, str]:
    """AdaLoRA: the allocated rank of each matrix (PEFT's rank_pattern; not the non-zero entries of E)."""
    if not hasattr(model, "_adalora_tuner"):
        return {}
    return {"rank_pattern": json.dumps(rank_pattern(model))}


def save_trainable(
    model: nn.Module,
    path: Path,
    cfg: DictConfig,
    steps: int | None = None,
    *,
    fingerprint: str | None = None,
    smoke: str | None = None,
) -> None:
    """Atomic: written to a temporary name in the same folder, then renamed. `steps`: optimizer steps taken;
    `fingerprint`: the fingerprint of the cell that trained it (its record's; a cell that starts from this file hashes
    it, repro.records.fingerprint); `smoke`: why the run was a smoke run (repro.cell.smoke_reason), None if not."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    save_file(trainable_state_dict(model), str(tmp), metadata=metadata_for(model, cfg, steps, fingerprint, smoke))
    os.replace(tmp, path)


def read_trainable(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    path = Path(path)
    if not path.exists():
        raise ReproError(f"adapter checkpoint {path} does not exist")
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    if meta.get("format") != FORMAT:
        raise CellMismatch(f"{path} is not a repro adapter checkpoint (metadata format={meta.get('format')!r})")
    return tensors, meta


def load_trainable(
    model: nn.Module, path: Path, method_cfg: DictConfig, only: str | None = None, model_name: str | None = None
) -> list[str]:
    """Copy the checkpoint's tensors into `model` (already adapted by `apply_method(model, method_cfg)`).

    Refuses (CellMismatch) a checkpoint whose method or structural settings (r, alpha, targets, ...) differ from
    `method_cfg`, whose model type (or `model_name`) differs, with missing/unexpected keys or shape mismatches.
    only="lora": load just the LoRA tensors (`lora_A`/`lora_B`): e.g. the MNLI start for RTE/MRPC/STS-B, whose
    3-way head does not fit. Returns the loaded keys."""
    tensors, meta = read_trainable(path)
    saved, wanted = _method_dict(json.loads(meta["method"])), _method_dict(method_cfg)
    diff = {k: (saved.get(k), wanted.get(k)) for k in set(saved) | set(wanted) if saved.get(k) != wanted.get(k)}
    if only == "lora":  # the LoRA part must match; the rest of the method config is the new cell's business
        diff = {k: v for k, v in diff.items() if k in LORA_KEYS}
    if diff:
        raise CellMismatch(
            f"{path} was trained with a different method config; (checkpoint, requested): "
            + ", ".join(f"{k}={a!r} vs {b!r}" for k, (a, b) in sorted(diff.items()))
        )
    if meta.get("model_type") != model.config.model_type or (model_name and meta.get("model") != model_name):
        raise CellMismatch(
            f"{path} is for model {meta.get('model')} ({meta.get('model_type')}), "
            f"not {model_name or ''} ({model.config.model_type})"
        )
    if any(getattr(m, "merged", False) for m in model.modules()):
        raise CellMismatch("the model's LoRA weights are merged: unmerge before loading new LoRA tensors")
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    if only == "lora":
        params = {n: p for n, p in params.items() if ".lora_" in n}
        tensors = {n: t for n, t in tensors.items() if ".lora_" in n}
    elif only is not None:
        raise ValueError(f"only={only!r}; allowed: None, 'lora'")
    missing, unexpected = sorted(set(params) - set(tensors)), sorted(set(tensors) - set(params))
    if missing or unexpected:
        raise CellMismatch(
            f"{path} does not fit the model: missing {missing[:5]}{'...' if len(missing) > 5 else ''} "
            f"({len(missing)}), unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''} ({len(unexpected)})"
        )
    bad = [
        f"{n}: {tuple(tensors[n].shape)} vs {tuple(p.shape)}" for n, p in params.items() if tensors[n].shape != p.shape
    ]
    if bad:
        raise CellMismatch(f"{path} does not fit the model (checkpoint vs model shapes): {'; '.join(bad[:5])}")
    with torch.no_grad():
        for n, p in params.items():
            p.copy_(tensors[n].to(p.dtype))
    return sorted(params)


def read_metadata(path: str | Path) -> dict[str, str]:
    """A checkpoint's metadata, without reading its tensors ({} if the file does not exist)."""
    if not Path(path).exists():
        return {}
    with safe_open(str(path), framework="pt") as f:
        return f.metadata() or {}


def source_fingerprint(path: str | Path) -> str | None:
    """The fingerprint of the cell that wrote the checkpoint at `path`; None if there is none (yet)."""
    return read_metadata(path).get("source_fingerprint")


def init_from(model: nn.Module, path: str | Path, method_cfg: DictConfig, allow_smoke: bool = False) -> list[str]:
    """cfg.train.init_from: start from another cell's LoRA (the paper's MNLI start for MRPC, RTE, STS-B).
    A smoke run's checkpoint is refused unless `allow_smoke` (train.allow_smoke_init)."""
    path = Path(path)
    if not path.exists():
        raise ReproError(
            f"train.init_from={path} does not exist: run the cell that writes it first "
            f"(the MNLI cell of the same model, method and seed)"
        )
    smoke = json.loads(read_metadata(path).get("smoke") or "null")
    if smoke and not allow_smoke:
        raise ReproError(
            f"train.init_from={path} was written by a smoke run ({smoke}): not a start for a table cell. "
            "Re-run that cell without shortening it on the command line (force=true), or pass "
            "train.allow_smoke_init=true to chain smoke cells on purpose"
        )
    return load_trainable(model, path, method_cfg, only="lora")


_LAYER = re.compile(r"\.(\d+)\.(.+)\.lora_A(?:\.(\w+))?$")


def load_delta_weights(path: Path, base_model: nn.Module | None = None) -> list[tuple[int, str, torch.Tensor]]:
    """(layer, target, ΔW) in fp32, d_out × d_in, for every adapted matrix of a LoRA-family checkpoint.

    Without `base_model`: from the factors alone, ΔW = γ B A with γ = alpha/r (alpha/√r for rsLoRA): LoRA, rsLoRA,
    all-linear. AdaLoRA (ΔW = (alpha/r_k) B (A ⊙ E), r_k a frozen tensor of the module), DoRA (ΔW = W' − W0) and PiSSA (ΔW = γ(B A − B0 A0), B0 A0 from W's SVD) need the pretrained weights:
    pass `base_model` (the unadapted model the cell started from); it is adapted with the checkpoint's method
    config, loaded, and ΔW taken from the modules (repro.methods.lora.delta_weights)."""
    tensors, meta = read_trainable(path)
    method = json.loads(meta["method"])
    if base_model is not None:
        cfg = OmegaConf.create(method)
        model = apply_method(copy.deepcopy(base_model), cfg)
        load_trainable(model, path, cfg, only="lora")
        return sorted(delta_weights(model), key=lambda x: (x[0], x[1]))
    if method.get("name") in ("dora", "adalora") or method.get("init") == "pissa":
        raise CellMismatch(f"{path}: {method.get('name')}'s ΔW is not γ B A; pass base_model= (the pretrained model)")
    scaling = lora_scaling(method["alpha"], method["r"], bool(method.get("rslora", False)))
    by_path = {p: t for t, p in BLOCK_MODULES[meta["model_type"]].items()}
    out = []
    for key in sorted(tensors):
        m = _LAYER.search(key)
        if not m:
            continue
        layer, module_path, part = int(m.group(1)), m.group(2), m.group(3)
        target = part or by_path[module_path]
        B = tensors[key.replace(".lora_A", ".lora_B")]
        out.append((layer, target, scaling * (B.float() @ tensors[key].float())))
    return sorted(out, key=lambda x: (x[0], x[1]))
