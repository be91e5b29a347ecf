"""Generation cells (Tables 3, 13, 14): GPT-2 (and the CPU stand-ins) on E2E, WebNLG, DART.

The recipe, as microsoft/LoRA examples/NLG runs it:
- data: the task's splits formatted and encoded as its format_converting_*.py and gpt2_encode.py do (repro.data.nlg);
  the test split grouped into unique inputs with their references;
- training with the original loss (completion tokens only, label smoothing as gpt2_ft.py computes it:
  (1 - eps) * nll + eps * mean over the vocabulary of -log p; CompletionTrainer: the labels reach the method's
  forward hooks, the LM head runs on the completion positions only), dev loss per epoch;
- the paper's beam search (repro.decode) on the test inputs with the chosen checkpoint (decode.checkpoint: last, or
  best by dev loss), gpt2_decode.py's post-processing, and the dataset's official scorer (repro.tasks.scorers).
Hypotheses and references are written beside the record (seed<k>.hyp.txt, seed<k>.ref.txt in the E2E challenge's
multi-reference format; where the inputs carry a seen/unseen flag, as WebNLG's do, also seed<k>.seen.txt), so
`python -m repro.score` re-scores them.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import datasets
import torch
import torch.nn.functional as F
import transformers
from omegaconf import DictConfig, OmegaConf
from transformers import DataCollatorForSeq2Seq

from repro import dist, records
from repro.data import nlg as nlg_data
from repro.data.glue import subsample
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
from repro.errors import CellMismatch, DataFileMissing
from repro.methods.lora import merge, merged
from repro.methods.registry import trainer_callbacks
from repro.metrics.nlg import decode_postprocess
from repro.tasks import Head, traits
from repro.tasks.scorers import score
from repro.train import (
    DivergenceGuard,
    Outcome,
    ReproTrainer,
    TaskLoss,
    fast_path,
    fit,
    normalised,
    training_arguments,
)

log = logging.getLogger(__name__)

DEV_LOSS = "eval_loss"  # the metric that selects the best checkpoint (decode.checkpoint=best): lower is better


def head(num_labels: int | None) -> Head:
    """A causal LM: its head is the vocabulary (num_labels does not apply)."""
    return Head(transformers.AutoModelForCausalLM)


# ------------------------------------------------------------------ data


@dataclass(frozen=True)
class Source:
    """Where a generation task's examples come from (DATASETS, by task name)."""

    read_file: Callable[[Path], list[dict]]  # one split of the paper's files
    read_hub: Callable[[DictConfig, str], list[dict]]  # one split of the hub's dataset (not the paper's files)
    how_to_get: str  # what the error says when a file is missing


DATASETS = {
    "e2e": Source(nlg_data.read_e2e, nlg_data.e2e_from_hub, nlg_data.E2E_FILES),
    "webnlg": Source(nlg_data.read_webnlg, nlg_data.webnlg_from_hub, nlg_data.WEBNLG_FILES),
    "dart": Source(nlg_data.read_dart, nlg_data.dart_from_hub, nlg_data.DART_FILES),
}


def load_examples(task: DictConfig, split: str, data_dir: str | None) -> list[dict]:
    """One split as examples {context, completion[, category, seen]}, in file order: the paper's files under
    data_dir, else the hub. A hub dataset that cannot be read says so and how to get the files instead: offline the
    hub is unreachable, and online `datasets` 4+ runs no loading scripts, which the hub's e2e_nlg, web_nlg and dart
    are (or were) built on."""
    source = DATASETS[task.name]
    if data_dir:
        return source.read_file(nlg_data.nlg_file(task, split, data_dir, source.how_to_get))
    try:
        return source.read_hub(task, split)
    except Exception as exc:  # ConnectionError offline, RuntimeError "Dataset scripts are no longer supported", ...
        script = "loading script" in str(exc).lower() or "scripts are no longer supported" in str(exc).lower()
        raise DataFileMissing(
            f"task={task.name}: no data folder is set (REPRO_DATA_DIR unset, paths.data_dir=null), so the {split} split "
            f"was read from the hub dataset {task.hub.path!r}, and that failed: {type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}. "
            + (
                "It needs a loading script, and the installed `datasets` runs none. "
                if script
                else "Offline the hub is unreachable, and online the installed `datasets` runs no loading scripts. "
            )
            + f"Write the paper's files with `python scripts/prepare_data.py nlg --out DIR` (on a machine with internet) "
            f"and set REPRO_DATA_DIR=DIR. {source.how_to_get}"
        ) from exc


