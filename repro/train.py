"""The training mechanics every cell shares, from transformers' Trainer: batching and accumulation, mixed
precision, distributed launch (torchrun), checkpoints and resume, per-epoch evaluation and best-epoch selection.

Each task family's recipe (repro/tasks/) builds its trainer (a ReproTrainer with its loss, collator and metrics, on
`training_arguments`), calls `fit` and scores what it returns: an Outcome, the fields of the cell's record from
`metrics` to `nonfinite_steps`."""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from accelerate.utils import broadcast
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


def check_precision(train: DictConfig) -> None:
    """Refuse a precision this machine would not train in, before the cell's lock: fp16 without a GPU (accelerate turns
    native AMP off on a CPU and trains in fp32, with no loss scaler), bf16 on a GPU without bf16 (a V100: the Trainer
    would stop after the lock). The record's `precision` is then the one that ran (`precision_in_use`)."""
    if train.precision == "fp16" and not torch.cuda.is_available():
        raise ReproError(
            "train.precision=fp16: fp16 mixed precision needs a CUDA GPU, and there is none here (on a CPU it would "
            "train in fp32); allowed here: fp32, bf16 (CPU autocast)"
        )
    if train.precision == "bf16" and torch.cuda.is_available() and not torch.cuda.is_bf16_supported():
        raise ReproError(f"train.precision=bf16: {torch.cuda.get_device_name(0)} has no bf16; allowed here: fp32, fp16")


def precision_in_use(accelerator) -> str:
    """The precision the Trainer trains in: its accelerator's mixed precision when native AMP is on, else fp32."""
    mixed = str(accelerator.mixed_precision)
    return mixed if mixed in ("fp16", "bf16") and accelerator.native_amp else "fp32"


def batch_plan(train: DictConfig, processes: int | None = None) -> tuple[int, int]:
    """(per-device batch, accumulation steps) that give the configured global batch on the devices present (or on
    `processes` of them: the planner's).

    The paper's "batch size" was per GPU on 8 GPUs (microsoft/LoRA issues #35, #149): tables configure the global
    batch, so a cell means the same optimization on 1 GPU, 8 GPUs or a CPU. A global batch that the processes cannot
    share is bad input (ReproError); the runner asks before anything else (repro.run.run_cell).
    """
    n, total = processes or world_size(), int(train.global_batch_size)
    if total % n:
        raise ReproError(
            f"train.global_batch_size={total}: must be a multiple of the number of processes, {n} (torchrun's "
            f"WORLD_SIZE), so that each gets the same per-device batch; e.g. {max(n, total - total % n)} or "
            f"{total - total % n + n}"
        )
    per_step = total // n
    per_device = min(per_step, train.max_per_device_batch_size)
    while per_step % per_device:
        per_device -= 1
    return per_device, per_step // per_device


def eval_batch(train: DictConfig, floor: int, processes: int | None = None) -> int:
    """The per-device batch of evaluation: the training's, and at least `floor`, the task family's
    (repro.tasks.Traits.eval_batch_floor)."""
    return max(batch_plan(train, processes)[0], floor)


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


