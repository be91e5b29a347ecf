"""LoRA factors (A, B, alpha/r) from what the runner wrote, or from a model in memory; and the pretrained W they adapt.

The only contract relied on (repro/methods/lora.py):

* a plain Linear module at path P has trained tensors `P.lora_A` (r × d_in) and `P.lora_B` (d_out × r);
* GPT-2's fused `attn.c_attn` has one pair per adapted projection: `P.lora_A.q`, `P.lora_B.q`, `P.lora_A.v`, ...
  (other Conv1D targets the same with their own part name: `attn.c_proj.lora_A.o`, ...);
* ΔW = (alpha / r) · B A, d_out × d_in (h = ΔW x), in fp32; rsLoRA (method `rslora: true`): (alpha / √r) · B A;
* DoRA and PiSSA have no such factorisation (ΔW = W' − W0, resp. γ(B A − B0 A0)): they are refused here; their ΔW
  comes from repro.methods.checkpoint.load_delta_weights(path, base_model) or repro.methods.lora.delta_weights(model);
* the checkpoint `<cell>/seed<k>.safetensors` carries metadata `method` = JSON of the method config (r, alpha,
  targets) and `model` = the model config name (conf/model/<model>.yaml).

Nothing else of the method's code is used here: the analysis reads any checkpoint with these keys.
`keep_factors` cuts a checkpoint down to exactly that (the factors and the metadata): the files committed beside
the Section 7 cells' records.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from omegaconf import OmegaConf
from safetensors import safe_open
from safetensors.torch import save_file
from transformers.pytorch_utils import Conv1D

from repro.analysis.linalg import delta_from_factors
from repro.config import load_group
from repro.methods.lora import lora_scaling
from repro.models import load_model

KEY = re.compile(r"^(?P<module>.+)\.lora_(?P<which>[AB])(?:\.(?P<part>[A-Za-z0-9_]+))?$")

# module-path suffix -> the paper's name of the matrix (RoBERTa/BERT, DeBERTa-v2, GPT-2, LLaMA-style)
SUFFIX_TARGET = [
    ("attention.self.query", "q"),
    ("attention.self.key", "k"),
    ("attention.self.value", "v"),
    ("attention.self.query_proj", "q"),
    ("attention.self.key_proj", "k"),
    ("attention.self.value_proj", "v"),
    ("attention.output.dense", "o"),
    ("intermediate.dense", "mlp_in"),
    ("output.dense", "mlp_out"),
    ("attn.c_proj", "o"),
    ("mlp.c_fc", "mlp_in"),
    ("mlp.c_proj", "mlp_out"),
    ("q_proj", "q"),
    ("k_proj", "k"),
    ("v_proj", "v"),
    ("o_proj", "o"),
    ("gate_proj", "mlp_gate"),
    ("up_proj", "mlp_in"),
    ("down_proj", "mlp_out"),
]
FACTORED_METHODS = (None, "lora", "lora_all_linear", "rslora", "qlora")  # ΔW = γ B A exactly
FUSED_PARTS = {"attn.c_attn": ("q", "k", "v")}  # GPT-2: W_q | W_k | W_v column blocks of the Conv1D weight


def target_of(module_path: str, part: str | None) -> str:
    if part is not None:
        return part
    for suffix, target in SUFFIX_TARGET:  # attention.output.dense before output.dense: listed first
        if module_path == suffix or module_path.endswith("." + suffix):
            return target
    return module_path.rsplit(".", 1)[-1]


def layer_of(module_path: str) -> int:
    nums = [int(p) for p in module_path.split(".") if p.isdigit()]
    if not nums:
        raise ValueError(f"no layer index in module path {module_path!r}")
    return nums[0]


@dataclass
class Factor:
    """One adapted weight matrix: its A (r × d_in), B (d_out × r), scaling alpha/r and where it lives."""

    layer: int
    target: str
    module: str  # module path in the model (checkpoint key prefix)
    part: str | None  # fused-module part (GPT-2 c_attn: q / v), else None
    A: torch.Tensor
    B: torch.Tensor
    scaling: float

    @property
    def r(self) -> int:
        return int(self.A.shape[0])

    def delta(self) -> torch.Tensor:
        """ΔW = (alpha/r) B A, fp32, d_out × d_in."""
        return delta_from_factors(self.A, self.B, self.scaling)


@dataclass
class Adapter:
    """Every LoRA pair of one trained cell, keyed (layer, target)."""

    factors: dict[tuple[int, str], Factor]
    r: int
    alpha: float
    model: str | None = None  # conf/model/<model>.yaml name
    task: str | None = None
    source: str = ""  # checkpoint path or "model"
    method: dict = field(default_factory=dict)
    record: dict | None = None  # the cell's JSON record, when loaded beside the checkpoint

    @property
    def scaling(self) -> float:
        return lora_scaling(self.alpha, self.r, bool(self.method.get("rslora", False)))

    @property
    def layers(self) -> list[int]:
        return sorted({l for l, _ in self.factors})

    @property
    def targets(self) -> list[str]:
        order = ["q", "k", "v", "o", "mlp_in", "mlp_out"]
        ts = {t for _, t in self.factors}
        return sorted(ts, key=lambda t: (order.index(t) if t in order else len(order), t))

    def __getitem__(self, key: tuple[int, str]) -> Factor:
        return self.factors[key]


def _orient(A: torch.Tensor, B: torch.Tensor, r: int | None, key: str) -> tuple[torch.Tensor, torch.Tensor]:
    """A must be r × d_in and B d_out × r. A checkpoint that stores them transposed (fan-in-fan-out) is turned round
    when the shapes say so unambiguously; anything else is an error."""
    if A.shape[0] == B.shape[1] and (r is None or A.shape[0] == r):
        return A, B
    if r is not None and A.shape[1] == r and B.shape[0] == r:
        return A.T, B.T
    raise ValueError(f"{key}: LoRA factors of shapes A {tuple(A.shape)}, B {tuple(B.shape)} do not match r={r}")


def factors_from_state_dict(
    state: dict[str, torch.Tensor],
    r: int | None,
    alpha: float | None,
    scalings: dict[str, float] | None = None,
    rslora: bool = False,
) -> dict[tuple[int, str], Factor]:
    """Pair up `<module>.lora_A[.part]` / `<module>.lora_B[.part]` keys. scalings: per module path (from a model);
    else alpha / r for all (alpha / √r if rslora)."""
    pairs: dict[tuple[str, str | None], dict[str, torch.Tensor]] = {}
    for key, tensor in state.items():
        m = KEY.match(key)
        if m:
            pairs.setdefault((m["module"], m["part"]), {})[m["which"]] = tensor
    out: dict[tuple[int, str], Factor] = {}
    for (module, part), ab in sorted(pairs.items(), key=lambda kv: (layer_of(kv[0][0]), kv[0][0], kv[0][1] or "")):
        if set(ab) != {"A", "B"}:
            raise ValueError(f"{module}{'.' + part if part else ''}: has lora_{''.join(ab)} but not both A and B")
        A, B = _orient(ab["A"].detach().float().cpu(), ab["B"].detach().float().cpu(), r, module)
        if scalings and module in scalings:
            scale = scalings[module]
        elif alpha is not None:
            scale = lora_scaling(float(alpha), A.shape[0], rslora)
        else:
            raise ValueError("alpha unknown: cannot form ΔW = (alpha/r) B A")
        key = (layer_of(module), target_of(module, part))
        if key in out:
            raise ValueError(f"two LoRA pairs for layer {key[0]} target {key[1]}: {out[key].module} and {module}")
        out[key] = Factor(key[0], key[1], module, part, A, B, scale)
    if not out:
        raise ValueError("no LoRA factors (keys `<module>.lora_A` / `.lora_B`) found")
    return out


def _method_from_metadata(meta: dict) -> dict:
    method = json.loads(meta["method"]) if meta.get("method") else {}
    for k in ("r", "alpha"):  # flat keys, when a writer stores them too
        if k not in method and meta.get(k) is not None:
            method[k] = json.loads(meta[k])
    return method


def load_adapter(path: str | Path) -> Adapter:
    """An Adapter from a runner checkpoint `seed<k>.safetensors` (and its record `seed<k>.json` beside it, if any)."""
    path = Path(path)
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
        state = {k: f.get_tensor(k) for k in f.keys() if ".lora_" in k}
    method = _method_from_metadata(meta)
    record = None
    rec_path = path.with_suffix(".json")
    if rec_path.exists():
        record = json.loads(rec_path.read_text())
        if not method:
            method = (record.get("config") or {}).get("method") or {}
    if method.get("name") not in FACTORED_METHODS or method.get("init") == "pissa":
        raise ValueError(
            f"{path}: method {method.get('name')!r} is not LoRA with ΔW = γ B A (DoRA, PiSSA: use "
            "repro.methods.checkpoint.load_delta_weights(path, base_model))"
        )
    r, alpha = method.get("r"), method.get("alpha")
    factors = factors_from_state_dict(state, r, alpha, rslora=bool(method.get("rslora", False)))
    r = r if r is not None else next(iter(factors.values())).r
    return Adapter(
        factors,
        int(r),
        float(alpha),
        model=meta.get("model") or (record or {}).get("model"),
        task=meta.get("task") or (record or {}).get("task"),
        source=str(path),
        method=method,
        record=record,
    )


FACTORS_FORMAT = "repro-lora-factors-v1"  # a checkpoint cut down to its LoRA factors (keep_factors)


def keep_factors(checkpoint: str | Path, out: str | Path) -> Path:
    """Write the LoRA factors of a runner checkpoint (every `<module>.lora_A[.part]` / `.lora_B[.part]` tensor) and
    its metadata to `out`, without the rest: what this module reads (load_adapter: the factors, the method config
    and the model name) and no more. The task head (a MiniLM classifier's pooler and output layer: 148,610 of the
    222,338 trainable parameters of an r=8 W_q,W_v cell) is left out, so the file cannot score or serve the cell:
    its metadata `format` is FACTORS_FORMAT, not the runner's, and repro.methods.checkpoint refuses it. The
    committed Section 7 cells carry these files (docs/usage.md, Section 7 analysis)."""
    checkpoint, out = Path(checkpoint), Path(out)
    with safe_open(str(checkpoint), framework="pt") as f:
        meta = dict(f.metadata() or {})
        state = {k: f.get_tensor(k) for k in f.keys() if KEY.match(k)}
    if not state:
        raise ValueError(f"{checkpoint}: no LoRA factors (keys `<module>.lora_A` / `.lora_B`)")
    meta.update(
        format=FACTORS_FORMAT,
        contents="the LoRA factors A and B only (the task head left out): for the Section 7 analysis "
        "(repro.analysis), not for scoring or serving the cell",
        factors_of=str(meta.get("format")),
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    save_file({k: t.contiguous() for k, t in state.items()}, str(tmp), metadata=meta)
    tmp.replace(out)
    return out


def adapter_from_model(model: torch.nn.Module, model_name: str | None = None) -> Adapter:
    """An Adapter from a LoRA model in memory: the same keys as its checkpoint (named parameters), scaling from each
    module's alpha/r."""
    state = {k: p for k, p in model.named_parameters() if ".lora_" in k}
    scalings, r, alpha = {}, None, None
    for name, module in model.named_modules():
        if hasattr(module, "lora_A") and not getattr(module, "factored", True):
            raise ValueError(
                f"{name}: ΔW is not γ B A ({type(module).__name__}, init={getattr(module, 'init', None)}); "
                "use repro.methods.lora.delta_weights(model)"
            )
        if hasattr(module, "lora_A") and hasattr(module, "r"):
            r, alpha = int(module.r), float(getattr(module, "alpha", module.r))
            scalings[name] = float(getattr(module, "scaling", alpha / r))
    factors = factors_from_state_dict(state, r, alpha, scalings)
    r = r if r is not None else next(iter(factors.values())).r
    return Adapter(factors, r, alpha if alpha is not None else float(r), model=model_name, source="model")