def load_data(cfg: DictConfig, tokenizer) -> dict:
    """{"train": Dataset, "dev": Dataset, "test": [{context, prompt, references[, seen]}] (unique inputs)}."""
    task, data_dir = cfg.task, cfg.paths.data_dir
    max_len = cfg.data.max_seq_length
    resolve_end_token_ids(cfg.decode.eos_token_ids, tokenizer)  # end tokens that do not fit the tokenizer: refused now
    out = {}
    train = load_examples(task, "train", data_dir)
    if cfg.data.max_train_samples:  # a seeded random subset, drawn as repro.data.glue draws one
        index = datasets.Dataset.from_dict({"i": list(range(len(train)))})
        train = [train[i] for i in subsample(index, cfg.data.max_train_samples, cfg.seed)["i"]]
    out["train"] = nlg_data.encode_split(train, tokenizer, max_len, f"encode {task.name} train")
    dev = load_examples(task, "dev", data_dir)
    if cfg.data.max_eval_samples:
        dev = dev[: cfg.data.max_eval_samples]
    out["dev"] = nlg_data.encode_split(dev, tokenizer, max_len, f"encode {task.name} dev")
    test = group_references(load_examples(task, cfg.decode.split, data_dir))
    if cfg.decode.max_inputs:
        test = test[: cfg.decode.max_inputs]
    for entry in test:  # the query: at most seq_len - eval_len context tokens (FT_Dataset)
        entry["prompt"] = nlg_data.prompt_ids(tokenizer, entry["context"], max_len - cfg.decode.max_new_tokens)
    out["test"] = test
    log.info(
        "%s: %d train, %d dev examples; %d unique %s inputs to decode",
        task.name,
        len(out["train"]),
        len(out["dev"]),
        len(test),
        cfg.decode.split,
    )
    return out


# ------------------------------------------------------------------ the loss


def token_loss(logits: torch.Tensor, targets: torch.Tensor, smoothing: float) -> torch.Tensor:
    """gpt2_ft.py / model.py's per-token loss: with smoothing eps, (1 - eps) * (-log p[target]) + eps * mean_v(-log p[v])."""
    logprobs = F.log_softmax(logits.float(), dim=-1)
    nll = -logprobs.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return nll if smoothing <= 0 else (1.0 - smoothing) * nll + smoothing * (-logprobs.mean(dim=-1))


