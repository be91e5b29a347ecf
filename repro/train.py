"""The training mechanics every cell shares, from transformers' Trainer: batching and accumulation, mixed
precision, distributed launch (torchrun), checkpoints and resume, per-epoch evaluation and best-epoch selection.

Each task family's recipe (repro/tasks/) builds its trainer (a ReproTrainer with its loss, collator and metrics, on
`training_arguments`), calls `fit` and scores what it returns: an Outcome, the fields of the cell's record from
`metrics` to `nonfinite_steps`."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from omegaconf import DictConfig
from transformers import Trainer, TrainerCallback, TrainingArguments

from repro import records
from repro.dist import world_size
from repro.errors import ReproError
from repro.methods.registry import loss_term
from repro.precision import prepare_fast_path

log = logging.getLogger(__name__)


class Diverged(RuntimeError):
    pass


def check_devices() -> None:
    """Refuse several visible GPUs in a process not launched by torchrun (no LOCAL_RANK).

    The Trainer would wrap the model in DataParallel and feed it n_gpu x the per-device batch: a global batch n_gpu
    times the configured one, while world_size() says 1. One process per GPU (torchrun) is what batch_plan counts."""
    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if n > 1 and "LOCAL_RANK" not in os.environ:
        raise ReproError(
            f"{n} GPUs are visible to one process, and the Trainer would split each batch over them with DataParallel "
            f"(a global batch {n}x the configured one). Launch one process per GPU: "
            f"`torchrun --nproc_per_node={n} -m repro.run ...`, or pick one GPU: `CUDA_VISIBLE_DEVICES=0 python -m repro.run ...`."
        )


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


def batch_record(train: DictConfig) -> dict:
    """The record's `batch`: its parts and the global batch the optimizer really saw (per_device x accumulation x
    world_size)."""
    per_device, accumulation = batch_plan(train)
    return {
        "per_device": per_device,
        "accumulation": accumulation,
        "world_size": world_size(),
        "global": per_device * accumulation * world_size(),
    }


class DivergenceGuard(TrainerCallback):
    """Stop when the training loss stays non-finite: `patience` consecutive optimizer steps with a non-finite loss
    (train.divergence_patience), or a non-finite loss at the last step. The cell is then recorded as failed, with the
    step the streak began.

    One non-finite loss is no divergence: the paper's fp16 runs skip a step whose gradients overflow through the loss
    scaler (which then halves its scale), and so does the Trainer's fp16 (accelerate's GradScaler). `skipped_steps`
    counts the optimizer steps the scaler skipped, `nonfinite_steps` the steps with a non-finite loss; both go in the
    record. ReproTrainer feeds each micro-batch's loss (`saw_loss`): the logged loss cannot tell, since the Trainer
    replaces a non-finite step's loss by the running mean, and without that filter one NaN stays in its loss sum for
    good (NaN - NaN is NaN) and every later log is NaN."""

    def __init__(self, patience: int = 10):
        self.patience = patience
        self.trainer = None  # set by ReproTrainer: its accelerator knows whether the step was skipped
        self.skipped_steps = self.nonfinite_steps = self.streak = 0
        self.diverged_at = None  # the first step of a streak that reached `patience`
        self.step_finite = True

    def saw_loss(self, loss: torch.Tensor) -> None:
        self.step_finite &= bool(torch.isfinite(loss).all())

    def end_step(self, step: int, finite: bool, skipped: bool) -> bool:
        """Count one optimizer step; True when the loss has now been non-finite for `patience` steps in a row."""
        self.skipped_steps += skipped
        self.nonfinite_steps += not finite
        self.streak = 0 if finite else self.streak + 1
        if self.streak >= self.patience and self.diverged_at is None:
            self.diverged_at = step - self.streak + 1
        return self.diverged_at is not None

    def on_step_end(self, args, state, control, **kwargs):
        finite, skipped = self.step_finite, False
        self.step_finite = True
        if self.trainer is not None:
            acc = self.trainer.accelerator
            skipped = acc.optimizer_step_was_skipped
            if acc.num_processes > 1:  # every process must stop at the same step
                finite = acc.reduce(torch.tensor(float(not finite), device=acc.device), "sum").item() == 0
        if self.end_step(state.global_step, finite, skipped):
            control.should_training_stop = True

    def failure(self) -> str | None:
        """Why the cell diverged, or None."""
        if self.diverged_at is not None:
            return (
                f"diverged: training loss not finite for {self.patience} consecutive steps from step {self.diverged_at}"
            )
        if self.streak:
            return f"diverged: training loss still not finite at the last step ({self.streak} consecutive steps)"
        return None


class TokenCount:
    """The tokens the training batches carried: real ones (attention mask 1) and padding, on this process."""

    def __init__(self):
        self.real = self.padded = 0

    def count(self, inputs: dict) -> None:
        mask = inputs.get("attention_mask")
        if mask is not None:
            real = int(mask.sum())
            self.real, self.padded = self.real + real, self.padded + mask.numel() - real

    def record(self) -> dict:
        total = self.real + self.padded
        return {"real": self.real, "padding": self.padded, "padded_fraction": self.padded / total if total else None}


class ReproTrainer(Trainer):
    """Trainer that hands each micro-batch's training loss to the divergence guard (see DivergenceGuard)."""

    def __init__(self, *, guard: DivergenceGuard | None = None, **kwargs):
        self.guard = guard or DivergenceGuard()
        self.tokens = TokenCount()
        super().__init__(callbacks=[*(kwargs.pop("callbacks", None) or []), self.guard], **kwargs)
        self.guard.trainer = self

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """The task loss (compute_loss_func), plus, while training, the method's own loss term (AdaLoRA's orthogonality
        penalty: repro.methods.registry.loss_term), added here and nowhere else (CompletionTrainer calls this).

        Scaling: the term enters the accumulated gradient once per optimizer step, as PEFT's per-forward penalty does
        under its loss mean (PeftModel: mean loss + penalty per forward; a plain Trainer divides each micro-batch's loss
        by the accumulation steps). Our task loss is already normalized over the whole accumulated batch
        (num_items_in_batch), so the Trainer does not divide it: the term is divided by the micro-batches of this
        optimizer step (current_gradient_accumulation_steps, fewer on an epoch's short last step). Where the Trainer
        does divide the loss (no compute_loss_func), the term is left whole and the Trainer's division does the same.
        It is added after the Trainer's x num_processes (average_tokens_across_devices), and DDP averages the
        processes' gradients: once per step with several processes too. Evaluation (model.eval()) gets the task
        loss alone."""
        out = super().compute_loss(model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch)
        term = loss_term(self.accelerator.unwrap_model(model)) if model.training else None
        if term is None:
            return out
        if self._loss_scaled_for_ga(num_items_in_batch):
            term = term / getattr(self, "current_gradient_accumulation_steps", self.args.gradient_accumulation_steps)
        if return_outputs:
            return out[0] + term, out[1]
        return out + term

    def _loss_scaled_for_ga(self, num_items_in_batch) -> bool:
        """Trainer.training_step's rule: True when it will not divide the loss by the accumulation steps."""
        if self.loss_is_scaled_for_ga is not None:
            return self.loss_is_scaled_for_ga
        return (self.model_accepts_loss_kwargs and num_items_in_batch is not None) or self.compute_loss_func is not None

    def training_step(self, model, inputs, num_items_in_batch=None):
        self.tokens.count(inputs)
        loss = super().training_step(model, inputs, num_items_in_batch)
        self.guard.saw_loss(loss)
        return loss

    def trainable_names(self) -> set[str]:
        return {n for n, p in self.model.named_parameters() if p.requires_grad}

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        """A checkpoint of a method with a frozen backbone holds its trainable tensors only (LoRA's A and B, the
        adapters, the task head: Section 4.2's small checkpoints, for resuming too). The Trainer loads checkpoints
        non-strictly, on resume and for the best model, so the frozen weights stay as they were loaded. FT saves all."""
        if state_dict is None and any(not p.requires_grad for p in self.model.parameters()):
            trainable = self.trainable_names()
            state_dict = {k: v for k, v in self.model.state_dict().items() if k in trainable}
        super()._save(output_dir, state_dict)

    def _issue_warnings_after_load(self, load_result) -> None:
        """Missing keys of an adapters-only checkpoint are the frozen weights: expected, not worth a warning."""
        trainable = self.trainable_names()
        super()._issue_warnings_after_load(
            load_result._replace(missing_keys=[k for k in load_result.missing_keys if k in trainable])
        )


