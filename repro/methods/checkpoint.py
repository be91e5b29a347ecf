"""Adapter checkpoints: only the trained tensors, in safetensors, with the metadata needed to rebuild the method."""

from __future__ import annotations

import json
import os
from pathlib import Path

from omegaconf import DictConfig, OmegaConf
from safetensors.torch import save_file
from torch import nn

from repro.methods.common import trainable_state_dict


def save_trainable(model: nn.Module, path: Path, cfg: DictConfig) -> None:
    """Atomic: written to a temporary name, then renamed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    metadata = {
        "method": json.dumps(OmegaConf.to_container(cfg.method, resolve=True)),
        "model": cfg.model.name,
        "base_model": str(cfg.model.get("hub_id") or cfg.model.name),
        "task": cfg.task.name,
    }
    tmp = path.with_name(f".{path.name}.tmp")
    save_file(trainable_state_dict(model), str(tmp), metadata=metadata)
    os.replace(tmp, path)
