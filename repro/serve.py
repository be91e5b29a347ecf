"""Many LoRAs on one frozen base: switching, combining and mixed-task batches (Section 4.1, "No Additional Inference
Latency", and Section 4.2, "Practical Benefits and Limitations").

The paper's deployment: one pre-trained W0 is shared and each task keeps only its (A, B) and its head.
* Switching (Sec. 4.1): "When we need to switch to another downstream task, we can recover W0 by subtracting BA and
  then adding a different B'A'":  W <- W - s B A + s' B' A'  (`switch`), in fp32; `w0_error` measures how far W
  has drifted from W0 after any number of switches.
* Combining (what PEFT calls add_weighted_adapter, "base + lora_math + lora_poetry"):
  ΔW = Σ_i w_i s_i B_i A_i, one adapter of rank Σ r_i with A = [A_1; A_2; ...], B = [w_1 s_1 B_1, w_2 s_2 B_2, ...],
  scaling 1 -- exact, PEFT's combination_type="cat" (`combine`).
* Mixed batches (Sec. 4.2's limitation: "it is not straightforward to batch inputs to different tasks with different
  A and B in a single forward pass, if one chooses to absorb A and B into W"): left unmerged, each example i of task
  t(i) gets its own pair,  h_i = W0 x_i + s_t B_t A_t x_i,  and its own task head (`MixedBatchModel`).

A `TaskAdapter` is read from a cell's checkpoint (repro.methods.checkpoint; LoRA-family methods whose ΔW over the
pretrained W0 is low-rank: lora, rslora, lora_all_linear, and PiSSA (`init: pissa`, whichever method name), whose
ΔW = s(B A − B0 A0) over the pretrained W is served as the rank-2r pair of `pretrained_factors`) and applies to the
plain pretrained model (no LoRA modules): the paper's W is an nn.Linear weight.

    python -m repro.serve RECORD RECORD [...] [--weights W W ...] [--out-dir DIR]     (console script: repro-serve)

scores each task alone and under the weighted combination on its dev set (REPRO_DATA_DIR), checks switching, and
writes <DIR>/combination.{json,md} (default results/serve/). Each RECORD is an `ok` record of a LoRA cell whose
weights (seed<k>.safetensors) lie beside it, all on one base model.
"""

from __future__ import annotations

import copy
import json
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf
from torch import nn

from repro.cli import Deprecated, add_out_dir, command, parser
from repro.errors import ReproError
from repro.methods.common import is_head
from repro.paths import input_file, output_dir
from repro.records import write_json_atomic
from repro.results import UnreadableRecord, load_record, weights_beside

# Imported where used, not here, so that `repro-serve --help` answers before they load: repro.methods.checkpoint and
# .lora (transformers' Trainer, PEFT), repro.metrics.glue (scikit-learn), repro.models and repro.tasks (transformers,
# datasets).

# ΔW over the pretrained W0 is low-rank: s B A (LoRA, rsLoRA, all-linear), s [B, −B0] [A; A0] (PiSSA, W0 a residual)
SERVABLE = ("lora", "rslora", "pissa", "lora_all_linear")


class ServeError(ReproError):
    pass