class _ChunkedHeadLoss(torch.autograd.Function):
    """token_loss(hidden @ weight.T, targets, smoothing) per row, with its gradients, never holding more than `chunk`
    rows of logits. Per chunk: the logits z in the dtype of `hidden` (bf16 on the fast path), log_softmax(z) in fp32
    (one fused pass over each row), the loss (1 - eps)(-log p[target]) + eps mean_v(-log p[v]) from it, and the
    gradient with respect to z, softmax(z) - (1 - eps) onehot(target) - eps / V, in the dtype of `hidden` (what
    autocast's backward hands the head's matrix product too). The gradient with respect to `hidden` is made at once,
    chunk by chunk; the backward pass scales its rows by the incoming gradient, and makes the one with respect to
    `weight` (when it is trained: FT, an embedding tied to the head) from the kept logit gradients."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, smoothing: float, chunk: int):
        want_h, want_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        w = weight.to(hidden.dtype)
        rows, vocab = len(hidden), w.shape[0]
        losses = torch.empty(rows, dtype=torch.float32, device=hidden.device)
        grad_h = torch.empty_like(hidden) if want_h else None
        grad_z = hidden.new_empty(rows, vocab) if want_w else None
        for lo in range(0, rows, chunk):
            h, t = hidden[lo : lo + chunk], targets[lo : lo + chunk].unsqueeze(1)
            z = h @ w.T
            logp = torch.log_softmax(z, dim=-1, dtype=torch.float32)
            loss = -logp.gather(1, t).squeeze(1)
            if smoothing > 0:
                loss = (1.0 - smoothing) * loss - smoothing * logp.mean(dim=-1)
            losses[lo : lo + chunk] = loss
            if want_h or want_w:
                del logp
                g = torch.softmax(z, dim=-1, out=z) if z.dtype == torch.float32 else torch.softmax(z, dim=-1)
                if smoothing > 0:
                    g.sub_(smoothing / vocab)
                g.scatter_add_(1, t, g.new_full(t.shape, smoothing - 1.0))
                if want_h:
                    grad_h[lo : lo + chunk] = g @ w
                if want_w:
                    grad_z[lo : lo + chunk] = g
        ctx.save_for_backward(grad_h, grad_z, hidden if want_w else None)
        ctx.weight_dtype = weight.dtype
        return losses

    @staticmethod
    def backward(ctx, grad_losses):
        grad_h, grad_z, hidden = ctx.saved_tensors
        scale = grad_losses.unsqueeze(1)
        dh = grad_h * scale.to(grad_h.dtype) if grad_h is not None else None
        dw = ((grad_z * scale.to(grad_z.dtype)).T @ hidden).to(ctx.weight_dtype) if grad_z is not None else None
        return dh, dw, None, None, None


def chunked_head_loss(
    hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, smoothing: float, chunk: int = 128
) -> torch.Tensor:
    """token_loss of each row of `hidden` (the positions that predict a target, N x d) under the LM head `weight`
    (V x d), computed `chunk` rows at a time (_ChunkedHeadLoss): never N x V fp32 logits. The matrix products run in
    the dtype of `hidden` (bf16 under autocast with the frozen base held in bf16, fp32 otherwise); the softmax and
    the losses in fp32."""
    if torch.is_autocast_enabled(hidden.device.type):
        hidden = hidden.to(torch.get_autocast_dtype(hidden.device.type))
    if not torch.is_grad_enabled():  # evaluation: no gradients made
        hidden, weight = hidden.detach(), weight.detach()
    with torch.autocast(hidden.device.type, enabled=False):
        return _ChunkedHeadLoss.apply(hidden, weight, targets, float(smoothing), chunk)


def completion_sums(logits: torch.Tensor, labels: torch.Tensor, smoothing: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per example: gpt2_ft.py / model.py's loss on shifted targets summed over its completion tokens (token_loss), and
    their number."""
    labels = labels[:, 1:]
    mask = labels.ne(-100)
    loss = token_loss(logits[:, :-1, :], labels, smoothing)
    return (loss * mask).sum(-1), mask.sum(-1)


def completion_loss(logits: torch.Tensor, labels: torch.Tensor, smoothing: float, num_items=None) -> torch.Tensor:
    """gpt2_ft.py / model.py's loss on shifted targets, masked to the completion (token_loss), averaged over the
    completion tokens (or over `num_items`, the Trainer's count for the whole accumulated batch)."""
    sums, counts = completion_sums(logits, labels, smoothing)
    return normalised(sums.sum(), counts.sum(), num_items)


