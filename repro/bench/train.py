"""Training cost of every method: step time (forward + backward + AdamW step) and peak memory, on the
roberta-base (sequence classification) and gpt2-medium (causal LM) architectures with random weights.

Each (model, method) runs in a fresh subprocess so that peak memory is its own: on CPU the kernel's peak RSS
(VmHWM, reset after the model is loaded, so it covers exactly the training steps with the weights resident),
on CUDA torch.cuda.max_memory_allocated. Beside the measured peak we account for the bytes we can name exactly:
weights, gradients, AdamW state and the activations autograd saves for backward (saved_tensors_hooks).
Our LoRA against PEFT's LoRA (same model, batch, targets, r, alpha, identical initial weights) is measured in
one process, alternating which goes first in each round.
"""

from __future__ import annotations

import copy
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

from repro import memory, tasks
from repro.bench import common
from repro.config import load_group
from repro.methods import parameter_counts
from repro.methods.common import is_head
from repro.methods.targets import BLOCK_MODULES, FUSED_QKV, model_type
from repro.precision import prepare_fast_path

RESULT_TAG = "@@BENCH_RESULT "
FULL_MODELS = {"roberta-base": "classification", "gpt2-medium": "generation"}
QUICK_MODELS = {"tiny-roberta": "classification", "tiny-gpt2": "generation"}
# batch, seq, warm-up steps, timed steps: on a 2-core CPU a gpt2-medium FT step at 8x128 takes minutes
SETTINGS = {
    "roberta-base": (8, 128, 1, 3),
    "gpt2-medium": (2, 128, 1, 2),
    "tiny-roberta": (2, 16, 1, 2),
    "tiny-gpt2": (2, 16, 1, 2),
}
CUDA_SETTINGS = {"roberta-base": (8, 128, 3, 20), "gpt2-medium": (8, 128, 3, 20)}
# the paper's LoRA settings per model family (conf/method/lora.yaml otherwise): GPT-2 r=4, alpha 32, dropout 0.1
METHOD_OVERRIDES = {("gpt2", "lora"): {"r": 4, "alpha": 32, "dropout": 0.1}}


def family(model_name: str) -> str:
    return "gpt2" if "gpt2" in model_name else "roberta"


def overrides_for(model_name: str, method: str) -> dict:
    return METHOD_OVERRIDES.get((family(model_name), method), {})


# ------------------------------------------------------------------------------------------------ in one process
def is_classifier(task_kind: str) -> bool:
    """The family's head labels whole sequences (a classifier), not tokens (a language model)."""
    return tasks.family(task_kind).head(2).num_labels is not None


