"""W&B (repro/tracking.py): a run per cell named and grouped by the cell, the environment's WANDB_* winning over the
config, and an offline run whose config holds the cell's resolved config and fingerprint, with the record as an
artifact."""

from __future__ import annotations

import json
import struct
from pathlib import Path

from repro import records, tracking
from repro.cell import resolve_cell
from repro.run import run_cell

CELL = ["+table=glue", "model=tiny-roberta", "method=lora", "task=rte", "debug=smoke"]


def test_run_settings_name_group_tags_and_the_environment_wins(compose_config, monkeypatch):
    for var in ("WANDB_MODE", "WANDB_PROJECT", "WANDB_ENTITY", "WANDB_DIR"):
        monkeypatch.delenv(var, raising=False)
    overrides = ["+table=glue", "model=tiny-roberta", "method=rslora", "task=rte", "debug=smoke", "seed=3"]
    overrides += ["wandb.tags=[a,b]", "wandb.notes=why"]
    cfg = resolve_cell(compose_config(overrides), overrides)
    s = tracking.init_settings(cfg, "f00d")
    assert s["name"] == "glue/tiny-roberta/rslora/rte/seed3" and s["group"] == "glue/tiny-roberta/rslora/rte"
    assert s["tags"] == ["glue", "tiny-roberta", "rslora", "rte", "smoke", "a", "b"] and s["notes"] == "why"
    assert (s["mode"], s["project"], s["entity"], s["dir"]) == ("offline", "lora-repro", None, cfg.paths.log_dir)
    assert s["config"]["method"]["r"] == cfg.method.r and s["config"]["fingerprint"] == "f00d"
    monkeypatch.setenv("WANDB_MODE", "online")
    monkeypatch.setenv("WANDB_PROJECT", "mine")
    monkeypatch.setenv("WANDB_ENTITY", "me")
    monkeypatch.setenv("WANDB_DIR", "/somewhere")
    s = tracking.init_settings(cfg, "f00d")
    assert (s["mode"], s["project"], s["entity"], s["dir"]) == ("online", "mine", "me", "/somewhere")
    grouped = [*overrides, "wandb.group=sweep-7"]
    assert tracking.init_settings(resolve_cell(compose_config(grouped), grouped), "f00d")["group"] == "sweep-7"


def wandb_records(path: Path) -> list:
    """The records of a run's transaction log (run-<id>.wandb), which wandb 0.31 writes offline and no longer ships a
    reader for: LevelDB's log format (a 7-byte file header; 32 KiB blocks of chunks, each a 7-byte header (crc32,
    length, type: 1 full, 2 first, 3 middle, 4 last) and its bytes), each record a wandb_internal_pb2.Record."""
    from wandb.proto import wandb_internal_pb2

    data, block, pos, chunks, out = path.read_bytes(), 32768, 7, b"", []
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        left = block - pos % block
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if left < 7 or (length == 0 and kind == 0):  # the block's padding
            pos += left
            continue
        chunks += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(chunks)
            out.append(record)
            chunks = b""
    return out


def test_offline_run_carries_the_cell(compose_config, data_dir, monkeypatch, tmp_path):
    """30.4: WANDB_MODE=offline in a tmp dir: the offline run directory's config holds method.r and the fingerprint,
    its name and group are the cell's, and the record (with the weights) is an artifact."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wb"))
    for var, sub in (("WANDB_DATA_DIR", "data"), ("WANDB_CACHE_DIR", "cache"), ("WANDB_CONFIG_DIR", "config")):
        monkeypatch.setenv(var, str(tmp_path / sub))  # wandb stages artifacts and settings there, not under ~
    overrides = [*CELL, "wandb.enabled=true", "method.r=4"]
    cfg = resolve_cell(compose_config(overrides), overrides)
    record = run_cell(cfg)
    assert record["status"] == "ok", record.get("error")
    [run_dir] = (tmp_path / "wb" / "wandb").glob("offline-run-*")
    log = wandb_records(next(run_dir.glob("run-*.wandb")))
    [run] = [r.run for r in log if r.WhichOneof("record_type") == "run"]
    config = {c.key: json.loads(c.value_json) for c in run.config.update}
    assert config["method"]["r"] == 4 and config["fingerprint"] == record["fingerprint"]
    assert config["train"]["max_steps"] == 5  # the resolved config, the preset applied
    assert run.display_name == "glue/tiny-roberta/lora/rte/seed0" and run.run_group == "glue/tiny-roberta/lora/rte"
    assert {"glue", "tiny-roberta", "lora", "rte", "smoke"} <= set(run.tags)
    [artifact] = [r.artifact for r in log if r.WhichOneof("record_type") == "artifact"]
    assert artifact.type == "cell" and artifact.name == "glue-tiny-roberta-lora-rte-seed0"
    assert {e.path for e in artifact.manifest.contents} >= {"seed0.json", "seed0.safetensors"}
    assert records.record_path(cfg).exists()
