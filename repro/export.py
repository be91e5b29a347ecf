"""A trained cell's adapter as a PEFT adapter folder (adapter_config.json + adapter_model.safetensors), which
`PeftModel.from_pretrained(base, folder)` loads with the cell's outputs:

    python -m repro.export peft results/glue_cpu/minilm/lora/rte/seed0.json --out-dir exports/rte-lora
    python -m repro.export peft results/variants_cpu --out-dir exports/variants     # every record under a folder

A record is exported from the checkpoint beside it (`seed<k>.safetensors`, written by the runner, not committed) and
the cell's pretrained model (loaded as the cell loaded it; PiSSA needs its weights). A folder: every record under it,
each into <out-dir>/<its path under the folder, without .json>/.

What PEFT (0.21) represents, and how each of our methods is written in it (the files are written by PEFT itself:
a PeftModel is built on the pretrained model with the config below, our tensors are copied into it, save_pretrained):
* LoRA, rsLoRA (`use_rslora`), all-linear targets, DoRA (`use_dora`, the magnitude in lora_magnitude_vector): as they
  are, one (A, B) per adapted module, the task head in modules_to_save.
* PiSSA (`init: pissa`, any method name): our frozen W0 is the residual W − s B0 A0, so the adapter is written as the
  rank-2r LoRA on the pretrained W that PEFT's own conversion writes (`path_initial_model_for_weight_conversion`):
  A' = [A; A0], B' = [B, −B0], lora_alpha doubled (× √2 under rsLoRA) so the scaling stays
  (repro.methods.lora `pretrained_factors`).
* GPT-2's fused c_attn: our one rank-r pair per adapted projection (loralib's MergedLinear) is PEFT's one pair on the
  whole c_attn of rank Σr, A' = [A_q; A_v], B' block-diagonal (zero rows for k): the same ΔW (rank_pattern carries the
  modules whose rank differs from `r`). DoRA there: the magnitude of k's rows is ‖W_k‖_row (a factor of exactly 1).
* QLoRA: the LoRA tensors as a plain LoRA adapter; they reproduce the cell only on the same 4-bit base (load the base
  with bitsandbytes NF4, double quantization, fp32 compute, as conf/method/qlora.yaml).
* AdaLoRA: PEFT's AdaLoraConfig (the cell's), its allocated ranks in rank_pattern (the triplets whose λ is not 0).
Not representable (refused with one line): full fine-tuning, BitFit, adapters, prefix tuning (PEFT's prefix tuning is
another parametrisation), and any method whose trained tensors are more than LoRA factors and the task head.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import sys
from collections import Counter
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn
from transformers import set_seed

from repro.errors import CellMismatch, ReproError
from repro.methods import apply_method
from repro.methods.adalora import TUNER as ADALORA_TUNER
from repro.methods.checkpoint import load_trainable
from repro.methods.common import is_head
from repro.methods.dora import DoRAConv1D, DoRALinear
from repro.methods.lora import LoRAConv1D, lora_modules
from repro.models import load_model, load_tokenizer
from repro.results import Record, weights_beside

PEFT_REPRESENTS = ("lora", "rslora", "pissa", "dora", "lora_all_linear", "qlora", "adalora")
DORA = (DoRALinear, DoRAConv1D)


def _head_modules(model: nn.Module) -> list[str]:
    """The task head's modules for modules_to_save (RoBERTa `classifier`, BERT `classifier` + `pooler`, Llama `score`)."""
    heads = set()
    for name, p in model.named_parameters():
        if p.requires_grad and is_head(name):
            heads.add("pooler" if "pooler." in name else name.split(".")[0])
    return sorted(heads)


def _task_type(model: nn.Module) -> str:
    return "SEQ_CLS" if type(model).__name__.endswith("ForSequenceClassification") else "CAUSAL_LM"


def _check_trained_tensors(model: nn.Module, method: str) -> None:
    extra = [n for n, p in model.named_parameters() if p.requires_grad and ".lora_" not in n and not is_head(n)]
    if extra:
        raise CellMismatch(
            f"method={method} trains {extra[0]} (and {len(extra) - 1} more) besides LoRA factors and the task head: "
            f"PEFT's LoRA format cannot hold it; exportable methods: {', '.join(PEFT_REPRESENTS)}"
        )