def training_arguments(
    cfg: DictConfig,
    output_dir: Path,
    main_metric_key: str | None,
    *,
    select: str | None = None,
    greater_is_better: bool = True,
    eval_batch_size: int | None = None,
    prediction_loss_only: bool = False,
) -> TrainingArguments:
    """The Trainer's arguments of a cell. `main_metric_key`: the logged dev metric that selects the best weights (None:
    no evaluation while training); `select`: "best" (load them at the end) or "last" (train.select unless given);
    `greater_is_better`: False for a loss; `eval_batch_size`: the per-device batch of evaluation (default: at least
    32); `prediction_loss_only`: evaluation computes the loss alone (no logits gathered)."""
    t = cfg.train
    per_device, accumulation = batch_plan(t)
    evaluate = main_metric_key is not None
    return TrainingArguments(
        output_dir=str(output_dir),
        per_device_train_batch_size=per_device,
        per_device_eval_batch_size=eval_batch_size or max(per_device, 32),
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
        activation_checkpointing=bool(cfg.model.get("gradient_checkpointing", False)),  # transformers 5's name for it
        fp16=t.precision == "fp16",
        bf16=t.precision == "bf16",
        eval_strategy=t.eval_strategy if evaluate else "no",
        eval_steps=t.eval_steps,
        save_strategy=t.eval_strategy if evaluate else "epoch",
        save_steps=t.eval_steps,
        save_total_limit=1,  # one per cell (the Trainer also keeps the best one while it differs from the last)
        load_best_model_at_end=evaluate and (select or t.select) == "best",
        metric_for_best_model=main_metric_key,
        greater_is_better=greater_is_better,
        prediction_loss_only=prediction_loss_only,
        logging_steps=t.logging_steps,
        logging_nan_inf_filter=True,  # a non-finite step's loss is left out of the logged mean (DivergenceGuard)
        average_tokens_across_devices=True,  # the loss's divisor counts every process's labels (the recipes' losses)
        train_sampling_strategy="group_by_length" if t.group_by_length or fast_path(cfg) else "random",
        seed=cfg.seed,
        data_seed=cfg.seed,
        report_to=["wandb"] if cfg.wandb.enabled else "none",
        run_name=f"{cfg.table.name}/{cfg.model.name}/{cfg.method.name}/{cfg.task.name}/seed{cfg.seed}",
        use_cpu=not torch.cuda.is_available(),
        dataloader_num_workers=0,
        remove_unused_columns=True,
    )


