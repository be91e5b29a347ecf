"""The training mechanics every cell shares, from transformers' Trainer: batching and accumulation, mixed
precision, distributed launch (torchrun), checkpoints and resume, per-epoch evaluation and best-epoch selection."""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig
from transformers import DataCollatorWithPadding, Trainer, TrainerCallback, TrainingArguments

from repro import records
from repro.metrics.glue import glue_metrics, predictions

log = logging.getLogger(__name__)


class Diverged(RuntimeError):
    pass


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def batch_plan(train: DictConfig) -> tuple[int, int]:
    """(per-device batch, accumulation steps) that give the configured global batch on the devices present.

    The paper's "batch size" was per GPU on 8 GPUs (microsoft/LoRA issues #35, #149): tables configure the global
    batch, so a cell means the same optimization on 1 GPU, 8 GPUs or a CPU.
    """
    per_step = train.global_batch_size / world_size()
    if per_step != int(per_step):
        raise ValueError(f"global batch {train.global_batch_size} does not split over {world_size()} processes")
    per_step = int(per_step)
    per_device = min(per_step, train.max_per_device_batch_size)
    while per_step % per_device:
        per_device -= 1
    return per_device, per_step // per_device


class DivergenceGuard(TrainerCallback):
    """Stop at the first non-finite training loss; the cell is then recorded as failed, with the step."""

    def __init__(self):
        self.diverged_at = None

    def on_log(self, args, state, control, logs=None, **kwargs):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(loss):
            self.diverged_at = state.global_step
            control.should_training_stop = True


def training_arguments(cfg: DictConfig, output_dir: Path, main_metric_key: str | None) -> TrainingArguments:
    t = cfg.train
    per_device, accumulation = batch_plan(t)
    evaluate = main_metric_key is not None
    return TrainingArguments(
        output_dir=str(output_dir),
        per_device_train_batch_size=per_device,
        per_device_eval_batch_size=max(per_device, 32),
        gradient_accumulation_steps=accumulation,
        num_train_epochs=t.num_train_epochs,
        max_steps=t.max_steps,
        learning_rate=t.learning_rate,
        lr_scheduler_type=t.lr_scheduler_type,
        warmup_steps=t.warmup_steps if t.warmup_steps > 0 else t.warmup_ratio,
        weight_decay=t.weight_decay,
        adam_beta1=t.adam_beta1,
        adam_beta2=t.adam_beta2,
        adam_epsilon=t.adam_epsilon,
        max_grad_norm=t.max_grad_norm,
        label_smoothing_factor=t.label_smoothing,
        activation_checkpointing=bool(cfg.model.get("gradient_checkpointing", False)),   # transformers 5's name for it
        fp16=t.precision == "fp16",
        bf16=t.precision == "bf16",
        eval_strategy=t.eval_strategy if evaluate else "no",
        eval_steps=t.eval_steps,
        save_strategy=t.eval_strategy if evaluate else "epoch",
        save_steps=t.eval_steps,
        save_total_limit=2,
        load_best_model_at_end=evaluate and t.select == "best",
        metric_for_best_model=main_metric_key,
        greater_is_better=True,
        logging_steps=t.logging_steps,
        logging_nan_inf_filter=False,
        train_sampling_strategy="group_by_length" if t.group_by_length else "random",
        seed=cfg.seed,
        data_seed=cfg.seed,
        report_to=["wandb"] if cfg.wandb.enabled else "none",
        run_name=f"{cfg.table.name}/{cfg.model.name}/{cfg.method.name}/{cfg.task.name}/seed{cfg.seed}",
        use_cpu=not torch.cuda.is_available(),
        dataloader_num_workers=0,
        remove_unused_columns=True,
    )


def train_resuming(trainer: Trainer, output_dir: Path, guard: DivergenceGuard) -> str | None:
    """trainer.train() from the cell's last complete checkpoint, if any (a requeued or interrupted cell); raise Diverged
    if the guard stopped it. Returns the checkpoint it resumed from."""
    last = records.last_complete_checkpoint(output_dir)
    last = str(last) if last else None
    if last:
        log.info("resuming from the last complete checkpoint %s", last)
    trainer.train(resume_from_checkpoint=last)
    if guard.diverged_at is not None:
        raise Diverged(f"diverged: training loss is not finite at step {guard.diverged_at}")
    return last


def history_from_logs(log_history: list[dict], main_metric_key: str | None) -> dict:
    """Loss curve and per-evaluation dev metrics, from the Trainer's log."""
    loss = [{"step": e["step"], "epoch": e.get("epoch"), "loss": e["loss"]} for e in log_history if "loss" in e]
    evals = [
        {"step": e["step"], "epoch": e.get("epoch"), **{k.removeprefix("eval_"): v for k, v in e.items() if k.startswith("eval_")}}
        for e in log_history
        if main_metric_key and main_metric_key in e
    ]
    return {"train_loss": loss, "eval": evals}


def train_classifier(cfg: DictConfig, model, tokenizer, data: dict, output_dir: Path) -> dict:
    """Train a GLUE cell and score every dev split with the selected (best-epoch or last) weights."""
    task = cfg.task
    eval_sets = {split: ds for split, ds in data.items() if split != "train"}

    def compute_metrics(p):
        return glue_metrics(list(task.metrics), predictions(np.asarray(p.predictions), task.num_labels), np.asarray(p.label_ids))

    main_key = f"eval_dev_{task.main_metric}"
    guard = DivergenceGuard()
    trainer = Trainer(
        model=model,
        args=training_arguments(cfg, output_dir, main_key),
        train_dataset=data["train"],
        eval_dataset=eval_sets,
        data_collator=DataCollatorWithPadding(tokenizer),
        compute_metrics=compute_metrics,
        callbacks=[guard],
    )
    last = train_resuming(trainer, output_dir, guard)

    metrics = {}
    for split, ds in eval_sets.items():
        scores = trainer.evaluate(eval_dataset=ds, metric_key_prefix=split)
        prefix = "" if split == "dev" else f"{split}_"
        metrics.update({prefix + m: scores[f"{split}_{m}"] for m in task.metrics})
    history = history_from_logs(trainer.state.log_history, main_key)
    best = trainer.state.best_metric if cfg.train.select == "best" else None
    best_step = next((e["step"] for e in history["eval"] if best is not None and e.get(f"dev_{task.main_metric}") == best), None)
    return {
        "metrics": metrics,
        "history": history,
        "selected": {"rule": cfg.train.select, "step": best_step or trainer.state.global_step,
                     "epoch": next((e["epoch"] for e in history["eval"] if e["step"] == best_step), None)},
        "steps": trainer.state.global_step,
        "resumed_from": last,
        "batch": dict(zip(("per_device", "accumulation"), batch_plan(cfg.train))) | {"world_size": world_size()},
    }