def make_batch(model, task_kind: str, batch: int, seq: int, device, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random token ids; labels: one of 2 classes per sequence for a classifier, the inputs for a language model."""
    g = torch.Generator().manual_seed(seed)
    vocab = model.config.vocab_size
    ids = torch.randint(3, vocab, (batch, seq), generator=g)
    out = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    out["labels"] = torch.randint(0, 2, (batch,), generator=g) if is_classifier(task_kind) else ids.clone()
    return {k: v.to(device) for k, v in out.items()}


def peft_target_names(model, targets) -> list[str]:
    """PEFT's target_modules for our `targets` on this model: the module names of repro.methods.targets (RoBERTa/BERT
    query, value; DeBERTa query_proj, value_proj; Llama q_proj, v_proj). GPT-2 fuses W_q, W_k, W_v into one c_attn:
    PEFT adapts the whole of it with one pair (A, B), ours (loralib's MergedLinear) one pair per adapted block, so the
    two are not the same LoRA there and the comparison is refused (a ValueError saying so)."""
    mt = model_type(model)
    if mt in FUSED_QKV:
        raise ValueError(
            f"{mt} fuses W_q, W_k, W_v into {FUSED_QKV[mt][0]}: PEFT's LoRA adapts it whole, ours per projection "
            "(loralib's MergedLinear); not the same LoRA, not compared"
        )
    return sorted({BLOCK_MODULES[mt][t].split(".")[-1] for t in targets})


def apply_peft_lora(model, cfg) -> torch.nn.Module:
    """PEFT's LoRA with our config's r, alpha, dropout on the same matrices as ours; a classifier head trained as
    ours."""
    from peft import LoraConfig, get_peft_model  # optional: only for this comparison (the test extra installs it)

    pcfg = LoraConfig(
        r=cfg.r,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        target_modules=peft_target_names(model, cfg.targets),
        bias="none",
    )
    model = get_peft_model(model, pcfg)
    for name, p in model.base_model.model.named_parameters():
        if is_head(name):
            p.requires_grad = True
    return model


def prepare(model_name: str, task_kind: str, method: str, weights: Path, device) -> torch.nn.Module:
    model = common.load_model_file(model_name, task_kind, weights)
    if method == "peft_lora":
        model = apply_peft_lora(model, load_group("method", "lora", **overrides_for(model_name, "lora")))
    else:
        model = common.apply_method(model, method, **overrides_for(model_name, method))
    return model.to(device).train()


class Trainer:
    def __init__(self, model, batch, precision: str = "fp32"):
        self.model, self.batch = model, batch
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.opt = torch.optim.AdamW(self.params, lr=1e-4, weight_decay=0.01)
        self.autocast = precision != "fp32"  # bf16: the runner's CPU autocast (train.precision=bf16)

    def loss(self) -> torch.Tensor:
        with torch.autocast(self.model.device.type, dtype=torch.bfloat16, enabled=self.autocast):
            return self.model(**self.batch).loss

    def step(self) -> torch.Tensor:
        self.opt.zero_grad(set_to_none=True)
        loss = self.loss()
        loss.backward()
        self.opt.step()
        return loss.detach()

    def saved_activation_bytes(self) -> int:
        """Bytes of the non-parameter tensors autograd saves for backward in one forward (storages counted once)."""
        storages: dict[int, int] = {}

        def pack(t):
            s = t.untyped_storage()
            storages[s.data_ptr()] = max(storages.get(s.data_ptr(), 0), s.nbytes())
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            loss = self.loss()
        loss.backward()
        self.opt.zero_grad(set_to_none=True)
        params = {p.untyped_storage().data_ptr() for p in self.model.parameters()}
        return sum(n for ptr, n in storages.items() if ptr not in params)

    def state_bytes(self) -> dict[str, int]:
        weights = sum(p.numel() * p.element_size() for p in self.model.parameters())
        trainable = sum(p.numel() * p.element_size() for p in self.params)
        optim = sum(
            t.numel() * t.element_size()
            for s in self.opt.state.values()
            for t in s.values()
            if torch.is_tensor(t) and t.dim() > 0
        )
        return {"weights": weights, "grads": trainable, "optimizer": optim}


def worker(spec: dict) -> dict[str, Any]:
    """One (model, method): load, (reset the peak), warm up, time `steps` steps, account memory."""
    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    device = torch.device(spec["device"])
    torch.manual_seed(0)
    model = prepare(spec["model"], spec["task_kind"], spec["method"], Path(spec["weights"]), device)
    counts = parameter_counts(model if spec["method"] != "peft_lora" else model.base_model.model)
    precision = spec.get("precision", "fp32")
    engine = prepare_fast_path(model, precision) if spec.get("fast_path") else None  # train.fast_path's changes
    trainer = Trainer(model, make_batch(model, spec["task_kind"], spec["batch"], spec["seq"], device), precision)
    rss_loaded = memory.rss_now_mb()
    hwm_reset = memory.reset_peak_rss()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    losses = [trainer.step().item() for _ in range(spec["warmup"])]
    times = [common.timed(trainer.step, device) for _ in range(spec["steps"])]
    peak_rss = memory.hwm_rss_mb()
    cuda_peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    acts = trainer.saved_activation_bytes()
    return {
        "status": "ok",
        "precision": precision,
        "fast_path": engine,
        "params": counts,
        "step": common.summarize(times),
        "first_losses": losses,
        "rss_after_load_mb": rss_loaded,
        "peak_rss_mb": peak_rss if hwm_reset else None,
        "peak_rss_process_mb": memory.peak_rss_mb(),
        "peak_rss_reset": hwm_reset,
        "cuda_max_allocated_mb": cuda_peak,
        "bytes": {**trainer.state_bytes(), "saved_activations": acts},
    }


def run_worker(spec: dict, timeout_s: float) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "repro.bench.train", "--worker", json.dumps(spec)]
    started = time.monotonic()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return {"status": "error", "error": f"timed out after {timeout_s:.0f}s"}
    for line in proc.stdout.splitlines():
        if line.startswith(RESULT_TAG):
            out = json.loads(line[len(RESULT_TAG) :])
            out["subprocess_wall_s"] = round(time.monotonic() - started, 1)
            return out
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
    return {"status": "error", "error": f"exit {proc.returncode}: {tail[0][:300]}"}


# ------------------------------------------------------------------------------------------------- ours vs PEFT
def ours_vs_peft(model_name: str, task_kind: str, weights: Path, batch: int, seq: int, rounds: int, device) -> dict:
    """Same weights, same LoRA (A copied from ours into PEFT's, B set to the same random values), one process,
    alternating order; step-time ratio ours/PEFT per round; activation bytes and (CUDA) peak allocation per step."""
    cfg = load_group("method", "lora", **overrides_for(model_name, "lora"))
    base = common.load_model_file(model_name, task_kind, weights)
    ours = common.apply_method(copy.deepcopy(base), "lora", **overrides_for(model_name, "lora"))
    common.randomize_lora_B(ours)
    peft_model = apply_peft_lora(copy.deepcopy(base), cfg)
    del base
    # PEFT's names: ...query.lora_A.default.weight; ours: ...query.lora_A (both (r, d_in) / (d_out, r))
    ours_lora = {n: p for n, p in ours.named_parameters() if "lora_" in n}
    copied = 0
    with torch.no_grad():
        for n, p in peft_model.named_parameters():
            if "lora_" in n:
                key = n.removeprefix("base_model.model.").replace(".default.weight", "").replace(".base_layer", "")
                src = ours_lora[key.replace("lora_A", "lora_A").replace("lora_B", "lora_B")]
                p.copy_(src.view_as(p))
                copied += 1
    ours.to(device).train(), peft_model.to(device).train()
    data = make_batch(ours, task_kind, batch, seq, device)
    trainers = {"ours": Trainer(ours, data), "peft": Trainer(peft_model, data)}
    n_trainable = {k: sum(p.numel() for p in t.params) for k, t in trainers.items()}
    with torch.no_grad():
        ours.eval(), peft_model.eval()
        loss0 = {k: t.model(**data).loss.item() for k, t in trainers.items()}
        ours.train(), peft_model.train()
    for t in trainers.values():  # warm-up (and AdamW state allocation)
        t.step(), t.step()
    samples: dict[str, list[float]] = {"ours": [], "peft": []}
    cuda_peak: dict[str, float] = {}
    for k in range(rounds):
        for name in ("ours", "peft") if k % 2 == 0 else ("peft", "ours"):
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            samples[name].append(common.timed(trainers[name].step, device))
            if device.type == "cuda":
                cuda_peak[name] = max(cuda_peak.get(name, 0.0), torch.cuda.max_memory_allocated(device) / 2**20)
    ratios = [a / b for a, b in zip(samples["ours"], samples["peft"])]
    acts = {k: t.saved_activation_bytes() for k, t in trainers.items()}
    states = {k: t.state_bytes() for k, t in trainers.items()}
    return {
        "model": model_name,
        "batch": batch,
        "seq": seq,
        "rounds": rounds,
        "lora": {k: OmegaConf.to_container(cfg, resolve=True)[k] for k in ("r", "alpha", "dropout", "targets")},
        "lora_tensors_copied": copied,
        "trainable_params": n_trainable,
        "initial_loss": loss0,
        "initial_loss_abs_diff": abs(loss0["ours"] - loss0["peft"]),
        "step": {k: common.summarize(v) for k, v in samples.items()},
        "step_ratio_ours_over_peft": {
            "median": statistics.median(ratios),
            "min": min(ratios),
            "max": max(ratios),
            "q1": common.summarize(r / 1000 for r in ratios)["q1_ms"],
            "q3": common.summarize(r / 1000 for r in ratios)["q3_ms"],
        },
        "saved_activation_bytes": acts,
        "state_bytes": states,
        "memory_ratio_ours_over_peft": {
            "saved_activations": acts["ours"] / acts["peft"],
            "training_state": sum(states["ours"].values()) / sum(states["peft"].values()),
            **({"cuda_peak": cuda_peak["ours"] / cuda_peak["peft"]} if cuda_peak else {}),
        },
        "cuda_peak_mb": cuda_peak or None,
    }


# ---------------------------------------------------------------------------------------------------------- driver
def run(args) -> dict[str, Any]:
    device = common.resolve_device(args.device)
    models = QUICK_MODELS if args.quick else FULL_MODELS
    if args.models:
        known = {**FULL_MODELS, **QUICK_MODELS}
        models = {m: known.get(m, "classification") for m in args.models.split(",")}
    methods = args.methods.split(",") if args.methods else common.available_methods()
    try:
        import peft  # noqa: F401  -- optional: only whether it is installed

        have_peft = True
    except ImportError:
        have_peft = False
    load = None if args.quick else common.wait_for_quiet(args.max_load, args.max_wait_s, log=print)
    machine = common.machine_info(str(device))
    started = time.monotonic()
    rows, comparison, comparisons = [], None, []
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        for model_name, task_kind in models.items():
            table = CUDA_SETTINGS if device.type == "cuda" else SETTINGS
            batch, seq, warmup, steps = table.get(model_name, SETTINGS.get(model_name, (8, 128, 1, 3)))
            batch, seq, steps = args.batch or batch, args.seq or seq, args.steps or steps
            print(f"building {model_name} weights ...", flush=True)
            weights = common.weights_file(model_name, task_kind, Path(tmp))
            model_methods = list(methods)
            if have_peft and "lora" in methods:
                model_methods.append("peft_lora")
            for method in model_methods:
                spec = {
                    "model": model_name,
                    "task_kind": task_kind,
                    "method": method,
                    "weights": str(weights),
                    "batch": batch,
                    "seq": seq,
                    "warmup": warmup,
                    "steps": steps,
                    "device": str(device),
                    "threads": torch.get_num_threads(),
                    "overrides": overrides_for(model_name, method),
                    "precision": args.precision,
                    "fast_path": args.fast_path,
                }
                print(
                    f"  {model_name} / {method}: batch {batch} x seq {seq}, {warmup} warm-up + {steps} timed steps",
                    flush=True,
                )
                out = run_worker(spec, timeout_s=600 if args.quick else 1800)  # a bound on a hung worker, not a timing
                rows.append(
                    {
                        "model": model_name,
                        "task_kind": task_kind,
                        "method": method,
                        "batch": batch,
                        "seq": seq,
                        "warmup": warmup,
                        "steps": steps,
                        "overrides": spec["overrides"],
                        **out,
                    }
                )
                if out["status"] != "ok":
                    print(f"    error: {out['error']}", flush=True)
            if have_peft and "lora" in methods:
                rounds = args.peft_rounds or (2 if args.quick else 8)
                print(f"  ours vs PEFT LoRA on {model_name}: {rounds} alternating rounds", flush=True)
                try:
                    one = ours_vs_peft(model_name, task_kind, weights, batch, seq, rounds, device)
                except Exception as exc:  # noqa: BLE001
                    one = {"model": model_name, "status": "error", "error": f"{type(exc).__name__}: {exc}"}
                comparisons.append(one)
                if comparison is None and one.get("status") != "error":
                    comparison = one
    result = {
        "benchmark": "train",
        "quick": args.quick,
        "device": str(device),
        "settings": {
            "optimizer": "AdamW(lr=1e-4, weight_decay=0.01), fp32",
            "precision": f"{args.precision}{' + train.fast_path' if args.fast_path else ''} (the ours-vs-PEFT rounds: fp32)",
            "models": models,
            "method_overrides": {f"{k[0]}/{k[1]}": v for k, v in METHOD_OVERRIDES.items()},
            "peak_memory": "CPU: VmHWM reset after loading the weights (weights resident + training); "
            "CUDA: max_memory_allocated",
        },
        "load": load,
        "machine": machine,
        "machine_end_load_average": common.load_average(),
        "wall_s": round(time.monotonic() - started, 1),
        "rows": rows,
        "ratios": ratios(rows),
        "ours_vs_peft": comparison,  # the first model's (as before: the claims read it)
        "ours_vs_peft_by_model": comparisons,  # every model's, or why not
    }
    print(render(result))
    return result


def _mem(row: dict) -> float | None:
    return row.get("cuda_max_allocated_mb") or row.get("peak_rss_mb")


def ratios(rows: list[dict]) -> dict[str, Any]:
    out = {}
    for model in dict.fromkeys(r["model"] for r in rows):
        by = {r["method"]: r for r in rows if r["model"] == model and r.get("status") == "ok"}
        if "lora" in by and "ft" in by:
            lo, ft = by["lora"], by["ft"]
            state = lambda r: sum(r["bytes"][k] for k in ("weights", "grads", "optimizer"))  # noqa: E731
            out[model] = {
                "lora_over_ft_step_time": lo["step"]["median_ms"] / ft["step"]["median_ms"],
                "lora_over_ft_peak_memory": _mem(lo) / _mem(ft) if _mem(lo) and _mem(ft) else None,
                "lora_over_ft_training_state": state(lo) / state(ft),
                "lora_over_ft_state_plus_activations": (state(lo) + lo["bytes"]["saved_activations"])
                / (state(ft) + ft["bytes"]["saved_activations"]),
                "peak_memory_reduction_pct": 100 * (1 - _mem(lo) / _mem(ft)) if _mem(lo) and _mem(ft) else None,
            }
    return out


def render(result: dict) -> str:
    mb = lambda b: b / 2**20  # noqa: E731
    memcol = "CUDA peak MiB" if result["device"] == "cuda" else "peak RSS MiB"
    lines = [common.header("train: step time and peak memory", result["machine"], result["load"])]
    body, errors = [], []
    for r in result["rows"]:
        if r.get("status") != "ok":
            body.append(
                [r["model"], r["method"], f"{r['batch']}x{r['seq']}", "-", "-", "-", "-", "-", "-", "-", "-", "error*"]
            )
            errors.append(f"* {r['model']}/{r['method']}: {r['error'][:200]}")
            continue
        b = r["bytes"]
        body.append(
            [
                r["model"],
                r["method"],
                f"{r['batch']}x{r['seq']}",
                f"{r['params']['adapter_params'] / 1e6:.2f}M",
                f"{r['params']['trainable_params'] / 1e6:.2f}M",
                r["step"]["median_ms"],
                r["step"]["n"],
                _mem(r),
                mb(b["weights"]),
                mb(b["grads"] + b["optimizer"]),
                mb(b["saved_activations"]),
                "",
            ]
        )
    lines.append(
        common.table(
            [
                "model",
                "method",
                "BxS",
                "|Θ|",
                "trainable",
                "step ms (median)",
                "n",
                memcol,
                "weights MiB",
                "grad+Adam MiB",
                "saved act MiB",
                "note",
            ],
            body,
        )
    )
    lines += errors
    for model, q in result["ratios"].items():
        lines.append(
            f"{model}: LoRA/FT step time {q['lora_over_ft_step_time']:.2f}, peak memory "
            f"{common.fmt(q['lora_over_ft_peak_memory'], '.2f')} ({common.fmt(q['peak_memory_reduction_pct'], '.0f')}% less), "
            f"weights+grads+Adam {q['lora_over_ft_training_state']:.2f}, "
            f"+saved activations {q['lora_over_ft_state_plus_activations']:.2f}"
        )
    c = result.get("ours_vs_peft")
    if c and c.get("status") != "error":
        sr = c["step_ratio_ours_over_peft"]
        lines.append(
            f"ours vs PEFT LoRA ({c['model']}, {c['batch']}x{c['seq']}, r={c['lora']['r']}, {','.join(c['lora']['targets'])}; "
            f"{c['rounds']} alternating rounds): step ours {c['step']['ours']['median_ms']:.1f} ms, PEFT "
            f"{c['step']['peft']['median_ms']:.1f} ms, ratio ours/PEFT median {sr['median']:.3f} "
            f"(IQR {sr['q1']:.3f}-{sr['q3']:.3f}); saved activations ratio {c['memory_ratio_ours_over_peft']['saved_activations']:.3f}, "
            f"training state ratio {c['memory_ratio_ours_over_peft']['training_state']:.3f}; "
            f"same initial loss |Δ|={c['initial_loss_abs_diff']:.1e}"
        )
    elif c:
        lines.append(f"ours vs PEFT: {c['error']}")
    for c in result.get("ours_vs_peft_by_model", []):
        if c.get("status") == "error":
            lines.append(f"ours vs PEFT on {c['model']}: not compared: {c['error']}")
        else:
            lines.append(
                f"ours vs PEFT on {c['model']}: step ratio ours/PEFT {c['step_ratio_ours_over_peft']['median']:.3f}, "
                f"same initial loss |Δ|={c['initial_loss_abs_diff']:.1e}, {c['lora_tensors_copied']} tensors copied"
            )
    return "\n".join(lines)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--worker":
        try:
            result = worker(json.loads(sys.argv[2]))
        except Exception as exc:  # noqa: BLE001 - reported to the parent as a row
            result = {"status": "error", "error": f"{type(exc).__name__}: {exc}"}
        print(RESULT_TAG + json.dumps(result), flush=True)
