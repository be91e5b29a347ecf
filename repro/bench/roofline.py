"""This machine's matrix-product roofline at each model's own shapes, and how close training steps and decoding come
to it (issue 27): `python -m repro.bench roofline [--models smollm2-135m,minilm] [--quick]`.

In one run, per model (random weights of its conf/model architecture, no download):
- matmul throughput, fp32 and bf16, of each weight matrix of one block (SmolLM2: q, k, v, o, gate, up, down; MiniLM:
  query, key, value, attention output, intermediate, output) and of the LM head, on `tokens` rows (batch x sequence);
  GFLOP/s = 2 m k n / time, the median of timed calls after warm-up;
- the block roofline: all the block's weight matrices on those rows, one after the other, total FLOPs / total time
  (bf16 and fp32): the rate a training step is measured against;
- training steps (`train_steps`): each engine (reference fp32, reference bf16 autocast, the fast path:
  train.fast_path) under LoRA and FT, timed in alternation in this process, on a batch whose first half of positions
  are context (label -100) for a causal LM. FLOPs per step from the tokens it really processed (the attention mask's
  ones; padding counted apart: none in these batches): 4 N T for LoRA (forward and input gradients: no weight
  gradients for the frozen weights), 6 N T for FT, N = the parameters of the block weight matrices (the LM head and
  embeddings left out: SmolLM2 106M of 134.5M); the achieved fraction = (FLOPs / step time) / block roofline (bf16);
- decoding (causal LMs): the fast beam search (repro.decode, bf16 copy, beam 10, batches of 16) on random prompts;
  tokens/s = the rows the model processed per second (prompt tokens and every beam's step), FLOPs 2 N' per token (N'
  with the LM head, which runs on every beam's last position), its fraction of the bf16 matmul rate of one decode
  step's MLP shape (16 inputs x 10 beams rows).

Figures drift 20-30% between runs on a shared CPU and by several times under load: every ratio here is taken within
one run; the full run waits for a quiet machine (--max-load) and records the load.
Writes results/bench/roofline.json (roofline-quick.json with --quick).
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from repro import tasks
from repro.bench import common
from repro.decode import BeamSettings, beam_search
from repro.precision import prepare_fast_path
from repro.tasks.generation import CompletionLoss

FULL = {"models": ["smollm2-135m", "minilm"], "batch": 8, "seq": 128, "steps": 3, "matmul_s": 0.5, "decode_inputs": 16}
QUICK = {"models": ["tiny-llama"], "batch": 2, "seq": 16, "steps": 1, "matmul_s": 0.02, "decode_inputs": 2}
ENGINES = ("fp32", "bf16", "bf16+fast")  # train.precision, and whether train.fast_path is on
METHODS = {"lora": ({"r": 4, "alpha": 32, "dropout": 0.1}, 4), "ft": ({}, 6)}  # overrides, FLOPs per parameter-token


# ------------------------------------------------------------------------------------------------------ matmuls
def matmul_gflops(m: int, k: int, n: int, dtype: torch.dtype, seconds: float) -> float:
    """GFLOP/s of an (m x k) @ (k x n) product in `dtype`: the median over calls for `seconds` after 3 warm-ups."""
    a, b = torch.randn(m, k, dtype=dtype), torch.randn(k, n, dtype=dtype)
    times = [common.timed(lambda: a @ b, torch.device("cpu")) for _ in range(3)]
    times, start = [], time.perf_counter()
    while time.perf_counter() - start < seconds or len(times) < 3:
        times.append(common.timed(lambda: a @ b, torch.device("cpu")))
    return 2 * m * k * n / statistics.median(times) / 1e9


def weight_shapes(model: nn.Module) -> tuple[dict[str, tuple[int, int]], tuple[int, int] | None]:
    """({name in block 0: (d_in, d_out)} of every linear layer of the first block, (d_in, vocab) of the LM head or
    None)."""
    block = next(m for name, m in model.named_modules() if name.endswith(("layers.0", "layer.0", "h.0")))
    shapes = {}
    for name, m in block.named_modules():
        if isinstance(m, nn.Linear):
            shapes[name] = (m.in_features, m.out_features)
        elif isinstance(m, Conv1D):
            shapes[name] = (m.nx, m.nf)
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    return shapes, (tuple(head.weight.shape[::-1]) if head is not None else None)


def block_roofline(shapes: dict[str, tuple[int, int]], rows: int, dtype: torch.dtype, seconds: float) -> float:
    """GFLOP/s of all the block's weight matrices on `rows` rows, one after the other: total FLOPs / total time."""
    inputs = {k: torch.randn(rows, k, dtype=dtype) for k, _ in shapes.values()}
    weights = [torch.randn(k, n, dtype=dtype) for k, n in shapes.values()]

    def block():
        for (k, _), w in zip(shapes.values(), weights):
            inputs[k] @ w

    for _ in range(3):
        block()
    times, start = [], time.perf_counter()
    while time.perf_counter() - start < seconds or len(times) < 3:
        times.append(common.timed(block, torch.device("cpu")))
    return sum(2 * rows * k * n for k, n in shapes.values()) / statistics.median(times) / 1e9


