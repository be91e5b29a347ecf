"""One cell over several processes (torchrun): what the runner needs before and after the Trainer's own use of them.

    torchrun --nproc_per_node=2 -m repro.run +table=glue model=tiny-roberta method=lora task=rte

Every rank composes the same config, loads the same data and model and trains (the Trainer wraps the model in DDP
and splits batches); rank 0 alone decides whether the cell is skipped, takes the cell lock, writes the record and the
weights and removes the checkpoints, and tells the other ranks (`broadcast`). Generation cells split the test inputs
over the ranks for decoding (`shard`/`all_gather`) and score on rank 0.

The default process group is initialized here (nccl on GPUs, gloo on the CPU) before the Trainer builds its
TrainingArguments: accelerate's PartialState reuses an initialized group. The runner's own small messages go over a
separate gloo group, so they work the same on GPUs and CPUs.
"""

from __future__ import annotations

import datetime
import os

import torch
import torch.distributed as dist

# the Trainer's default ddp_timeout: rank 0's record/weights/scoring while the others wait stays well inside it
TIMEOUT = datetime.timedelta(seconds=1800)
_group = None


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def is_main() -> bool:
    return rank() == 0


def init() -> None:
    """Under torchrun (WORLD_SIZE > 1): the default process group and the runner's gloo group; else nothing."""
    global _group
    if world_size() <= 1 or _group is not None:
        return
    if not dist.is_initialized():
        backend = "gloo"
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
            backend = "nccl"
        dist.init_process_group(backend=backend, timeout=TIMEOUT)
    _group = dist.new_group(backend="gloo", timeout=TIMEOUT)


def active() -> bool:
    return _group is not None


def broadcast(obj):
    """Rank 0's obj on every rank (obj as given when not distributed)."""
    if not active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0, group=_group)
    return box[0]


def barrier() -> None:
    if active():
        dist.barrier(group=_group)


def all_gather(obj) -> list:
    """[obj of rank 0, obj of rank 1, ...] on every rank ([obj] when not distributed)."""
    if not active():
        return [obj]
    out = [None] * world_size()
    dist.all_gather_object(out, obj, group=_group)
    return out


def shard(items: list) -> list:
    """This rank's share of items: every world_size-th, from position rank (all of them when not distributed)."""
    return items[rank() :: world_size()] if active() else list(items)


def unshard(parts: list[list], n: int) -> list:
    """The inverse of shard: parts[r] holds items r, r + W, r + 2W, ... of n."""
    out = [None] * n
    for r, part in enumerate(parts):
        out[r :: len(parts)] = part
    return out
