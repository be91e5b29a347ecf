"""Classification cells (Table 2): GLUE on RoBERTa, DeBERTa and their stand-ins.

The recipe: the task's splits tokenized (repro.data.glue), a sequence-classification head with the task's labels, the
classifier loss over the accumulated batch, per-epoch evaluation on the dev split(s) with the task's GLUE metrics,
then every dev split scored with the selected weights (train.select: the best epoch by the main metric, or the last).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import transformers
from omegaconf import DictConfig
from transformers import DataCollatorWithPadding

from repro.data.glue import load_glue
from repro.methods.registry import trainer_callbacks
from repro.metrics.glue import glue_metrics, predictions
from repro.tasks import Head, traits
from repro.train import DivergenceGuard, Outcome, ReproTrainer, TaskLoss, fit, training_arguments


def head(num_labels: int | None) -> Head:
    """A sequence classifier with the task's labels (one label: regression, STS-B)."""
    return Head(transformers.AutoModelForSequenceClassification, num_labels)


def load_data(cfg: DictConfig, tokenizer) -> dict:
    """{"train": ..., "dev": ...[, "dev_mm": ...]}: tokenized GLUE splits."""
    return load_glue(cfg.task, tokenizer, cfg.data, cfg.paths.data_dir, cfg.seed)


class ClassifierLoss(TaskLoss):
    """transformers' sequence-classification loss (MSE for one label, else cross-entropy), per example; TaskLoss
    divides the sum by the examples of the whole accumulated batch on all processes while training, by the dev set's
    examples in evaluation.

    Why not the model's own loss: transformers 5 assumes that a model whose forward takes **kwargs divides its loss by
    the Trainer's count, so it no longer divides by the accumulation steps; the classifiers' own loss is a
    per-micro-batch mean, so 2 x 4 gave 4x the loss and gradients of 8 x 1 (issue 16). With several processes the
    Trainer multiplies the training loss by their number (average_tokens_across_devices) and DDP averages the
    gradients: sum over all processes / global count again."""

    def __init__(self, smoothing: float = 0.0):
        self.smoothing = smoothing

    def example_sums(self, outputs, labels) -> tuple[torch.Tensor, torch.Tensor]:
        logits = outputs["logits"].float()
        if logits.shape[-1] == 1:  # STS-B: transformers' problem_type "regression" for num_labels == 1
            losses = F.mse_loss(logits.squeeze(-1), labels.to(logits.dtype), reduction="none")
        else:
            losses = F.cross_entropy(logits, labels, reduction="none", label_smoothing=self.smoothing)
        return losses, torch.ones_like(losses)


def train_and_score(cfg: DictConfig, model, tokenizer, data: dict, output_dir: Path) -> Outcome:
    """Train a GLUE cell and score every dev split with the selected (best-epoch or last) weights."""
    task = cfg.task
    eval_sets = {split: ds for split, ds in data.items() if split != "train"}

    def compute_metrics(p):
        return glue_metrics(
            list(task.metrics), predictions(np.asarray(p.predictions), task.num_labels), np.asarray(p.label_ids)
        )

    main_key = f"eval_dev_{task.main_metric}"
    trainer = ReproTrainer(
        model=model,
        args=training_arguments(cfg, output_dir, main_key, eval_batch_floor=traits(task.kind).eval_batch_floor),
        train_dataset=data["train"],
        eval_dataset=eval_sets,
        data_collator=DataCollatorWithPadding(tokenizer),
        compute_metrics=compute_metrics,
        compute_loss_func=ClassifierLoss(float(cfg.train.label_smoothing)),
        callbacks=trainer_callbacks(model),  # the method's own (AdaLoRA's rank allocation); the guard is appended
        guard=DivergenceGuard(cfg.train.divergence_patience),
    )
    outcome = fit(cfg, trainer, output_dir, main_key)

    for split, ds in eval_sets.items():
        scores = trainer.evaluate(eval_dataset=ds, metric_key_prefix=split)
        prefix = "" if split == "dev" else f"{split}_"
        outcome.metrics.update({prefix + m: scores[f"{split}_{m}"] for m in task.metrics})
    evals = outcome.history["eval"]
    best = trainer.state.best_metric if cfg.train.select == "best" else None
    best_step = next((e["step"] for e in evals if best is not None and e.get(f"dev_{task.main_metric}") == best), None)
    outcome.selected = {
        "rule": cfg.train.select,
        "step": best_step or trainer.state.global_step,
        "epoch": next((e["epoch"] for e in evals if e["step"] == best_step), None),
    }
    return outcome