# --------------------------------------------------------------------------------------------------- training
def block_params(model: nn.Module) -> int:
    """N: the parameters of every block's weight matrices (not the embeddings, the LM head or a classifier)."""
    return sum(
        m.weight.numel()
        for name, m in model.named_modules()
        if isinstance(m, (nn.Linear, Conv1D))
        and any(f".{i}." in f"{name}." for i in range(1000))
        and "lora" not in name
    )


def _batch(model, task_kind: str, batch: int, seq: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, model.config.vocab_size, (batch, seq), generator=g)
    out = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    if tasks.family(task_kind).head(2).num_labels is not None:
        out["labels"] = torch.randint(0, 2, (batch,), generator=g)
    else:
        out["labels"] = ids.clone()
        out["labels"][:, : seq // 2] = -100  # the context: no loss there (CompletionLoss)
    return out


def training_step(model_name: str, task_kind: str, method: str, engine: str, weights, data: dict):
    """A callable that runs one optimizer step (AdamW) of `method` on `data` as `engine` runs it: the runner's
    pieces (CompletionLoss for a causal LM, the model's own loss for a classifier; repro.precision for the fast path)."""
    precision, fast = engine.split("+")[0], engine.endswith("+fast")
    model = common.load_model_file(model_name, task_kind, weights)
    model = common.apply_method(model, method, **METHODS[method][0]).train()
    if fast:
        prepare_fast_path(model, precision)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-5)
    lm = "labels" in data and data["labels"].dim() == 2
    loss_fn = CompletionLoss(model, 0.1, fused=fast) if lm else None
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16")

    def step():
        opt.zero_grad(set_to_none=True)
        with autocast:
            if lm:
                with loss_fn.attach(data["labels"]):
                    out = model(input_ids=data["input_ids"], attention_mask=data["attention_mask"])
                loss = loss_fn(out, data["labels"])
            else:
                loss = model(**data).loss
        loss.backward()
        opt.step()

    return model, step


def train_steps(model_name: str, task_kind: str, weights, spec: dict, roofline_gflops: float) -> list[dict]:
    """Every (method, engine) step timed in alternation (`steps` rounds after one warm-up each): rows with the step
    time, FLOPs from the real tokens, GFLOP/s and the fraction of the bf16 block roofline."""
    rows = []
    for method, (_, per_token) in METHODS.items():
        steps, n = {}, None
        for engine in ENGINES:
            data = None
            model, step = training_step(model_name, task_kind, method, engine, weights, {})
            data = _batch(model, task_kind, spec["batch"], spec["seq"])
            model, step = training_step(model_name, task_kind, method, engine, weights, data)
            n = block_params(model)
            step()
            steps[engine] = (step, data)
        times = {engine: [] for engine in ENGINES}
        for k in range(spec["steps"]):
            for engine in ENGINES if k % 2 == 0 else ENGINES[::-1]:
                times[engine].append(common.timed(steps[engine][0], torch.device("cpu")))
        for engine in ENGINES:
            mask = steps[engine][1]["attention_mask"]
            real, padding = int(mask.sum()), int(mask.numel() - mask.sum())
            median = statistics.median(times[engine])
            flops = per_token * n * real
            rows.append(
                {
                    "model": model_name,
                    "method": method,
                    "engine": engine,
                    "step": common.summarize(times[engine]),
                    "tokens": {"real": real, "padding": padding},
                    "block_params": n,
                    "flops": flops,
                    "flops_rule": f"{per_token} N T",
                    "gflops": flops / median / 1e9,
                    "fraction_of_bf16_block_roofline": flops / median / 1e9 / roofline_gflops,
                }
            )
    return rows


# --------------------------------------------------------------------------------------------------- decoding
def decode_rate(model_name: str, weights, inputs: int, max_new_tokens: int) -> dict:
    """The fast beam search (bf16 copy, beam 10, batches of 16) on `inputs` random 24-token prompts: rows processed
    per second and their FLOPs (2 N' per row, N' with the LM head)."""
    model = common.load_model_file(model_name, "generation", weights).eval()
    g = torch.Generator().manual_seed(0)
    prompts = torch.randint(3, model.config.vocab_size, (inputs, 24), generator=g).tolist()
    settings = BeamSettings(eos_token_ids=(2,), max_new_tokens=max_new_tokens, batch_size=16, precision="bf16")
    from repro.decode import decoding_model

    decoder = decoding_model(model, "bf16")
    counted = {"rows": 0}
    hook = decoder.register_forward_pre_hook(
        lambda m, args, kw: counted.__setitem__("rows", counted["rows"] + kw["input_ids"].numel()), with_kwargs=True
    )
    start = time.perf_counter()
    beam_search(decoder, prompts, settings)
    seconds = time.perf_counter() - start
    hook.remove()
    n = block_params(model) + model.get_output_embeddings().weight.numel()
    return {
        "inputs": inputs,
        "seconds": seconds,
        "s_per_input": seconds / inputs,
        "rows": counted["rows"],
        "tokens_per_s": counted["rows"] / seconds,
        "params_with_head": n,
        "gflops": 2 * n * counted["rows"] / seconds / 1e9,
    }