class CompletionLoss(TaskLoss):
    """The training/dev loss of a causal LM as gpt2_ft.py computes it, for the Trainer (`CompletionTrainer`).

    While a batch is in the model (`attach`), three forward pre-hooks are in place:
    - on the model, first: the labels are handed to the model's forward, so that the method's own pre-hooks see them
      (prefix tuning inserts its l_p + l_i positions into labels and inputs alike; with the labels popped, as
      Trainer's `compute_loss_func` path pops them, logits and labels came out misaligned and PreLayer/PreEmbed NLG
      cells crashed);
    - on the model, last: the labels as the model will see them are taken back out (the model never computes
      transformers' own loss) and kept;
    - on the output embeddings (the LM head): only the positions that predict a completion token go through it.
      The loss is the same; the 50257-way head, ~95% of a small model's step, is skipped on context and padding.
    Per example it gives the loss summed over its completion tokens and their number; TaskLoss divides.
    `fused` (train.fast_path): those positions' hidden states are kept and the head gets none; their losses are then
    chunked_head_loss's under the head's weight (no logits over the vocabulary held for all of them at once, none in
    fp32). Only for a plain bias-free linear head (GPT-2's, Llama's); any other head goes the first way.
    """

    def __init__(self, model, smoothing: float, fused: bool = False):
        self.model, self.smoothing = model, smoothing
        head = model.get_output_embeddings()
        self.fused = fused and type(head) is torch.nn.Linear and head.bias is None
        self.labels = self.positions = self.hidden = None
        self.selected = False

    def _give_labels(self, labels, module, args, kwargs):
        return args, {**kwargs, "labels": labels}

    def _take_labels(self, module, args, kwargs):
        kwargs = dict(kwargs)
        self.labels = kwargs.pop("labels", None)
        self.positions = None if self.labels is None else self.labels[:, 1:].ne(-100)
        return args, kwargs

    def _select(self, module, args):
        hidden = args[0]
        if self.positions is None or hidden.dim() != 3 or hidden.shape[:2] != self.labels.shape:
            return None
        self.selected = True
        if self.fused:  # the head computes nothing; the loss takes these rows (example_sums)
            self.hidden = hidden[:, :-1][self.positions]
            return (self.hidden[:0], *args[1:])
        return (hidden[:, :-1][self.positions], *args[1:])

    @contextlib.contextmanager
    def attach(self, labels: torch.Tensor):
        """The hooks in place for one forward pass of `labels`' batch."""
        self.labels = self.positions = self.hidden = None
        self.selected = False
        handles = [
            self.model.register_forward_pre_hook(partial(self._give_labels, labels), with_kwargs=True, prepend=True),
            self.model.register_forward_pre_hook(self._take_labels, with_kwargs=True),
            self.model.get_output_embeddings().register_forward_pre_hook(self._select),
        ]
        try:
            yield self
        finally:
            for h in handles:
                h.remove()

    def example_sums(self, outputs, labels) -> tuple[torch.Tensor, torch.Tensor]:
        # label smoothing while training only; the dev loss is the plain completion NLL (gpt2_ft.py's evaluate)
        smoothing = self.smoothing if self.model.training else 0.0
        seen = self.labels if self.labels is not None else labels
        if not self.selected:
            return completion_sums(outputs.logits, seen, smoothing)
        targets = seen[:, 1:][self.positions]  # the selected positions, row-major
        if self.hidden is not None:
            weight = self.model.get_output_embeddings().weight
            loss, self.hidden = chunked_head_loss(self.hidden, weight, targets, smoothing), None
        else:
            loss = token_loss(outputs.logits, targets, smoothing)
        rows = self.positions.nonzero()[:, 0]
        return loss.new_zeros(len(seen)).index_add(0, rows, loss), self.positions.sum(-1)


class CompletionTrainer(ReproTrainer):
    """Trainer with `compute_loss_func=CompletionLoss(...)`: each batch's forward runs with its hooks attached.

    Gradient accumulation: CompletionLoss divides the loss summed over a micro-batch's target tokens by
    `num_items_in_batch`, the Trainer's count of target tokens (labels[:, 1:] != -100) in the whole accumulated batch
    on all processes, so 2 x 4 gives the token mean of the unaccumulated batch of 8 (tests/test_train.py)."""

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        with self.compute_loss_func.attach(inputs["labels"]):
            return super().compute_loss(
                model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch
            )


# ------------------------------------------------------------------ training, then decoding and scoring


