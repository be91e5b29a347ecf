"""The dev loss of fixed weights, evaluated by the runner's trainers at several per-device eval batches: in this process
(tests/test_train.py) and under torchrun with several CPU processes (`torchrun --nproc_per_node=2 -m tests.dist_eval
OUT 1,7`: rank 0 writes {task: {batch: loss}} to OUT as JSON). Not a test module: a helper both sides run.

The weights are the same everywhere: a tiny model initialized from seed 0 and LoRA on it, nothing trained. The dev
sets have 13 examples, which no eval batch above 1 divides and 2 processes do not split evenly: a distributed
evaluation pads its last round with duplicates."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from transformers import DataCollatorForSeq2Seq, DataCollatorWithPadding

from repro import CONF_DIR, dist
from repro.methods import apply_method
from repro.models import load_model, load_tokenizer
from repro.tasks import classification, family, generation
from repro.train import ReproTrainer, training_arguments

CELLS = {  # task: the composed cell's overrides (a regression head, and a causal LM's completion tokens)
    "stsb": ["model=tiny-roberta", "method=lora", "task=stsb"],
    "e2e": ["model=tiny-gpt2", "method=lora", "task=e2e"],
}
DEV_EXAMPLES = 13


def dev_losses(task: str, batches: list[int], out_dir: Path) -> dict[int, float]:
    """{eval batch: the dev loss} of the cell's seed-0 weights."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        extra = ["decode.max_inputs=1"] if task == "e2e" else []
        cfg = compose(
            config_name="config",
            overrides=[
                *CELLS[task],
                *extra,
                "data.max_train_samples=8",
                f"data.max_eval_samples={DEV_EXAMPLES}",
                f"paths.results_dir={out_dir}",
            ],
        )
    tok = load_tokenizer(cfg.model, cfg.paths.data_dir)
    data = family(cfg.task.kind).load_data(cfg, tok)
    torch.manual_seed(0)
    model = apply_method(load_model(cfg.model, cfg.task, tok), cfg.method)
    losses = {}
    for b in batches:
        args = training_arguments(cfg, out_dir / f"{task}-{b}", None)
        args.per_device_eval_batch_size = b
        if task == "e2e":
            trainer = generation.CompletionTrainer(
                model=model,
                args=args,
                eval_dataset=data["dev"],
                data_collator=DataCollatorForSeq2Seq(tok, padding=True, label_pad_token_id=-100),
                compute_loss_func=generation.CompletionLoss(model, 0.0),
            )
        else:
            trainer = ReproTrainer(
                model=model,
                args=args,
                eval_dataset=data["dev"],
                data_collator=DataCollatorWithPadding(tok),
                compute_loss_func=classification.ClassifierLoss(),
            )
        losses[b] = trainer.evaluate()["eval_loss"]
    return losses


def main(argv: list[str]) -> None:
    out, batches = Path(argv[0]), [int(b) for b in argv[1].split(",")]
    dist.init()
    found = {task: dev_losses(task, batches, out.parent / f"rank{dist.rank()}") for task in CELLS}
    if dist.is_main():
        out.write_text(json.dumps(found))


if __name__ == "__main__":
    main(sys.argv[1:])