# ------------------------------------------------------------------------------------------------------ driver
def run(args) -> dict[str, Any]:
    spec = dict(QUICK if args.quick else FULL)
    if args.models:
        spec["models"] = args.models.split(",")
    spec["batch"], spec["seq"] = args.batch or spec["batch"], args.seq or spec["seq"]
    spec["steps"] = args.steps or spec["steps"]
    load = None if args.quick else common.wait_for_quiet(args.max_load, args.max_wait_s, log=print)
    machine = common.machine_info("cpu")
    started = time.monotonic()
    rows = spec["batch"] * spec["seq"]
    models = []
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory(prefix="bench-roofline-") as tmp:
        for name in spec["models"]:
            kind = tasks.kind_for_model(common.load_group("model", name).kind)
            print(f"{name}: matmul rates, block roofline ...", flush=True)
            weights = common.weights_file(name, kind, Path(tmp))
            model = common.load_model_file(name, kind, weights)
            shapes, head = weight_shapes(model)
            del model
            entry: dict[str, Any] = {"model": name, "task_kind": kind, "tokens": rows, "matmuls": []}
            for label, (k, n) in [*shapes.items(), *([("lm_head", head)] if head else [])]:
                rate = {d: matmul_gflops(rows, k, n, dt, spec["matmul_s"]) for d, dt in DTYPES.items()}
                entry["matmuls"].append({"name": label, "m": rows, "k": k, "n": n, "gflops": rate})
            entry["block_roofline_gflops"] = {
                d: block_roofline(shapes, rows, dt, 2 * spec["matmul_s"]) for d, dt in DTYPES.items()
            }
            print(f"{name}: training steps {ENGINES} x {list(METHODS)} ...", flush=True)
            entry["train"] = train_steps(name, kind, weights, spec, entry["block_roofline_gflops"]["bf16"])
            if tasks.traits(kind).decodes:
                print(f"{name}: decoding ...", flush=True)
                dec = decode_rate(name, weights, spec["decode_inputs"], 8 if args.quick else 40)
                step_rate = matmul_gflops(
                    160, shapes_k(shapes), max(n for _, n in shapes.values()), torch.bfloat16, 0.2
                )
                entry["decode"] = {
                    **dec,
                    "decode_step_matmul_gflops_bf16": step_rate,
                    "fraction": dec["gflops"] / step_rate,
                }
            models.append(entry)
    result = {
        "benchmark": "roofline",
        "quick": bool(args.quick),
        "device": "cpu",
        "settings": {k: v for k, v in spec.items()},
        "load": load,
        "machine": machine,
        "machine_end_load_average": common.load_average(),
        "wall_s": round(time.monotonic() - started, 1),
        "models": models,
    }
    print(render(result))
    return result


DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def shapes_k(shapes: dict[str, tuple[int, int]]) -> int:
    """The model width (the most common d_in of the block's matrices)."""
    return statistics.mode(k for k, _ in shapes.values())


def render(result: dict) -> str:
    lines = [
        common.header(
            "roofline: matmul rates, training steps and decoding against them", result["machine"], result["load"]
        )
    ]
    for e in result["models"]:
        roof = e["block_roofline_gflops"]
        lines.append(
            f"{e['model']}: block roofline on {e['tokens']} tokens: bf16 {roof['bf16']:.0f} GFLOP/s, fp32 {roof['fp32']:.0f}"
        )
        lines.append(
            common.table(
                ["matrix", "m x k x n", "fp32 GFLOP/s", "bf16 GFLOP/s"],
                [
                    [m["name"], f"{m['m']}x{m['k']}x{m['n']}", m["gflops"]["fp32"], m["gflops"]["bf16"]]
                    for m in e["matmuls"]
                ],
            )
        )
        lines.append(
            common.table(
                ["method", "engine", "step ms", "tokens (pad)", "FLOPs rule", "GFLOP/s", "of bf16 roofline"],
                [
                    [
                        r["method"],
                        r["engine"],
                        r["step"]["median_ms"],
                        f"{r['tokens']['real']} ({r['tokens']['padding']})",
                        r["flops_rule"],
                        r["gflops"],
                        f"{100 * r['fraction_of_bf16_block_roofline']:.0f}%",
                    ]
                    for r in e["train"]
                ],
            )
        )
        if "decode" in e:
            d = e["decode"]
            lines.append(
                f"decode (fast, bf16, beam 10, batches of 16): {d['s_per_input']:.2f} s/input, {d['tokens_per_s']:.0f} "
                f"tokens/s, {d['gflops']:.0f} GFLOP/s = {100 * d['fraction']:.0f}% of the bf16 rate of a decode step's "
                f"matmul ({d['decode_step_matmul_gflops_bf16']:.0f})"
            )
    return "\n".join(lines)