class CheckpointCadence(TrainerCallback):
    """A resumable checkpoint every `every_steps` optimizer steps or every `every_minutes` minutes of training,
    whichever comes first (either may be None), besides the Trainer's own at each evaluation: a pre-empted or
    timed-out job loses at most that much work (train.save_every_steps, train.save_every_minutes; the default, 60
    minutes, keeps a day-long DeBERTa XXL epoch from being lost whole). A checkpoint holds the weights, the optimizer,
    the scheduler and every RNG state, so the resumed cell ends bit-identical to one never stopped.

    With several processes they must all save at the same step (each writes its RNG state): rank 0's clock decides,
    broadcast through the Trainer's accelerator."""

    def __init__(self, every_steps: int | None, every_minutes: float | None):
        self.every_steps, self.every_minutes = every_steps, every_minutes
        self.trainer = None  # set by fit: its accelerator broadcasts the time decision
        self.last_step, self.last_time = 0, time.monotonic()

    def on_train_begin(self, args, state, control, **kwargs):
        self.last_step, self.last_time = state.global_step, time.monotonic()

    def on_save(self, args, state, control, **kwargs):
        self.last_step, self.last_time = state.global_step, time.monotonic()

    def on_step_end(self, args, state, control, **kwargs):
        if control.should_save or (self.every_steps is None and self.every_minutes is None):
            return
        due = self.every_steps is not None and state.global_step - self.last_step >= self.every_steps
        if self.every_minutes is not None and not due:
            late = time.monotonic() - self.last_time >= 60 * self.every_minutes
            acc = self.trainer.accelerator if self.trainer is not None else None
            if acc is not None and acc.num_processes > 1:
                late = bool(broadcast(torch.tensor([float(late)], device=acc.device), from_process=0).item())
            due = late
        if due:
            control.should_save = True


def normalised(total: torch.Tensor, count, num_items=None) -> torch.Tensor:
    """A summed loss divided by its number of targets: `num_items` when the Trainer gives it (its count of targets in
    the whole accumulated batch on all processes), else `count`."""
    denom = num_items if num_items is not None else count
    return total / torch.as_tensor(denom, dtype=total.dtype, device=total.device).clamp(min=1)


class TaskLoss:
    """A task's loss, for the Trainer (its `compute_loss_func`): each task says, per example, the sum of the losses of
    its targets and how many targets it has (`example_sums`: one per example for a classifier, the completion tokens
    for a language model); the division is `normalised`, here and nowhere else.

    Training: the micro-batch's sum divided by the Trainer's count of targets in the whole accumulated batch on all
    processes (`num_items_in_batch`): the unaccumulated mean on every step, the last (short) one too (issue 16).
    Evaluation: ReproTrainer adds up the examples' sums and counts over the whole dev set and divides once, so the dev
    loss is the mean over every real target, whatever the eval batch and the number of processes (issue 31; the
    Trainer's own averages per-batch means, and counts the duplicates that pad a distributed evaluation's last round).
    `last` keeps the most recent call's per-example (sums, counts) for that."""

    last: tuple[torch.Tensor, torch.Tensor] | None = None

    def example_sums(self, outputs, labels) -> tuple[torch.Tensor, torch.Tensor]:
        """Per example of the batch: (the summed loss of its targets, the number of its targets)."""
        raise NotImplementedError

    def __call__(self, outputs, labels, num_items_in_batch=None) -> torch.Tensor:
        sums, counts = self.example_sums(outputs, labels)
        self.last = (sums.detach(), counts.detach())
        return normalised(sums.sum(), counts.sum(), num_items_in_batch)


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
    """Trainer that hands each micro-batch's training loss to the divergence guard (see DivergenceGuard) and, with a
    TaskLoss, computes the eval loss as one sum over the eval set's real targets divided by their count."""

    def __init__(self, *, guard: DivergenceGuard | None = None, **kwargs):
        self.guard = guard or DivergenceGuard()
        self.tokens = TokenCount()
        self.eval_totals: list[torch.Tensor] = []  # per eval batch: [loss sum, target count] of its real examples
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

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        """The Trainer's evaluation step; with a TaskLoss, its examples' loss sums and counts are also added to the
        evaluation's totals, gathered from every process without the duplicates that pad the last round
        (gather_for_metrics drops them)."""
        loss_fn = self.compute_loss_func if isinstance(self.compute_loss_func, TaskLoss) else None
        if loss_fn is not None:
            loss_fn.last = None
        out = super().prediction_step(model, inputs, prediction_loss_only, ignore_keys=ignore_keys)
        if loss_fn is not None and loss_fn.last is not None:
            sums, counts = self.accelerator.gather_for_metrics(loss_fn.last)
            self.eval_totals.append(torch.stack([sums.double().sum(), counts.double().sum()]))
        return out

    def evaluation_loop(
        self, dataloader, description, prediction_loss_only=None, ignore_keys=None, metric_key_prefix="eval"
    ):
        """The Trainer's evaluation loop, whose `<prefix>_loss` is then, with a TaskLoss, one sum over the real targets
        of the whole eval set divided by their count (TaskLoss)."""
        self.eval_totals = []
        out = super().evaluation_loop(dataloader, description, prediction_loss_only, ignore_keys, metric_key_prefix)
        if self.eval_totals:
            total, count = torch.stack(self.eval_totals).sum(0).tolist()
            if count > 0:
                out.metrics[f"{metric_key_prefix}_loss"] = total / count
        return out

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
    prediction_loss_only: bool = False,
    eval_batch_floor: int = 0,
) -> TrainingArguments:
    """The Trainer's arguments of a cell. `main_metric_key`: the logged dev metric that selects the best weights (None:
    no evaluation while training); `select`: "best" (load them at the end) or "last" (train.select unless given);
    `greater_is_better`: False for a loss; `prediction_loss_only`: evaluation computes the loss alone (no logits
    gathered); `eval_batch_floor`: the task family's least per-device eval batch (`eval_batch`)."""
    t = cfg.train
    per_device, accumulation = batch_plan(t)
    evaluate = main_metric_key is not None
    return TrainingArguments(
        output_dir=str(output_dir),
        per_device_train_batch_size=per_device,
        per_device_eval_batch_size=eval_batch(t, eval_batch_floor),
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
    precision: str  # the precision training ran in (precision_in_use): the configured one (check_precision)
    skipped_steps: int  # optimizer steps the loss scaler skipped (DivergenceGuard)
    nonfinite_steps: int  # optimizer steps with a non-finite loss
    engine: dict = field(default_factory=dict)  # prepare_training's answer, and the training tokens (TokenCount)
    gpu_peak_mb: float | None = None  # torch.cuda.max_memory_allocated while training (on a GPU; the plan's estimate)
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
            "precision": self.precision,
            "skipped_steps": self.skipped_steps,
            "nonfinite_steps": self.nonfinite_steps,
            "engine": self.engine,
            **({"gpu_peak_allocated_mb": self.gpu_peak_mb} if self.gpu_peak_mb is not None else {}),
        }