def _peft_factors(module) -> tuple[torch.Tensor, torch.Tensor]:
    """(A', B') of one adapted module in PEFT's layout (A' r' × d_in, B' d_out × r'; for a Conv1D d_out = all its
    output columns): ΔW over the pretrained W = scaling · B' A'."""
    if not isinstance(module, LoRAConv1D):
        return module.pretrained_factors(module.targets[0])
    pairs = {t: module.pretrained_factors(t) for t in module.targets}
    A = torch.cat([pairs[t][0] for t in module.targets], 0)
    B = torch.zeros(module.nf, A.shape[0])
    col = 0
    for t in module.targets:
        lo, r = module.parts.index(t) * module.d_part, pairs[t][0].shape[0]
        B[lo : lo + module.d_part, col : col + r] = pairs[t][1]
        col += r
    return A, B


def _peft_alpha(scaling: float, r: int, rslora: bool) -> float:
    """lora_alpha for which PEFT's scaling (alpha / r, or alpha / √r with use_rslora) is `scaling`."""
    return scaling * (math.sqrt(r) if rslora else r)


def lora_config(model: nn.Module, method: DictConfig, base_model: str) -> tuple[dict, dict]:
    """(LoraConfig keyword arguments, {module name: (A', B', magnitude or None)}) for a LoRA-family adapted model."""
    modules = {name: m for name, _, m in lora_modules(model)}
    if not modules:
        raise CellMismatch(f"method={method.name}: the model has no LoRA modules to export")
    rslora = bool(method.get("rslora", False))
    tensors, shapes = {}, {}
    for name, m in modules.items():
        A, B = _peft_factors(m)
        magnitude = None
        if isinstance(m, DORA):
            W = m.weight.detach().float()
            magnitude = torch.linalg.norm(W.T if isinstance(m, LoRAConv1D) else W, dim=1)  # ‖W0‖_row: factor 1
            for t in m.targets:
                lo = m.parts.index(t) * m.d_part if isinstance(m, LoRAConv1D) else 0
                magnitude[lo : lo + len(m.magnitude(t))] = m.magnitude(t).detach().float()
        tensors[name] = (A, B, magnitude)
        shapes[name] = (A.shape[0], _peft_alpha(m.scaling, A.shape[0], rslora))
    (r, alpha), _ = Counter(shapes.values()).most_common(1)[0]
    kwargs = {
        "task_type": _task_type(model),
        "r": r,
        "lora_alpha": alpha,
        "rank_pattern": {n: s[0] for n, s in shapes.items() if s[0] != r},
        "alpha_pattern": {n: s[1] for n, s in shapes.items() if s != (r, alpha)},
        "use_rslora": rslora,
        "use_dora": any(isinstance(m, DORA) for m in modules.values()),
        "lora_dropout": float(method.get("dropout", 0.0)),
        "target_modules": sorted(modules),
        "fan_in_fan_out": any(isinstance(m, LoRAConv1D) for m in modules.values()),
        "modules_to_save": _head_modules(model) or None,
        "bias": "none",
        "init_lora_weights": True,
        "base_model_name_or_path": base_model,
    }
    return kwargs, tensors


def _with_head(base: nn.Module, model: nn.Module) -> nn.Module:
    """A copy of the pretrained model holding the cell's trained head (modules_to_save copies it from there)."""
    out = copy.deepcopy(base)
    head = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad and is_head(n)}
    params = dict(out.named_parameters())
    with torch.no_grad():
        for n, value in head.items():
            if n not in params or params[n].shape != value.shape:
                raise CellMismatch(f"the pretrained model has no head tensor {n} of shape {tuple(value.shape)}")
            params[n].copy_(value)
    return out


def export_peft(model: nn.Module, base: nn.Module, cfg: DictConfig, out_dir: str | Path) -> Path:
    """Write `model`'s adapter (our adapted model: a cell's, tensors loaded) as a PEFT adapter folder for `base` (the
    plain pretrained model the cell started from, left unchanged). Refused (CellMismatch) for a method PEFT does not
    represent. Returns `out_dir`."""
    import peft  # optional dependency (the test and adalora extras): only the export writes PEFT's format

    method = cfg.method
    if method.name not in PEFT_REPRESENTS:
        raise CellMismatch(
            f"method={method.name}: PEFT has no format that represents it; exportable methods: "
            f"{', '.join(PEFT_REPRESENTS)}"
        )
    if any(getattr(m, "merged", False) for m in model.modules()):
        raise CellMismatch("the model's LoRA weights are merged: unmerge before exporting")
    _check_trained_tensors(model, method.name)
    base_model = str(cfg.model.get("hub_id") or cfg.model.name)
    if hasattr(model, ADALORA_TUNER):
        peft_model = _adalora_peft_model(model, base, base_model)
    else:
        kwargs, tensors = lora_config(model, method, base_model)
        peft_model = peft.get_peft_model(_with_head(base, model), peft.LoraConfig(**kwargs))
        with torch.no_grad():
            for name, (A, B, magnitude) in tensors.items():
                layer = peft_model.base_model.model.get_submodule(name)
                layer.lora_A["default"].weight.copy_(A)
                layer.lora_B["default"].weight.copy_(B)
                if magnitude is not None:
                    layer.lora_magnitude_vector["default"].weight.copy_(magnitude)
    peft_model.peft_config["default"].base_model_name_or_path = base_model  # get_peft_model takes the model's own
    out_dir = Path(out_dir)
    peft_model.save_pretrained(str(out_dir))
    return out_dir