@dataclass
class TaskAdapter:
    """One task's trained LoRA: {module name: (A, s·B)} with A r × d_in, s·B d_out × r, so ΔW = (s B) A, and the
    task head's tensors {parameter name: tensor}."""

    task: str
    factors: dict[str, tuple[torch.Tensor, torch.Tensor]]
    head: dict[str, torch.Tensor]
    num_labels: int
    source: str = ""

    def delta_w(self, module: str) -> torch.Tensor:
        A, sB = self.factors[module]
        return sB @ A

    @classmethod
    def from_checkpoint(cls, path: str | Path, base: nn.Module, task: str | None = None) -> TaskAdapter:
        """The checkpoint's LoRA as factors over the pretrained weights of `base` (the plain pretrained model, left
        unchanged): a copy of `base` is adapted with the checkpoint's method and its LoRA tensors loaded, and each
        module's `pretrained_factors` taken (PiSSA's B0, A0 come from `base`'s W, as in training). The head is the
        checkpoint's (it may have another width than `base`'s)."""
        # heavy: see the imports above
        from repro.methods.checkpoint import load_trainable, read_trainable
        from repro.methods.lora import LoRALinear, lora_modules
        from repro.methods.registry import apply_method

        tensors, meta = read_trainable(Path(path))
        name = meta.get("method_name")
        if name not in SERVABLE:
            raise ServeError(
                f"{path}: method {name!r} cannot be served by switching or combining (ΔW over the pretrained W0 must "
                f"be low-rank, s·B A); allowed: {', '.join(SERVABLE)}"
            )
        method = OmegaConf.create(json.loads(meta["method"]))
        adapted = apply_method(copy.deepcopy(base), method)
        load_trainable(adapted, path, method, only="lora")
        factors = {}
        for module, _, lora in lora_modules(adapted):
            if not isinstance(lora, LoRALinear):
                raise ServeError(f"{path}: {module} is a fused (GPT-2 c_attn) LoRA; serving handles nn.Linear targets")
            A, B = lora.pretrained_factors(lora.targets[0])
            factors[module] = (A, lora.scaling * B)
        head = {k: v.float() for k, v in tensors.items() if is_head(k)}
        return cls(task or meta.get("task", ""), factors, head, num_labels=_num_labels(head), source=str(path))

    @classmethod
    def random(
        cls, model: nn.Module, task: str, r: int, targets=("query", "value"), std: float = 0.05, seed: int = 0
    ) -> TaskAdapter:
        """A LoRA with random A and B on every nn.Linear whose name ends in one of `targets`, and a random copy of the
        model's head: for tests and benchmarks (scores need trained adapters, timings do not)."""
        g = torch.Generator().manual_seed(seed)
        factors = {}
        for name, mod in model.named_modules():
            if isinstance(mod, nn.Linear) and name.split(".")[-1] in targets and not is_head(name + "."):
                factors[name] = (
                    torch.randn(r, mod.in_features, generator=g) * std,
                    torch.randn(mod.out_features, r, generator=g) * std,
                )
        head = {
            k: p.detach().float() + torch.randn(p.shape, generator=g) * std
            for k, p in model.named_parameters()
            if is_head(k)
        }
        return cls(task, factors, head, num_labels=_num_labels(head))


OUTPUT_LAYERS = ("classifier.out_proj.weight", "classifier.weight", "score.weight")  # RoBERTa; BERT, DeBERTa; Llama


def _num_labels(head: dict[str, torch.Tensor]) -> int:
    """The output width of the head's last layer."""
    key = next((k for k in OUTPUT_LAYERS if k in head), None)
    if key is None:
        raise ServeError(f"no output layer among the head's tensors {sorted(head)}; expected one of {OUTPUT_LAYERS}")
    return int(head[key].shape[0])


# ------------------------------------------------------------------------------------------------------ switching
def _linear(model: nn.Module, name: str) -> nn.Linear:
    mod = model.get_submodule(name)
    if not isinstance(mod, nn.Linear):
        raise ServeError(f"{name} is a {type(mod).__name__}; serving adapts nn.Linear weights")
    return mod


def fold(model: nn.Module, adapter: TaskAdapter, sign: int = 1, weight: float = 1.0) -> None:
    """W <- W + sign · weight · s B A for every matrix the adapter adapts (in fp32, cast back to W's dtype)."""
    with torch.no_grad():
        for module in adapter.factors:
            W = _linear(model, module).weight
            W.copy_((W.float() + sign * weight * adapter.delta_w(module)).to(W.dtype))


def load_head(model: nn.Module, head: dict[str, torch.Tensor]) -> None:
    """Put a task's head into the model; a head of another width (STS-B's 1 output vs SST-2's 2) replaces the tensor."""
    with torch.no_grad():
        for name, value in head.items():
            mod_name, attr = name.rsplit(".", 1)
            mod = model.get_submodule(mod_name)
            old = getattr(mod, attr)
            if old.shape == value.shape:
                old.copy_(value)
            else:
                setattr(mod, attr, nn.Parameter(value.clone().to(old.dtype), requires_grad=False))
                if isinstance(mod, nn.Linear) and attr == "weight":
                    mod.out_features = value.shape[0]