def generation_arguments(cfg: DictConfig, output_dir: Path) -> transformers.TrainingArguments:
    """The shared training arguments, selecting by the dev loss: lower is better, evaluation computes the loss alone
    (never gathering B x T x 50257 logits), in the training's per-device batch (the family's eval_batch_floor, 0)."""
    return training_arguments(
        cfg,
        output_dir,
        DEV_LOSS,
        select=cfg.decode.checkpoint,
        greater_is_better=False,
        prediction_loss_only=True,
        eval_batch_floor=traits(cfg.task.kind).eval_batch_floor,
    )


def train_and_score(cfg: DictConfig, model, tokenizer, data: dict, output_dir: Path) -> Outcome:
    """Train, then decode the test inputs with the chosen checkpoint and score them; the dev loss of the weights that
    decode joins the metrics."""
    if cfg.decode.checkpoint not in ("last", "best"):
        raise CellMismatch(f"decode.checkpoint={cfg.decode.checkpoint!r}; allowed: last, best")
    trainer = CompletionTrainer(
        model=model,
        args=generation_arguments(cfg, output_dir),
        train_dataset=data["train"],
        eval_dataset=data["dev"],
        data_collator=DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100),
        compute_loss_func=CompletionLoss(model, float(cfg.train.label_smoothing), fused=fast_path(cfg)),
        callbacks=trainer_callbacks(model),  # the method's own (AdaLoRA's rank allocation); the guard is appended
        guard=DivergenceGuard(cfg.train.divergence_patience),
    )
    outcome = fit(cfg, trainer, output_dir, DEV_LOSS, evaluate_selected=True)
    dev_loss = outcome.history["eval"][-1]["loss"]  # of the weights that will decode (best or last)
    best_step = None
    if cfg.decode.checkpoint == "best" and trainer.state.best_model_checkpoint:
        best_step = int(Path(trainer.state.best_model_checkpoint).name.split("-")[-1])

    metrics, decode_info = decode_and_score(cfg, trainer.model, tokenizer, data["test"])
    decode_info["checkpoint"] = cfg.decode.checkpoint
    step = best_step or trainer.state.global_step
    outcome.metrics = {**metrics, "dev_loss": dev_loss}
    outcome.selected = {
        "rule": cfg.decode.checkpoint,
        "step": step,
        "epoch": next((e["epoch"] for e in outcome.history["eval"] if e["step"] == step), None),
    }
    outcome.extra = {"decode": decode_info}
    return outcome


def beam_settings(cfg: DictConfig, tokenizer=None) -> BeamSettings:
    """The decode settings; the end tokens in the tokenizer's ids (the task configs write GPT-2's 50256, 628)."""
    d = cfg.decode
    eos = resolve_end_token_ids(d.eos_token_ids, tokenizer) if tokenizer is not None else tuple(d.eos_token_ids)
    return BeamSettings(
        num_beams=d.num_beams,
        length_penalty=d.length_penalty,
        no_repeat_ngram_size=d.no_repeat_ngram_size,
        eos_token_ids=eos,
        max_new_tokens=d.max_new_tokens,
        batch_size=d.batch_size,
        early_stop=d.get("early_stop", True),
        pad_batches=bool(d.get("pad_batches", False)),
    )


def decode_precision(cfg: DictConfig, model):
    """Decoding runs in the precision the cell trained in: fp32 as is; bf16/fp16 under the same autocast the Trainer
    used (weights stay fp32, matrix products in half precision)."""
    p = str(cfg.train.precision)
    if p == "fp32":
        return contextlib.nullcontext()
    device = next(model.parameters()).device
    return torch.autocast(device.type, dtype=torch.bfloat16 if p == "bf16" else torch.float16)


def fast_decoding(cfg: DictConfig) -> bool:
    """The fast path in half precision decodes a half-precision copy (decoder)."""
    return fast_path(cfg) and str(cfg.train.precision) != "fp32"


