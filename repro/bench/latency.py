"""Table 1: inference latency of one forward pass of GPT-2 medium, base vs LoRA (merged / unmerged) vs adapters.

Every variant of a cell is timed once per round, in a rotating order (round k starts at variant k mod V), so
drift in machine load hits all of them alike; the paired ratio variant/base is taken within each round. Weights
are random (the architecture of conf/model/gpt2-medium.yaml): latency does not depend on their values.
Memory: the variants share the base model's frozen tensors (deep copies with a memo), only LoRA's c_attn copy
and the adapters' own weights are extra.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from typing import Any

import torch
import yaml

from repro.bench import common
from repro.methods import parameter_counts
from repro.methods.lora import merge, unmerge

LORA = {"r": 4, "alpha": 32, "dropout": 0.0, "targets": ["q", "v"]}  # Table 1 / E2E recipe: r=4 on Wq, Wv
VARIANTS = ["base", "lora_merged", "lora_unmerged", "adapter_l", "adapter_h"]
PAPER_ROW = {
    "base": "Fine-Tune/LoRA",
    "lora_merged": "Fine-Tune/LoRA",
    "adapter_l": "AdapterL",
    "adapter_h": "AdapterH",
}
QUICK_GRID = [(2, 32), (1, 16)]
QUICK_PARAMS = {(2, 32): 0.004e6, (1, 16): 0.02e6}  # |Θ| targets that fit the tiny model


def paper_table() -> dict:
    return yaml.safe_load((common.PAPER_DIR / "table1_latency.yaml").read_text())


def parse_count(text: str | float) -> float:
    if isinstance(text, (int, float)):
        return float(text)
    scale = {"K": 1e3, "M": 1e6, "B": 1e9}.get(text[-1].upper(), 1.0)
    return float(text[:-1] if scale != 1.0 else text) * scale


def adapter_formula(kind: str, r: int, d_model: int, n_layer: int) -> int:
    """The paper's |Θ| = L̂_Adpt (2 d r + r + d) + 2 L̂_LN d. AdapterH: 2 adapters per block, no trainable LN;
    AdapterL: 1 adapter per block and 1 trainable LayerNorm per block."""
    n_adpt, n_ln = {"adapter_h": (2 * n_layer, 0), "adapter_l": (n_layer, n_layer)}[kind]
    return n_adpt * (2 * d_model * r + r + d_model) + 2 * n_ln * d_model


def adapter_r(kind: str, target: float, d_model: int, n_layer: int) -> tuple[int, int]:
    """The bottleneck r whose formula |Θ| is nearest to `target`, and that |Θ|."""
    r = min(range(1, d_model + 1), key=lambda r: abs(adapter_formula(kind, r, d_model, n_layer) - target))
    return r, adapter_formula(kind, r, d_model, n_layer)


def parse_grid(text: str | None, quick: bool) -> list[tuple[int, int]]:
    if text:
        return [tuple(int(v) for v in cell.lower().split("x")) for cell in text.split(",")]  # type: ignore[misc]
    if quick:
        return list(QUICK_GRID)
    return [(c["batch_size"], c["seq_len"]) for c in paper_table()["columns"]]


def shared_copy(model: torch.nn.Module, own: Callable[[str], bool] = lambda name: False) -> torch.nn.Module:
    """A deep copy that shares every parameter with `model` except those whose name satisfies `own`."""
    memo = {id(p): p for name, p in model.named_parameters() if not own(name)}
    return copy.deepcopy(model, memo)


class Variants:
    """The models of one cell. LoRA merged and unmerged are one model, switched between timings (not timed)."""

    def __init__(self, base, d_model: int, n_layer: int, adapter_target: float, dtype, device, errors: dict):
        self.models: dict[str, torch.nn.Module] = {"base": base}
        self.info: dict[str, dict[str, Any]] = {"base": {"params": parameter_counts(base)["total_params"]}}
        self.errors = errors
        self.lora_state = None
        if "lora" not in errors:
            try:
                lora = common.apply_method(shared_copy(base, lambda n: "c_attn" in n), "lora", **LORA)
                common.randomize_lora_B(lora)
                lora.to(device=device, dtype=dtype).eval()
                self.models["lora"] = lora
                self.lora_state = "unmerged"
                counts = parameter_counts(lora)
                for v in ("lora_merged", "lora_unmerged"):
                    self.info[v] = {
                        "adapter_params": counts["adapter_params"],
                        **{k: LORA[k] for k in ("r", "targets")},
                    }
            except Exception as exc:  # noqa: BLE001 - reported in the output, the other variants still run
                errors["lora"] = f"{type(exc).__name__}: {exc}"
        for kind in ("adapter_l", "adapter_h"):
            r, formula = adapter_r(kind, adapter_target, d_model, n_layer)
            try:
                m = common.apply_method(shared_copy(base), kind, r=r).to(device=device, dtype=dtype).eval()
                self.models[kind] = m
                self.info[kind] = {
                    "r": r,
                    "target_params": adapter_target,
                    "formula_params": formula,
                    "adapter_params": parameter_counts(m)["adapter_params"],
                }
            except Exception as exc:  # noqa: BLE001
                errors[kind] = f"{type(exc).__name__}: {exc}"

    def names(self) -> list[str]:
        names = ["base"]
        if "lora" in self.models:
            names += ["lora_merged", "lora_unmerged"]
        return names + [k for k in ("adapter_l", "adapter_h") if k in self.models]

    def get(self, name: str) -> torch.nn.Module:
        if name.startswith("lora_") and "lora" in self.models:
            want = name.removeprefix("lora_")
            if want != self.lora_state:
                (merge if want == "merged" else unmerge)(self.models["lora"])
                self.lora_state = want
            return self.models["lora"]
        return self.models[name]


def forward(model, ids) -> torch.Tensor:
    return model(input_ids=ids, use_cache=False).logits


def run_cell(
    variants: Variants,
    batch: int,
    seq: int,
    vocab: int,
    device,
    budget_s: float,
    min_rounds: int,
    max_rounds: int,
    log,
    skip_above_s: float | None = None,
) -> dict[str, Any]:
    gen = torch.Generator().manual_seed(batch * 100_003 + seq)
    ids = torch.randint(0, vocab, (batch, seq), generator=gen).to(device)
    names = variants.names()
    with torch.inference_mode():
        # warm-up: every variant once on one sequence (lazy init, kernels), then once at the cell's shape unless that
        # would take most of the budget; the estimate of a round's time decides how many rounds fit the budget
        one = {n: common.timed(lambda: forward(variants.get(n), ids[:1]), device) for n in names}
        one = {n: common.timed(lambda: forward(variants.get(n), ids[:1]), device) for n in names}
        est_round = sum(one.values()) * batch
        if skip_above_s is not None and est_round > skip_above_s:
            return {
                "batch_size": batch,
                "seq_len": seq,
                "skipped": f"one round estimated at {est_round:.0f}s "
                f"(batch x single-sequence time) > the {skip_above_s:.0f}s left in the budget",
                "estimated_round_s": est_round,
                "single_sequence_ms": {n: 1000 * t for n, t in one.items()},
            }
        full_warmup = batch == 1 or est_round < 0.25 * budget_s
        if full_warmup and batch > 1:
            for n in names:
                forward(variants.get(n), ids)
        # equivalence check: merged LoRA gives the unmerged outputs (fp32: tight; fp16: loose)
        check = None
        if "lora" in variants.models:
            short = ids[:1, : min(seq, 32)]
            a = forward(variants.get("lora_unmerged"), short).float()
            b = forward(variants.get("lora_merged"), short).float()
            check = (a - b).abs().max().item()
        samples: dict[str, list[float]] = {n: [] for n in names}
        started, k = time.monotonic(), 0
        while k < max_rounds:
            order = names[k % len(names) :] + names[: k % len(names)]
            for n in order:
                model = variants.get(n)
                samples[n].append(common.timed(lambda: forward(model, ids), device))
            k += 1
            log(f"    round {k}: " + ", ".join(f"{n} {1000 * samples[n][-1]:.0f}ms" for n in names))
            spent = time.monotonic() - started
            if k >= min_rounds and spent + spent / k > budget_s:
                break
    rows: dict[str, Any] = {}
    base = samples["base"]
    for n in names:
        stats = common.summarize(samples[n])
        ratios = [s / b for s, b in zip(samples[n], base)]
        rstats = common.summarize(r / 1000 for r in ratios)  # summarize() scales by 1000: undo for a unitless ratio
        rows[n] = {
            **stats,
            **variants.info.get(n, {}),
            "overhead_pct": 100.0 * (stats["median_ms"] / common.summarize(base)["median_ms"] - 1.0),
            "paired_ratio": {
                "median": rstats["median_ms"],
                "q1": rstats["q1_ms"],
                "q3": rstats["q3_ms"],
                "min": rstats["min_ms"],
                "max": rstats["max_ms"],
            },
        }
    b = rows["base"]
    noise = {
        "base_rel_iqr_pct": 100.0 * b["iqr_ms"] / b["median_ms"],
        "base_rel_std_pct": 100.0 * b["std_ms"] / b["mean_ms"],
    }
    if "lora_merged" in rows:
        pr = rows["lora_merged"]["paired_ratio"]
        noise["lora_merged_paired_band_pct"] = [100.0 * (pr["q1"] - 1.0), 100.0 * (pr["q3"] - 1.0)]
        noise["lora_merged_within_noise"] = bool(pr["q1"] <= 1.0 <= pr["q3"]) if rows["base"]["n"] > 1 else None
    return {
        "batch_size": batch,
        "seq_len": seq,
        "rounds": k,
        "seconds": round(time.monotonic() - started, 1),
        "full_shape_warmup": full_warmup,
        "lora_merge_max_abs_diff": check,
        "noise": noise,
        "variants": rows,
    }


def paper_figures(batch: int, seq: int) -> dict[str, Any] | None:
    paper = paper_table()
    for i, col in enumerate(paper["columns"]):
        if (col["batch_size"], col["seq_len"]) == (batch, seq):
            return {
                "adapter_params": col["adapter_params"],
                **{
                    row["method"]: {
                        "latency_ms": row["latency_ms"][i],
                        "std_ms": row["latency_std_ms"][i],
                        "slowdown_pct": row["slowdown_pct"][i],
                    }
                    for row in paper["rows"]
                },
            }
    return None


def run(args) -> dict[str, Any]:
    device = common.resolve_device(args.device)
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    model_name = "tiny-gpt2" if args.quick else "gpt2-medium"
    grid = parse_grid(args.grid, args.quick)
    budget = args.budget_s if args.budget_s is not None else (20.0 if args.quick else 600.0)
    load = None if args.quick else common.wait_for_quiet(args.max_load, args.max_wait_s, log=print)
    machine = common.machine_info(str(device))
    print(f"building {model_name} (random weights, {dtype}) ...", flush=True)
    base = common.build_model(model_name, "generation").to(device=device, dtype=dtype).eval()
    cfg = base.config
    d_model, n_layer, vocab = cfg.n_embd, cfg.n_layer, cfg.vocab_size
    paper = paper_table()
    paper_params = {(c["batch_size"], c["seq_len"]): parse_count(c["adapter_params"]) for c in paper["columns"]}
    cells, errors = [], {}
    started = time.monotonic()
    # plan: a round of a cell costs about (variants) x batch x (one sequence's forward); a cell whose rounds cannot
    # fit `min_rounds` times into 80% of the budget is skipped (recorded with its estimate) rather than blowing it
    first = grid[0]
    probe = Variants(
        base,
        d_model,
        n_layer,
        QUICK_PARAMS.get(first, 4e3) if args.quick else paper_params.get(first, 11e6),
        dtype,
        device,
        errors,
    )
    n_var = len(probe.names())
    del probe
    order, skipped = [], []
    for batch, seq in sorted(grid, key=lambda c: c[0] * c[1]):
        one = torch.randint(0, vocab, (1, seq)).to(device)
        with torch.inference_mode():
            forward(base, one)
            single = common.timed(lambda: forward(base, one), device)
        est = n_var * batch * single
        if not args.quick and est * args.min_rounds > 0.8 * budget:
            skipped.append(
                {
                    "batch_size": batch,
                    "seq_len": seq,
                    "estimated_round_s": est,
                    "single_sequence_base_ms": 1000 * single,
                    "skipped": f"one round of {n_var} variants estimated at {est:.0f}s ({n_var} x batch {batch} x "
                    f"{1000 * single:.0f} ms for one sequence); {args.min_rounds} rounds do not fit "
                    f"80% of the {budget:.0f}s budget (select it alone with --grid {batch}x{seq} "
                    f"--budget-s {est * args.min_rounds * 1.3:.0f})",
                }
            )
            print(f"  cell batch={batch} seq={seq}: skipped, {skipped[-1]['skipped']}", flush=True)
        else:
            order.append((batch, seq))
    # per-cell budget: in proportion to sqrt(tokens), at least 15% of the total each; small cells first
    weights = [math.sqrt(b * s) for b, s in order]
    shares = [max(0.15, w / sum(weights)) for w in weights]
    shares = [x / sum(shares) for x in shares]
    for (batch, seq), share in zip(order, shares):
        target = QUICK_PARAMS.get((batch, seq), 0.004e6) if args.quick else paper_params.get((batch, seq), 11e6)
        print(f"  cell batch={batch} seq={seq}: budget {share * budget:.0f}s, adapters |Θ|≈{target:,.0f}", flush=True)
        variants = Variants(base, d_model, n_layer, target, dtype, device, errors)
        cell = run_cell(variants, batch, seq, vocab, device, share * budget, args.min_rounds, args.max_rounds, print)
        cell["paper"] = paper_figures(batch, seq)
        cell["adapter_target_params"] = target
        cells.append(cell)
        del variants
    for cell in skipped:
        cell["paper"] = paper_figures(cell["batch_size"], cell["seq_len"])
        cells.append(cell)
    cells.sort(key=lambda c: grid.index((c["batch_size"], c["seq_len"])))
    result = {
        "benchmark": "latency",
        "what": "one forward pass (GPT2LMHeadModel incl. LM head, use_cache=False, inference_mode)",
        "model": model_name,
        "arch": {"n_layer": n_layer, "n_embd": d_model, "n_head": cfg.n_head, "vocab_size": vocab},
        "dtype": str(dtype).removeprefix("torch."),
        "quick": args.quick,
        "settings": {
            "grid": [list(c) for c in grid],
            "budget_s": budget,
            "min_rounds": args.min_rounds,
            "max_rounds": args.max_rounds,
            "lora": LORA,
            "variants": VARIANTS,
            "adapter_r_rule": "r minimizing |Θ_formula(r) - |Θ|_paper|, Θ_formula = L̂_Adpt(2dr + r + d) + 2 L̂_LN d",
            "order": "rotating within each round; paired ratio = variant / base of the same round",
        },
        "load": load,
        "machine": machine,
        "machine_end_load_average": common.load_average(),
        "wall_s": round(time.monotonic() - started, 1),
        "errors": errors,
        "cells": cells,
    }
    print(render(result))
    return result


def render(result: dict) -> str:
    rows = []
    for cell in result["cells"]:
        if "skipped" in cell:
            continue
        paper = cell.get("paper") or {}
        for name, v in cell["variants"].items():
            p = paper.get(PAPER_ROW.get(name, ""), {})
            pr = v["paired_ratio"]
            rows.append(
                [
                    f"{cell['batch_size']}x{cell['seq_len']}",
                    name,
                    v.get("r", "-"),
                    f"{v['adapter_params'] / 1e6:.2f}M" if v.get("adapter_params") is not None else "-",
                    v["median_ms"],
                    f"{v['q1_ms']:.1f}-{v['q3_ms']:.1f}",
                    v["std_ms"],
                    v["n"],
                    "-" if name == "base" else f"{v['overhead_pct']:+.1f}",
                    "-" if name == "base" else f"{100 * (pr['q1'] - 1):+.1f}..{100 * (pr['q3'] - 1):+.1f}",
                    p.get("latency_ms"),
                    "-" if name == "base" or not p else fmt_pct(p.get("slowdown_pct") or 0.0),
                ]
            )
    text = common.table(
        [
            "cell BxS",
            "variant",
            "r",
            "|Θ|",
            "median ms",
            "IQR ms",
            "std ms",
            "n",
            "vs base %",
            "paired IQR %",
            "paper ms",
            "paper %",
        ],
        rows,
    )
    notes = []
    for cell in result["cells"]:
        if "skipped" in cell:
            notes.append(f"{cell['batch_size']}x{cell['seq_len']}: not measured: {cell['skipped']}")
            continue
        n = cell["noise"]
        notes.append(
            f"{cell['batch_size']}x{cell['seq_len']}: {cell['rounds']} rounds in {cell['seconds']}s; base noise "
            f"IQR {n['base_rel_iqr_pct']:.1f}% of median; LoRA merged vs unmerged max |Δlogit| "
            f"{common.fmt(cell['lora_merge_max_abs_diff'], '.1e')}"
        )
    if result["errors"]:
        notes += [f"not measured: {k}: {v}" for k, v in result["errors"].items()]
    title = f"latency: {result['model']} forward, {result['dtype']}"
    return "\n".join([common.header(title, result["machine"], result["load"]), text, *notes])


def fmt_pct(x: float) -> str:
    return f"{x:+.1f}"