class Switchboard:
    """One frozen base serving one task at a time, merged (zero added latency): `switch(adapter)` unmerges the active
    adapter and merges the next (Sec. 4.1). Keeps a copy of W0 only to measure drift (`w0_error`)."""

    def __init__(self, model: nn.Module):
        self.model, self.active = model.eval(), None
        self._w0 = {n: p.detach().clone() for n, p in model.named_parameters()}

    def switch(self, adapter: TaskAdapter | None) -> nn.Module:
        if self.active is not None:
            fold(self.model, self.active, sign=-1)  # W0 = W - s B A
        if adapter is not None:
            fold(self.model, adapter, sign=+1)  # W = W0 + s' B' A'
            load_head(self.model, adapter.head)
        self.active = adapter
        return self.model

    def w0_error(self) -> float:
        """max |W - W0| over every non-head weight (0 up to fp32 rounding once no adapter is active)."""
        params = dict(self.model.named_parameters())
        return max(
            float((params[n].detach().float() - w.float()).abs().max()) for n, w in self._w0.items() if not is_head(n)
        )


def combine(adapters: list[TaskAdapter], weights: list[float], head_of: TaskAdapter) -> TaskAdapter:
    """ΔW = Σ_i w_i s_i B_i A_i as one adapter (rank Σ r_i): A = [A_1; A_2; ...] stacked by rows, B = [w_1 s_1 B_1 |
    w_2 s_2 B_2 | ...] by columns, so B A = Σ_i w_i s_i B_i A_i exactly (PEFT add_weighted_adapter, "cat"). The head is
    `head_of`'s: a combined model still needs one task's head to score that task."""
    if len(adapters) != len(weights):
        raise ServeError(f"{len(adapters)} adapters but {len(weights)} weights")
    factors = {}
    for module in sorted({m for a in adapters for m in a.factors}):
        parts = [
            (a.factors[module][0], w * a.factors[module][1]) for a, w in zip(adapters, weights) if module in a.factors
        ]
        factors[module] = (torch.cat([A for A, _ in parts], 0), torch.cat([sB for _, sB in parts], 1))
    label = " + ".join(f"{w:g}·{a.task}" for a, w in zip(adapters, weights))
    return TaskAdapter(f"{label} (head: {head_of.task})", factors, head_of.head, head_of.num_labels)


# ---------------------------------------------------------------------------------------------------- mixed batch
class MixedLoRALinear(nn.Module):
    """h_i = W0 x_i + b + (s B)_t A_t x_i with t = task_ids[i]: every example its own task's pair, in one forward.
    Pairs of smaller rank (or tasks that do not adapt this matrix) are zero-padded to the largest rank: exact."""

    def __init__(self, base: nn.Linear, pairs: list[tuple[torch.Tensor, torch.Tensor] | None]):
        super().__init__()
        self.weight, self.bias = base.weight, base.bias
        r = max(A.shape[0] for A, _ in filter(None, pairs))
        self.register_buffer("lora_A", torch.zeros(len(pairs), r, base.in_features))  # T × r × d_in
        self.register_buffer("lora_B", torch.zeros(len(pairs), base.out_features, r))  # T × d_out × r (s·B)
        for t, pair in enumerate(pairs):
            if pair is not None:
                self.lora_A[t, : pair[0].shape[0]] = pair[0]
                self.lora_B[t, :, : pair[1].shape[1]] = pair[1]
        self.task_ids: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = nn.functional.linear(x, self.weight, self.bias)  # W0 x + b: shared by the batch
        A, B = self.lora_A[self.task_ids], self.lora_B[self.task_ids]  # b × r × d_in, b × d_out × r
        return h + torch.einsum("b...r,bor->b...o", torch.einsum("b...i,bri->b...r", x, A), B)


class MixedLinear(nn.Module):
    """A task head's nn.Linear with one (W_t, b_t) per task, chosen per example; outputs zero-padded to the widest."""

    def __init__(self, weights: list[torch.Tensor], biases: list[torch.Tensor | None]):
        """biases[t] None: task t's head has no bias (Llama's `score`): zero."""
        super().__init__()
        d_out, d_in = max(w.shape[0] for w in weights), weights[0].shape[1]
        self.register_buffer("weight", torch.zeros(len(weights), d_out, d_in))
        self.register_buffer("bias", torch.zeros(len(weights), d_out))
        for t, (w, b) in enumerate(zip(weights, biases)):
            self.weight[t, : w.shape[0]] = w
            if b is not None:
                self.bias[t, : b.shape[0]] = b
        self.task_ids: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        W, b = self.weight[self.task_ids], self.bias[self.task_ids]
        return torch.einsum("b...i,boi->b...o", x, W) + b.view(b.shape[0], *([1] * (x.dim() - 2)), -1)