@contextlib.contextmanager
def decoder(cfg: DictConfig, model):
    """The model that decodes, LoRA merged (W = W0 + (alpha/r) B A, Section 4.1). As the committed records did: the
    model itself, merged in place (unmerged on exit), under decode_precision's autocast. The fast path in half
    precision (fast_decoding): a copy, LoRA merged into it in fp32 and every weight then in that precision
    (repro.decode.decoding_model: no weight cast at every matrix product); the trained model is left untouched."""
    if fast_decoding(cfg):
        yield decoding_model(merge(copy.deepcopy(model)), str(cfg.train.precision))
        return
    with merged(model), decode_precision(cfg, model):
        yield model


def decoding_weights(cfg: DictConfig) -> str:
    """What decoder decodes with, in words (the record's decode.weights)."""
    p = str(cfg.train.precision)
    if fast_decoding(cfg):
        return f"a {p} copy, LoRA merged"
    return "fp32" if p == "fp32" else f"fp32 under {p} autocast"


def decode_and_score(cfg: DictConfig, model, tokenizer, test: list[dict]) -> tuple[dict, dict]:
    """Beam search over the test inputs with LoRA merged (decoder; Section 4.1: loralib merges in eval mode, so
    gpt2_beam.py decodes merged weights too), scored. Inputs that carry a
    `seen` flag (WebNLG's) are scored on the seen, unseen and all inputs."""
    settings = beam_settings(cfg, tokenizer)
    start = time.time()
    mine = dist.shard(test)  # under torchrun each rank decodes every world_size-th input; rank 0 scores them all
    with decoder(cfg, model) as decoding:
        outputs = beam_search(decoding, [e["prompt"] for e in mine], settings, progress_every=50) if mine else []
    if dist.active():
        outputs = dist.unshard(dist.all_gather(outputs), len(test))
    decode_s = time.time() - start
    if not dist.is_main():
        return {}, {"inputs": len(test), "decode_s": round(decode_s, 1)}
    pp = cfg.task.postprocess
    eos_text = tokenizer.eos_token or EOS_TEXT
    hyps = [
        decode_postprocess(clean_output(decode_tokens(tokenizer, ids), eos_text), pp.tokenize, pp.lower)
        for ids in outputs
    ]
    refs = [[decode_postprocess(r, pp.tokenize, pp.lower) for r in e["references"]] for e in test]
    seen = [bool(e["seen"]) for e in test] if any("seen" in e for e in test) else None
    files = write_outputs(records.record_path(cfg).with_suffix(""), hyps, refs, seen)
    start = time.time()
    metrics = score(cfg.task.name, hyps, refs, seen) if test else {}
    info = {
        "settings": OmegaConf.to_container(cfg.decode, resolve=True),
        "end_token_ids": list(settings.eos_token_ids),
        "precision": str(cfg.train.precision),
        "weights": decoding_weights(cfg),
        "inputs": len(test),
        "decode_s": round(decode_s, 1),
        "score_s": round(time.time() - start, 1),
        "files": files,
        "empty_hypotheses": sum(1 for h in hyps if not h),
    }
    return metrics, info


def write_outputs(base: Path, hyps: list[str], refs: list[list[str]], seen: list[bool] | None) -> dict:
    """E2E challenge formats: one hypothesis per line; references of one input on consecutive lines, a blank line
    after each input; the seen flags (if any) as 1/0 per line."""
    base.parent.mkdir(parents=True, exist_ok=True)
    paths = {"hyp": f"{base}.hyp.txt", "ref": f"{base}.ref.txt"}
    Path(paths["hyp"]).write_text("".join(h.replace("\n", " ") + "\n" for h in hyps), encoding="utf8")
    Path(paths["ref"]).write_text(
        "".join("".join(r.replace("\n", " ") + "\n" for r in rs) + "\n" for rs in refs), encoding="utf8"
    )
    if seen is not None:
        paths["seen"] = f"{base}.seen.txt"
        Path(paths["seen"]).write_text("".join(f"{int(s)}\n" for s in seen), encoding="utf8")
    return paths