# ---------------------------------------------------------------- the pretrained W


_BASE_CACHE: dict[str, torch.nn.Module] = {}


def load_base_model(name: str, task_kind: str = "classification") -> torch.nn.Module:
    """The pretrained backbone of conf/model/<name>.yaml (MiniLM: offline, from its package), fp32, cached."""
    if name not in _BASE_CACHE:
        task = OmegaConf.create({"kind": task_kind, "num_labels": 2})
        _BASE_CACHE[name] = load_model(load_group("model", name), task, tokenizer=None).eval()
    return _BASE_CACHE[name]


def base_weight(model: torch.nn.Module, factor: Factor) -> torch.Tensor:
    """W0 of the matrix `factor` adapts, d_out × d_in (h = W x), fp32. For GPT-2's fused Conv1D (weight stored
    d_in × 3d: W_q | W_k | W_v column blocks) the part's block, transposed."""
    module = model.get_submodule(factor.module)
    w = module.weight.detach().float().cpu()
    if isinstance(module, Conv1D):
        w = w.T  # Conv1D: x W + b, W is d_in × d_out
        parts = next((p for suffix, p in FUSED_PARTS.items() if factor.module.endswith(suffix)), None)
        if parts is not None and factor.part is not None:
            d = w.shape[0] // len(parts)
            i = parts.index(factor.part)
            w = w[i * d : (i + 1) * d]
    expect = (factor.B.shape[0], factor.A.shape[1])
    if tuple(w.shape) != expect:
        raise ValueError(f"{factor.module}: pretrained W is {tuple(w.shape)}, ΔW is {expect}")
    return w


def base_weights(adapter: Adapter, model: torch.nn.Module | None = None) -> dict[tuple[int, str], torch.Tensor]:
    """{(layer, target): W0} for every matrix the adapter adapts."""
    if model is None:
        if not adapter.model:
            raise ValueError(f"{adapter.source}: no model name in the checkpoint metadata; pass the base model")
        model = load_base_model(adapter.model)
    return {key: base_weight(model, f) for key, f in adapter.factors.items()}