def _adalora_peft_model(model: nn.Module, base: nn.Module, base_model: str) -> nn.Module:
    """PEFT's AdaLoRA model on `base` with the cell's config, tensors and allocated ranks (rank_pattern: the
    triplets whose λ is not 0, which save_pretrained keeps)."""
    import peft  # optional dependency, as in export_peft

    config = copy.deepcopy(getattr(model, ADALORA_TUNER).peft_config["default"])
    config.base_model_name_or_path = base_model
    config.task_type = _task_type(model)
    config.modules_to_save = _head_modules(model) or None
    config.inference_mode = False
    trained = {n: p.detach() for n, p in model.named_parameters() if ".lora_" in n}
    config.rank_pattern = {
        n.removesuffix(".default"): (p != 0).view(-1).tolist() for n, p in trained.items() if ".lora_E" in n
    }
    peft_model = peft.get_peft_model(_with_head(base, model), config)
    params = dict(peft_model.named_parameters())
    with torch.no_grad():
        for n, value in trained.items():
            params[f"base_model.model.{n}"].copy_(value)
    return peft_model


# -------------------------------------------------------------------------------------------------- command line
def _records(path: Path) -> list[tuple[Path, Path]]:
    """(record, its adapter folder below --out-dir: "." for a single record) for a record file or a folder."""
    if path.is_file():
        return [(path, Path())]
    if path.is_dir():
        found = sorted(path.rglob("seed*.json"))
        if not found:
            raise ReproError(f"{path}: no records (seed*.json) under this folder")
        return [(p, p.relative_to(path).with_suffix("")) for p in found]
    raise ReproError(f"{path} does not exist: give a record (results/<table>/.../seed<k>.json) or a folder of them")


def exportable_cell(record_path: Path) -> tuple[DictConfig, Path]:
    """(the cell's config, its checkpoint) of an ok record of a method PEFT represents, whose checkpoint is beside it;
    otherwise ReproError, with what is wrong."""
    try:
        record = Record.from_dict(json.loads(record_path.read_text()), record_path)
        cfg = OmegaConf.create(record.config)
        name = cfg.method.name
    except (OSError, UnicodeDecodeError, ValueError, AttributeError) as exc:  # JSONDecodeError is a ValueError
        raise ReproError(f"{record_path}: not a readable record ({type(exc).__name__}: {exc})") from exc
    if not record.ok:
        raise ReproError(f"{record_path}: status {record.status!r}; only ok cells have a trained adapter")
    if name not in PEFT_REPRESENTS:
        raise CellMismatch(
            f"{record_path}: method={name}: PEFT has no format that represents it; exportable methods: "
            f"{', '.join(PEFT_REPRESENTS)}"
        )
    return cfg, weights_beside(record)


def export_cell(cfg: DictConfig, weights: Path, out_dir: Path) -> Path:
    """Rebuild the cell's adapted model (its pretrained model loaded as the runner loads it, the checkpoint's tensors),
    then `export_peft` it into `out_dir`."""
    data_dir = os.environ.get("REPRO_DATA_DIR") or (cfg.get("paths") or {}).get("data_dir")
    set_seed(cfg.seed)  # as the runner, before loading: a tiny model's random weights (`source: tiny`) depend on it
    tokenizer = load_tokenizer(cfg.model, data_dir)
    base = load_model(cfg.model, cfg.task, tokenizer)
    model = apply_method(copy.deepcopy(base), cfg.method)
    load_trainable(model, weights, cfg.method, model_name=cfg.model.name)
    return export_peft(model.eval(), base, cfg, out_dir)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m repro.export", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="format", required=True)
    pp = sub.add_parser("peft", help="a PEFT adapter folder (adapter_config.json + adapter_model.safetensors)")
    pp.add_argument("source", type=Path, help="a record (seed<k>.json, its checkpoint beside it) or a folder of them")
    pp.add_argument("--out-dir", type=Path, required=True, help="the adapter folder (a folder of them for a folder)")
    args = p.parse_args(argv)
    try:
        cells = [(record, below, *exportable_cell(record)) for record, below in _records(args.source)]  # all first
        for record, below, cfg, weights in cells:
            print(f"{record} -> {export_cell(cfg, weights, args.out_dir / below)}")
    except ReproError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