# ------------------------------------------------------------------ the fast path (train.fast_path, issue 27)


def fast_path(cfg: DictConfig) -> bool:
    """train.fast_path: the frozen base held in the compute precision and fp32-backward attention
    (repro.precision), the causal LM's loss fused with its head in chunks (repro.tasks.generation), batches grouped by
    length, and (bf16) decoding a bf16 copy with LoRA merged. Off (absent from older configs): as the committed
    records were computed."""
    return bool(cfg.train.get("fast_path", False))


def prepare_training(cfg: DictConfig, model) -> dict:
    """What the cell's training engine is, applied to `model` before it trains: {"fast_path": False} or the fast
    path's changes (repro.precision.prepare_fast_path)."""
    if not fast_path(cfg):
        return {"fast_path": False}
    return {"fast_path": True, **prepare_fast_path(model, str(cfg.train.precision))}


def train_resuming(trainer: Trainer, output_dir: Path, guard: DivergenceGuard) -> str | None:
    """trainer.train() from the cell's last complete checkpoint, if any (a requeued or interrupted cell); raise Diverged
    if the guard stopped it. Returns the checkpoint it resumed from."""
    last = records.last_complete_checkpoint(output_dir)
    last = str(last) if last else None
    if last:
        log.info("resuming from the last complete checkpoint %s", last)
    trainer.train(resume_from_checkpoint=last)
    if guard.failure():
        raise Diverged(f"{guard.failure()}; {guard.skipped_steps} optimizer steps skipped by the loss scaler")
    return last