class MixedBatchModel(nn.Module):
    """A copy of the frozen base in which every adapted nn.Linear is a MixedLoRALinear and every head nn.Linear a
    MixedLinear over `adapters` (task t = adapters[t]). `forward(task_ids, **inputs)` returns each example's logits,
    the first num_labels of its task valid (the rest padding)."""

    def __init__(self, base: nn.Module, adapters: list[TaskAdapter]):
        super().__init__()
        self.model, self.adapters = copy.deepcopy(base).eval(), adapters
        self.mixed: list[nn.Module] = []
        for module in sorted({m for a in adapters for m in a.factors}):
            self._replace(
                module, MixedLoRALinear(_linear(self.model, module), [a.factors.get(module) for a in adapters])
            )
        head_modules = sorted({k.rsplit(".", 1)[0] for k in adapters[0].head})
        for module in head_modules:
            if not isinstance(self.model.get_submodule(module), nn.Linear):
                raise ServeError(f"head module {module} is not an nn.Linear; a mixed batch needs per-task Linear heads")
            self._replace(
                module,
                MixedLinear(
                    [a.head[f"{module}.weight"] for a in adapters], [a.head.get(f"{module}.bias") for a in adapters]
                ),
            )

    def _replace(self, name: str, new: nn.Module) -> None:
        parent, attr = name.rsplit(".", 1) if "." in name else ("", name)
        setattr(self.model.get_submodule(parent) if parent else self.model, attr, new)
        self.mixed.append(new)

    @torch.no_grad()
    def forward(self, task_ids: torch.Tensor, **inputs) -> torch.Tensor:
        for m in self.mixed:
            m.task_ids = task_ids
        return self.model(**inputs).logits


# -------------------------------------------------------------------------------------------- dev scores (CLI)
def _cell(record_path: Path) -> tuple[dict, OmegaConf, Path]:
    """A record given on the command line, checked: readable, ok, with its weights beside it; the dev set's data
    folder set."""
    input_file(record_path, "record", kind="json")
    try:
        loaded = load_record(record_path)
    except UnreadableRecord as exc:
        raise ServeError(str(exc)) from None
    record = loaded.raw
    if not isinstance(record.get("config"), dict) or not (record["config"].get("model") or {}).get("name"):
        raise ServeError(f"{record_path}: not a record of repro.run (no resolved `config` with a model)")
    if record.get("status") != "ok":
        raise ServeError(f"{record_path}: status {record.get('status')!r}; only ok cells have trained adapters")
    cfg = OmegaConf.create(record["config"])
    data_dir = os.environ.get("REPRO_DATA_DIR")
    if not data_dir:
        raise ServeError("set REPRO_DATA_DIR to the offline data folder (e.g. ../shared/data) to score on dev")
    cfg.paths.data_dir = data_dir
    return record, cfg, weights_beside(loaded)


def dev_score(model: nn.Module, cfg, tokenizer, dev, batch_size: int = 64) -> dict[str, float]:
    """The task's GLUE metrics on its dev set (repro.metrics.glue, as the runner scores)."""
    from transformers import DataCollatorWithPadding  # heavy: see the imports above

    from repro.metrics.glue import glue_metrics, predictions

    keep = [c for c in ("input_ids", "attention_mask", "token_type_ids", "label") if c in dev.column_names]
    loader = torch.utils.data.DataLoader(
        dev.select_columns(keep), batch_size=batch_size, collate_fn=DataCollatorWithPadding(tokenizer)
    )
    logits, labels = [], []
    model.eval()
    with torch.no_grad():
        for batch in loader:
            labels.append(batch.pop("labels").numpy())
            logits.append(model(**batch).logits.float().numpy())
    preds = predictions(np.concatenate(logits), int(cfg.task.num_labels))
    return glue_metrics(list(cfg.task.metrics), preds, np.concatenate(labels))


