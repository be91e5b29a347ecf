"""How long each task's examples really are, in tokens, for the plan's compute estimate (repro/plan/cost.py): batches
are padded dynamically, each to its longest example (DataCollatorWithPadding, DataCollatorForSeq2Seq), not to
max_seq_length.

    python -m repro.plan.lengths        # measure every task the offline data has (REPRO_DATA_DIR); print QUANTILES

QUANTILES[task] holds the 0, 5, ..., 100th percentiles of the tokenized length of the task's examples, measured on the
offline data with the runner's own encoding: GLUE pairs and sentences with RoBERTa's tokenizer and special tokens
(GPT-2's BPE; DeBERTa's SentencePiece is not offline, and counts the same text in a similar number of pieces: an
approximation for the DeBERTa rows), E2E/WebNLG/DART as repro.data.nlg encodes them (context, end token, completion,
end token). The train split where the offline data has it, else the dev split (QNLI, DART: SOURCE says which).
MNLI and QQP are not offline: their lengths are an expectation, stated in EXPECTED (a measured task's distribution,
scaled to an expected mean), not a measurement.

`padded_length(task, b, max_seq_length)`: the expected length of a batch of b random examples, E[min(max of b lengths,
max_seq_length)] = ∫ min(Q(u), max_seq_length) d(u^b) over the quantile function Q (linear between the
percentiles). tests/test_plan_memory.py measures RTE again and compares.
"""

from __future__ import annotations

import os
import sys

import numpy as np

# task: the split measured
SOURCE = {
    "rte": "train",
    "mrpc": "train",
    "cola": "train",
    "stsb": "train",
    "sst2": "train",
    "qnli": "dev",
    "e2e": "train",
    "webnlg": "train",
    "dart": "dev",
}
# task: (the measured task whose distribution's shape stands in, the expected mean in tokens, why)
EXPECTED = {
    "mnli": ("mrpc", 40.0, "premise and hypothesis of about 30 words together, with RoBERTa's 4 special tokens"),
    "qqp": ("mrpc", 30.0, "two questions of about 11 words each, with RoBERTa's 4 special tokens"),
}
PERCENTILES = tuple(range(0, 101, 5))
QUANTILES: dict[str, tuple[float, ...]] = {  # `python -m repro.plan.lengths` on ../shared/data
    "rte": (18, 30, 34, 38, 41, 44, 46, 49, 51, 54, 57, 60, 63, 67, 74, 86, 105, 121, 135, 157, 292),
    "mrpc": (20, 34, 37, 40, 42, 45, 46, 48, 50, 52, 54, 56, 58, 60, 61, 63, 65, 68, 71, 75, 104),
    "cola": (4, 7, 7, 8, 8, 9, 9, 9, 10, 10, 11, 11, 11, 12, 12, 13, 14, 15, 16, 19, 47),
    "stsb": (12, 17, 18, 18, 19, 20, 21, 21, 22, 23, 24, 25, 26, 28, 29, 32, 36, 44, 51, 61, 125),
    "sst2": (4, 5, 6, 6, 7, 7, 8, 9, 9, 10, 11, 12, 14, 15, 17, 19, 21, 24, 28, 34, 67),
    "qnli": (16, 28, 32, 35, 37, 39, 41, 43, 45, 47, 49, 51, 53, 55, 58, 61, 64, 69, 76, 87, 259),
    "e2e": (20, 32, 36, 39, 41, 43, 45, 47, 49, 51, 53, 54, 56, 58, 61, 63, 65, 68, 72, 76, 115),
    "webnlg": (12, 23, 28, 32, 37, 42, 48, 54, 59, 65, 70, 76, 82, 88, 95, 102, 110, 119, 134, 157, 259),
    "dart": (12, 26, 33, 38, 44, 50, 55, 59, 63, 67, 71, 74, 76, 79, 82, 86, 90, 93, 99, 112, 229),
}


def quantiles(task: str) -> tuple[np.ndarray, str]:
    """(the task's 21 length percentiles, "measured on <split>" or "expected: ..."); KeyError for a task without
    either."""
    if task in QUANTILES:
        return np.array(QUANTILES[task], dtype=float), f"measured on {SOURCE[task]}"
    proxy, mean, why = EXPECTED[task]
    q = np.array(QUANTILES[proxy], dtype=float)
    return q * mean / proxy_mean(proxy), f"expected: mean {mean:.0f} tokens ({why}; shape of {proxy})"


def proxy_mean(task: str) -> float:
    """The mean length of a measured task, from its percentiles."""
    return expected_max(np.array(QUANTILES[task], dtype=float), 1, float("inf"))


def expected_max(q: np.ndarray, b: int, cap: float) -> float:
    """E[min(max of b draws, cap)] for the quantile function through the percentiles q."""
    u = np.linspace(0.0, 1.0, 2001)
    values = np.minimum(np.interp(u, np.array(PERCENTILES) / 100.0, q), cap)
    return float(np.trapezoid(values * b * u ** (b - 1), u))


def padded_length(task: str, b: int, max_seq_length: int) -> tuple[float, str] | None:
    """(the expected padded length of a batch of b examples, where the lengths come from), or None for a task whose
    lengths are neither measured nor stated."""
    try:
        q, source = quantiles(task)
    except KeyError:
        return None
    return expected_max(q, max(1, int(b)), float(max_seq_length)), source


# ---------------------------------------------------------------- the measurement


def measure(task: str, data_dir: str) -> tuple[float, ...]:
    """The 21 length percentiles of the task's SOURCE split in the offline data, encoded as the runner encodes it."""
    from repro.config import load_group  # the measurement only: the plan itself reads QUANTILES
    from repro.data import nlg
    from repro.data.glue import load_split
    from repro.models import load_tokenizer
    from repro.tasks.generation import load_examples

    cfg = load_group("task", task)
    cfg = cfg.get("task", cfg)  # the NLG task files are global (task: and decode:)
    split = SOURCE[task]
    if cfg.kind == "classification":
        tok = load_tokenizer(load_group("model", "tiny-roberta"), data_dir)
        ds = load_split(cfg, split, data_dir)
        texts = [list(ds[f]) for f in cfg.text_fields]
        lengths = [len(ids) for ids in tok(*texts)["input_ids"]]
    else:
        tok = load_tokenizer(load_group("model", "tiny-gpt2"), data_dir)
        examples = load_examples(cfg, split, data_dir)
        lengths = [len(nlg.encode_example(tok, e["context"], e["completion"], 10**6)["input_ids"]) for e in examples]
    return tuple(round(float(x), 1) + 0 for x in np.percentile(lengths, PERCENTILES))


def main() -> None:
    data_dir = os.environ.get("REPRO_DATA_DIR")
    if not data_dir:
        sys.exit("set REPRO_DATA_DIR to the offline data folder")
    print("QUANTILES = {")
    for task in SOURCE:
        print(f"    {task!r}: {measure(task, data_dir)!r},", flush=True)
    print("}")


if __name__ == "__main__":
    main()