def train_runtime(trainer: Trainer) -> float | None:
    """Seconds of trainer.train() (its per-epoch evaluations included; a resumed cell: the resumed part only)."""
    return next((e["train_runtime"] for e in reversed(trainer.state.log_history) if "train_runtime" in e), None)


def history_from_logs(log_history: list[dict], main_metric_key: str | None) -> dict:
    """Loss curve and per-evaluation dev metrics, from the Trainer's log."""
    loss = [{"step": e["step"], "epoch": e.get("epoch"), "loss": e["loss"]} for e in log_history if "loss" in e]
    evals = [
        {
            "step": e["step"],
            "epoch": e.get("epoch"),
            **{k.removeprefix("eval_"): v for k, v in e.items() if k.startswith("eval_")},
        }
        for e in log_history
        if main_metric_key and main_metric_key in e
    ]
    return {"train_loss": loss, "eval": evals}


@dataclass
class Outcome:
    """What training and scoring a cell produced: its record's fields from `metrics` to `nonfinite_steps`. `fit`
    fills the training part; the recipe sets `selected` (the weights it scored), `metrics` and its own fields
    (`extra`, e.g. generation's `decode`), which the record places after `selected`."""

    history: dict  # loss curve and per-evaluation dev metrics (history_from_logs)
    steps: int  # optimizer steps taken
    train_runtime_s: float | None
    resumed_from: str | None  # the checkpoint training resumed from, if any
    batch: dict  # batch_record
    skipped_steps: int  # optimizer steps the loss scaler skipped (DivergenceGuard)
    nonfinite_steps: int  # optimizer steps with a non-finite loss
    engine: dict = field(default_factory=dict)  # prepare_training's answer, and the training tokens (TokenCount)
    selected: dict | None = None  # {"rule", "step", "epoch"} of the weights scored
    metrics: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)

    def fields(self) -> dict:
        """The record's fields, in the record's order."""
        return {
            "metrics": self.metrics,
            "history": self.history,
            "selected": self.selected,
            **self.extra,
            "steps": self.steps,
            "train_runtime_s": self.train_runtime_s,
            "resumed_from": self.resumed_from,
            "batch": self.batch,
            "skipped_steps": self.skipped_steps,
            "nonfinite_steps": self.nonfinite_steps,
            "engine": self.engine,
        }


def fit(
    cfg: DictConfig,
    trainer: ReproTrainer,
    output_dir: Path,
    main_metric_key: str | None,
    *,
    evaluate_selected: bool = False,
) -> Outcome:
    """Train the cell (from its last complete checkpoint, if any; Diverged if the loss stays non-finite) and return
    the training part of its outcome. `evaluate_selected`: evaluate the weights training leaves (the best or the
    last) once more on the eval set; the evaluation is logged, so it is the history's last `eval` entry."""
    engine = prepare_training(cfg, trainer.model)
    resumed_from = train_resuming(trainer, output_dir, trainer.guard)
    if evaluate_selected:
        trainer.evaluate()
    return Outcome(
        history=history_from_logs(trainer.state.log_history, main_metric_key),
        steps=trainer.state.global_step,
        train_runtime_s=train_runtime(trainer),
        resumed_from=resumed_from,
        batch=batch_record(cfg.train),
        skipped_steps=trainer.guard.skipped_steps,
        nonfinite_steps=trainer.guard.nonfinite_steps,
        engine={**engine, "train_tokens": trainer.tokens.record()},
    )
