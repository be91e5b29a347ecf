"""Write the offline data layout (the one ../shared/data has) from the internet, for machines that have it.

    python scripts/prepare_data.py glue --out $REPRO_DATA_DIR            # all 8 GLUE tasks from the hub
    python scripts/prepare_data.py glue --tasks mnli qqp --out DIR
    python scripts/prepare_data.py nlg --out DIR                         # E2E, WebNLG, DART + GPT-2 BPE files

GLUE comes from the hub (nyu-mll/glue) and is written as the original GLUE tsv files, so `repro.data.glue` reads
offline and online data through one loader. The NLG files are the pre-tokenized ones the paper used, from
microsoft/LoRA's examples/NLG/data (the hub's e2e_nlg is untokenized and its BLEU is not comparable).
Existing files are never overwritten.
"""

from __future__ import annotations

import argparse
import csv
import sys
import urllib.request
from pathlib import Path

from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parent.parent
GLUE_TASKS = ["mnli", "sst2", "mrpc", "cola", "qnli", "qqp", "rte", "stsb"]
STRING_LABELS = {"rte", "qnli", "mnli"}  # the original tsv files spell these labels out
LORA_NLG = "https://raw.githubusercontent.com/microsoft/LoRA/c4593f060e6a368d7bb5af5273b8e42810cdef90/examples/NLG"
NLG_FILES = {
    "e2e/train.txt": "data/e2e/train.txt",
    "e2e/valid.txt": "data/e2e/valid.txt",
    "e2e/test.txt": "data/e2e/test.txt",
    "webnlg/train.json": "data/webnlg_challenge_2017/train.json",
    "webnlg/dev.json": "data/webnlg_challenge_2017/dev.json",
    "webnlg/test.json": "data/webnlg_challenge_2017/test.json",
    "dart/train.json": "data/dart/dart-v1.1.1-full-train.json",
    "dart/dev.json": "data/dart/dart-v1.1.1-full-dev.json",
    "dart/test.json": "data/dart/dart-v1.1.1-full-test.json",
    "gpt2-tokenizer/vocab.json": "vocab/vocab.json",
    "gpt2-tokenizer/encoder.json": "vocab/encoder.json",
    "gpt2-tokenizer/vocab.bpe": "vocab/vocab.bpe",
    "gpt2-tokenizer/tokenizer.json": "vocab/tokenizer.json",
    "gpt2-tokenizer/config.json": "vocab/config.json",
}


def write_glue_task(name: str, out: Path) -> None:
    import datasets

    task = OmegaConf.load(ROOT / "conf" / "task" / f"{name}.yaml")
    folder = out / "glue" / task.glue_dir
    folder.mkdir(parents=True, exist_ok=True)
    for split, spec in task.splits.items():
        path = folder / spec.local
        if path.exists():
            print(f"exists, kept: {path}")
            continue
        ds = datasets.load_dataset(task.hub.path, task.hub.name, split=spec.hub)
        fields = [*task.text_fields, "label"]
        tmp = path.with_suffix(".tmp")
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f, delimiter="\t", quoting=csv.QUOTE_NONE, quotechar=None, lineterminator="\n")
            if task.header:
                writer.writerow([task.columns[k] for k in fields])
            for row in ds:
                label = row["label"]
                if name in STRING_LABELS:
                    label = task.label_names[label]
                cells = {
                    **{k: " ".join(row[k].split("\t")).replace("\n", " ") for k in task.text_fields},
                    "label": label,
                }
                if task.header:
                    writer.writerow([cells[k] for k in fields])
                else:  # CoLA: source, label, original label, sentence
                    writer.writerow(["hub", cells["label"], "", cells["sentence"]])
        tmp.rename(path)
        print(f"wrote {path} ({len(ds)} rows)")


def download_nlg(out: Path) -> None:
    for local, remote in NLG_FILES.items():
        path = out / local
        if path.exists():
            print(f"exists, kept: {path}")
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        urllib.request.urlretrieve(f"{LORA_NLG}/{remote}", tmp)
        tmp.rename(path)
        print(f"wrote {path}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["glue", "nlg"])
    parser.add_argument("--out", required=True, type=Path, help="the data folder (what REPRO_DATA_DIR will point at)")
    parser.add_argument("--tasks", nargs="+", default=GLUE_TASKS, choices=GLUE_TASKS)
    args = parser.parse_args(argv)
    if args.what == "glue":
        for name in args.tasks:
            write_glue_task(name, args.out)
    else:
        download_nlg(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