def fit(
    cfg: DictConfig,
    trainer: ReproTrainer,
    output_dir: Path,
    main_metric_key: str | None,
    *,
    evaluate_selected: bool = False,
) -> Outcome:
    """Train the cell (from its last complete checkpoint, if any; checkpoints at train.save_every_steps /
    save_every_minutes besides each evaluation's; Diverged if the loss stays non-finite) and return the training part
    of its outcome. `evaluate_selected`: evaluate the weights training leaves (the best or the
    last) once more on the eval set; the evaluation is logged, so it is the history's last `eval` entry."""
    precision = precision_in_use(trainer.accelerator)
    if precision != cfg.train.precision:  # check_precision refuses these before the lock; never record a wrong one
        raise RuntimeError(f"train.precision={cfg.train.precision}, but the Trainer would train in {precision}")
    cadence = CheckpointCadence(cfg.train.get("save_every_steps"), cfg.train.get("save_every_minutes"))
    cadence.trainer = trainer
    trainer.add_callback(cadence)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    engine = prepare_training(cfg, trainer.model)
    resumed_from = train_resuming(trainer, output_dir, trainer.guard)
    if evaluate_selected:
        trainer.evaluate()
    peak = torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None
    return Outcome(
        history=history_from_logs(trainer.state.log_history, main_metric_key),
        steps=trainer.state.global_step,
        train_runtime_s=train_runtime(trainer),
        resumed_from=resumed_from,
        batch=batch_record(cfg.train),
        precision=precision,
        skipped_steps=trainer.guard.skipped_steps,
        nonfinite_steps=trainer.guard.nonfinite_steps,
        engine={**engine, "train_tokens": trainer.tokens.record()},
        gpu_peak_mb=None if peak is None else round(peak, 1),
    )