def combination_report(record_paths: list[Path], weights: list[float], switches: int = 10) -> dict:
    """Each task's dev score alone (its adapter merged) and under the weighted combination (its own head), and the
    drift of W from W0 after `switches` switches between the adapters."""
    from repro.models import load_model, load_tokenizer  # heavy: see the imports above
    from repro.tasks import family

    cells = [_cell(p) for p in record_paths]
    base_cfg = cells[0][1]
    if len({c.model.name for _, c, _ in cells}) != 1:
        raise ServeError(
            "the records must share one base model; got " + ", ".join(sorted({c.model.name for _, c, _ in cells}))
        )
    torch.manual_seed(0)
    tokenizer = load_tokenizer(base_cfg.model, base_cfg.paths.data_dir)
    base = load_model(base_cfg.model, cells[0][1].task, tokenizer)
    adapters = [TaskAdapter.from_checkpoint(w, base, task=c.task.name) for _, c, w in cells]
    out = {"base_model": base_cfg.model.name, "weights": weights, "tasks": []}
    board = Switchboard(base)
    for k in range(switches):  # switch around and come back to W0
        board.switch(adapters[k % len(adapters)])
    board.switch(None)
    out["switching"] = {"switches": switches, "max_abs_w_minus_w0": board.w0_error()}
    for (record, cfg, _), adapter in zip(cells, adapters):
        dev = family(cfg.task.kind).load_data(cfg, tokenizer)["dev"]
        model = board.model
        scores = {}
        for label, adapt in (("alone", adapter), ("combined", combine(adapters, weights, head_of=adapter))):
            board.switch(adapt)
            scores[label] = dev_score(model, cfg, tokenizer, dev)
            board.switch(None)
        main = cfg.task.main_metric
        out["tasks"].append(
            {
                "task": cfg.task.name,
                "record": str(record_paths[len(out["tasks"])]),
                "main_metric": main,
                "record_score": record["metrics"][main],
                "alone": scores["alone"][main],
                "combined": scores["combined"][main],
                "delta": scores["combined"][main] - scores["alone"][main],
            }
        )
    return out


def markdown(report: dict) -> str:
    w = " + ".join(f"{x:g}·ΔW_{t['task']}" for x, t in zip(report["weights"], report["tasks"]))
    lines = [
        f"# Two LoRAs combined on one {report['base_model']} base: W0 + {w}",
        "",
        "Generated by `python -m repro.serve` from the committed records (each task scored with its own head).",
        "",
        "| task | metric | record | alone (re-scored) | combined | Δ |",
        "|---|---|---|---|---|---|",
    ]
    for t in report["tasks"]:
        lines.append(
            f"| {t['task']} | {t['main_metric']} | {t['record_score']:.4f} | {t['alone']:.4f} | "
            f"{t['combined']:.4f} | {t['delta']:+.4f} |"
        )
    s = report["switching"]
    lines += [
        "",
        f"Switching (Sec. 4.1): after {s['switches']} switches between the adapters and unmerging the last, "
        f"max |W − W0| = {s['max_abs_w_minus_w0']:.2e} (fp32 rounding).",
    ]
    return "\n".join(lines) + "\n"


@command
def main(argv: list[str] | None = None) -> int:
    p = parser("serve", __doc__)
    p.add_argument("records", nargs="+", type=Path, help="two or more ok records of LoRA cells on one base model")
    p.add_argument("--weights", nargs="+", type=float, help="w_i of the combination (default: 1 each)")
    add_out_dir(p, "results/serve", old_out=False)
    p.add_argument(
        "--out", dest="out_stem", type=Path, action=Deprecated, new="--out-dir DIR (writes DIR/combination.*)"
    )
    args = p.parse_args(argv)
    if len(args.records) < 2:
        raise ServeError("give at least two records to combine")
    weights = args.weights or [1.0] * len(args.records)
    if len(weights) != len(args.records) or not all(math.isfinite(w) for w in weights):
        raise ServeError(f"--weights={args.weights}: one finite number per record ({len(args.records)})")
    stem = args.out_stem or Path(args.out_dir or "results/serve") / "combination"
    output_dir(stem.parent, "--out-dir")
    for record in args.records:
        _cell(record)  # every record checked before anything loads
    report = combination_report(args.records, weights)
    stem.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(stem.with_suffix(".json"), report)
    stem.with_suffix(".md").write_text(markdown(report))
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
