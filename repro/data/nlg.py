"""E2E, WebNLG 2017 and DART, formatted as microsoft/LoRA examples/NLG formats them, and encoded as its gpt2_encode.py
(--add_bos --add_eos) encodes them.

- E2E (format_converting_e2e.py): each line `MR||reference` -> context = MR, completion = reference (line stripped).
  The paper's files are pre-tokenized ("... called Blue Spice ."); the hub's `e2e_nlg` is raw text (and has a
  "cleaned" sibling), so scores on it are not comparable with Table 3.
- WebNLG (format_converting_webnlg.py): entries numbered from 1; context = "subj : property : obj | ..." over the
  modified triple set, one example per lexicalisation whose comment is "good"; `seen` = category in the 10 seen
  categories of the WebNLG 2017 challenge (the script's list).
- DART (format_converting_dart.py): context as WebNLG with the property lowercased; one example per annotation.
- Encoding: context ids + [50256], then ids of ' ' + completion + [50256]; the loss is on the completion only
  (data_utils.FT_Dataset's mask: labels are -100 on the context and its separator). 50256 is GPT-2's end token
  `<|endoftext|>`, used as separator and end; another tokenizer's own end token takes its place
  (SmolLM2: `<|im_end|>` = 2; `end_token`). Its pad token may equal the end token (SmolLM2: pad = eos = 2): padding
  is masked by attention_mask (and labels -100), never recognised by its id.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import datasets
from omegaconf import DictConfig

from repro.data import read_text
from repro.errors import CellMismatch, DataFileInvalid, DataFileMissing
from repro.metrics.nlg import SEEN_CATEGORIES_2017

log = logging.getLogger(__name__)
EOS = 50256  # GPT-2's <|endoftext|>


def end_token(tokenizer) -> int:
    """The separator and end token of the paper's format in this tokenizer: its eos token (GPT-2: 50256)."""
    if tokenizer.eos_token_id is None:
        raise CellMismatch(f"the tokenizer {type(tokenizer).__name__} has no end (eos) token; the NLG format needs one")
    return int(tokenizer.eos_token_id)


# How to get each dataset's files, for the error that says a split is missing (repro.tasks.generation.DATASETS).
E2E_FILES = "The paper's files are microsoft/LoRA examples/NLG/data/e2e/{train,valid,test}.txt (../shared/data/e2e has all three)."
WEBNLG_FILES = (
    "The paper's files are microsoft/LoRA examples/NLG/data/webnlg_challenge_2017/{train,dev,test}.json "
    "(../shared/data/webnlg has all three)."
)
DART_FILES = (
    "Get dart-v1.1.1-full-train.json from github.com/Yale-LILY/dart (data/v1.1.1/) or microsoft/LoRA's "
    "create_datasets.sh on a machine with internet and save it as $REPRO_DATA_DIR/dart/train.json "
    "(../shared/data/dart has only dev.json and test.json), or unset REPRO_DATA_DIR to read DART from the hub."
)


def triples_context(triples: list[tuple[str, str, str]], lower_property: bool = False) -> str:
    return " | ".join(f"{s} : {p.lower() if lower_property else p} : {o}" for s, p, o in triples)


# ------------------------------------------------------------------ readers: local files (the paper's)


E2E_LINE = "one example per line: `meaning representation||reference` (microsoft/LoRA's e2e/*.txt)"
WEBNLG_LAYOUT = (
    'WebNLG json as microsoft/LoRA reads it: {"entries": [{"1": {"category", "modifiedtripleset": '
    '[{"subject", "property", "object"}], "lexicalisations": [{"comment", "lex"}]}}, {"2": ...}]}'
)
DART_LAYOUT = 'DART json as microsoft/LoRA reads it: [{"tripleset": [[s, p, o], ...], "annotations": [{"text"}]}, ...]'


def read_e2e(path: Path) -> list[dict]:
    """Blank lines are skipped; a line without exactly one `||`, or with an empty side, is DataFileInvalid."""
    out = []
    for n, line in enumerate(read_text(path, E2E_LINE).splitlines(), 1):
        if not line.strip():
            continue
        items = line.strip().split("||")
        if len(items) != 2 or not items[0].strip() or not items[1].strip():
            problem = (
                f"{len(items) - 1} `||` separators"
                if len(items) != 2
                else "an empty meaning representation"
                if not items[0].strip()
                else "an empty reference"
            )
            raise DataFileInvalid(path, n, f"{problem} in {line.strip()[:80]!r}", E2E_LINE)
        out.append({"context": items[0], "completion": items[1].strip("\n")})
    return out


def _read_json(path: Path, layout: str):
    text = read_text(path, layout)
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataFileInvalid(path, exc.lineno, f"not JSON ({exc.msg}, column {exc.colno})", layout) from None


def _entry_error(path: Path, what: str, exc: Exception, layout: str) -> DataFileInvalid:
    problem = f"missing key {exc}" if isinstance(exc, KeyError) else f"{type(exc).__name__}: {exc}"
    return DataFileInvalid(path, None, f"{what}: {problem}", layout)


def read_webnlg(path: Path) -> list[dict]:
    data = _read_json(path, WEBNLG_LAYOUT)
    out = []
    try:
        entries = data["entries"]
    except (KeyError, TypeError) as exc:
        raise _entry_error(path, "top level", exc, WEBNLG_LAYOUT) from None
    for i, example in enumerate(entries):
        try:
            entry = example[str(i + 1)]
            triples = [(t["subject"], t["property"], t["object"]) for t in entry["modifiedtripleset"]]
            context = triples_context(triples)
            for lex in entry["lexicalisations"]:
                if lex["comment"] == "good":
                    out.append(
                        {
                            "context": context,
                            "completion": lex["lex"],
                            "category": entry["category"],
                            "seen": entry["category"] in SEEN_CATEGORIES_2017,
                        }
                    )
        except (KeyError, TypeError, ValueError) as exc:
            raise _entry_error(path, f"entry {i + 1}", exc, WEBNLG_LAYOUT) from None
    if not out:
        raise DataFileInvalid(path, None, 'no lexicalisation with comment "good"', WEBNLG_LAYOUT)
    return out


def read_dart(path: Path) -> list[dict]:
    data = _read_json(path, DART_LAYOUT)
    out = []
    if not isinstance(data, list):
        raise DataFileInvalid(path, 1, f"a JSON {type(data).__name__} at the top level", DART_LAYOUT)
    for i, example in enumerate(data):
        try:
            context = triples_context([tuple(t) for t in example["tripleset"]], lower_property=True)
            for ann in example["annotations"]:
                out.append({"context": context, "completion": ann["text"]})
        except (KeyError, TypeError, ValueError) as exc:
            raise _entry_error(path, f"entry {i + 1}", exc, DART_LAYOUT) from None
    if not out:
        raise DataFileInvalid(path, None, "no annotations", DART_LAYOUT)
    return out


# ------------------------------------------------------------------ readers: the hub (not the paper's files)

E2E_KEYS = {"eatType": "Type", "priceRange": "price", "familyFriendly": "family friendly"}


def e2e_mr_from_hub(mr: str) -> str:
    """'name[The Eagle], eatType[coffee shop]' -> 'name : The Eagle | Type : coffee shop' (the LoRA files' layout,
    untokenized)."""
    parts = []
    for item in mr.split("],"):
        item = item.strip().rstrip("]")
        if not item:
            continue
        key, _, value = item.partition("[")
        parts.append(f"{E2E_KEYS.get(key.strip(), key.strip())} : {value}")
    return " | ".join(parts)


def e2e_from_hub(task: DictConfig, split: str) -> list[dict]:
    log.warning(
        "E2E from the hub (%s): raw, untokenized references, unlike the paper's pre-tokenized files "
        '("... called Blue Spice ."); BLEU/NIST/... are NOT comparable with Table 3. Set REPRO_DATA_DIR '
        "to a folder with e2e/{train,valid,test}.txt for the paper's data.",
        task.hub.path,
    )
    ds = datasets.load_dataset(task.hub.path, split=task.splits[split].hub)
    return [{"context": e2e_mr_from_hub(r["meaning_representation"]), "completion": r["human_reference"]} for r in ds]


def webnlg_from_hub(task: DictConfig, split: str) -> list[dict]:
    ds = datasets.load_dataset(task.hub.path, task.hub.name, split=task.splits[split].hub)
    out = []
    for r in ds:
        triples = [tuple(x.strip() for x in t.split(" | ")) for t in r["modified_triple_sets"]["mtriple_set"][0]]
        context = triples_context(triples)
        for text, comment in zip(r["lex"]["text"], r["lex"]["comment"]):
            if comment == "good":
                out.append(
                    {
                        "context": context,
                        "completion": text,
                        "category": r["category"],
                        "seen": r["category"] in SEEN_CATEGORIES_2017,
                    }
                )
    return out


def dart_from_hub(task: DictConfig, split: str) -> list[dict]:
    ds = datasets.load_dataset(task.hub.path, split=task.splits[split].hub)
    out = []
    for r in ds:
        context = triples_context([tuple(t) for t in r["tripleset"]], lower_property=True)
        out.extend({"context": context, "completion": text} for text in r["annotations"]["text"])
    return out


def nlg_file(task: DictConfig, split: str, data_dir: str, how_to_get: str) -> Path:
    """The local file of one split; a missing one is DataFileMissing that says `how_to_get` the dataset."""
    path = Path(data_dir) / task.data_subdir / task.splits[split].local
    if not path.exists():
        raise DataFileMissing(f"task={task.name}: the {split} split is missing: {path} does not exist. {how_to_get}")
    return path


# ------------------------------------------------------------------ encoding (gpt2_encode.py + FT_Dataset)


def encode_ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def encode_example(tokenizer, context: str, completion: str, max_length: int) -> dict:
    """input_ids = context + [eos] + (' ' + completion) + [eos], cut at max_length; labels -100 on the context."""
    eos = end_token(tokenizer)
    ctx = encode_ids(tokenizer, context) + [eos]
    comp = encode_ids(tokenizer, " " + completion) + [eos]
    ids = (ctx + comp)[:max_length]
    labels = ([-100] * len(ctx) + comp)[:max_length]
    return {"input_ids": ids, "attention_mask": [1] * len(ids), "labels": labels}


def prompt_ids(tokenizer, context: str, max_length: int) -> list[int]:
    """The decoding query: context + [eos], keeping its last `max_length` tokens (FT_Dataset's query, direct=-1)."""
    ids = encode_ids(tokenizer, context) + [end_token(tokenizer)]
    return ids[-max_length:] if max_length > 0 else ids


def encode_split(examples: list[dict], tokenizer, max_length: int, desc: str) -> datasets.Dataset:
    ds = datasets.Dataset.from_dict(
        {"context": [e["context"] for e in examples], "completion": [e["completion"] for e in examples]}
    )
    end_token(tokenizer)  # a tokenizer without an end token is refused here, not inside datasets' map
    return ds.map(
        lambda r: encode_example(tokenizer, r["context"], r["completion"], max_length),
        remove_columns=["context", "completion"],
        desc=desc,
    )
