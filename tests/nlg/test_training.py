"""The generation cells' training path (repro.tasks.generation.CompletionTrainer) end to end on tiny models: the loss it computes,
and that a model it trains on a few E2E examples gives them back through the paper's beam search."""

from __future__ import annotations

import datasets
import pytest
import torch
from omegaconf import OmegaConf
from transformers import DataCollatorForSeq2Seq, GPT2Config, GPT2LMHeadModel, TrainingArguments

from repro.data.nlg import encode_example, prompt_ids
from repro.decode import BeamSettings, beam_search, clean_output, decode_tokens
from repro.methods.registry import apply_method
from repro.models import load_tokenizer
from repro.precision import hold_frozen
from repro.tasks.generation import (
    CompletionLoss,
    CompletionTrainer,
    chunked_head_loss,
    completion_loss,
    decoder,
    token_loss,
)

EXAMPLES = [
    ("name : Blue Spice | Type : pub | area : riverside", "Blue Spice is a pub by the riverside ."),
    ("name : The Mill | Type : coffee shop | food : French", "The Mill is a French coffee shop ."),
    ("name : Zizzi | customer rating : 5 out of 5", "Zizzi has a customer rating of 5 out of 5 ."),
]


@pytest.fixture(scope="module")
def tok(data_dir):
    return load_tokenizer(
        OmegaConf.create({"source": "tiny", "model_type": "gpt2", "name": "tiny-gpt2", "tokenizer_hub_id": "gpt2"}),
        data_dir,
    )


def small_gpt2(vocab=50257, seed=0, n_embd=32):
    torch.manual_seed(seed)
    return GPT2LMHeadModel(
        GPT2Config(
            vocab_size=vocab,
            n_positions=128,
            n_embd=n_embd,
            n_layer=2,
            n_head=2,
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
        )
    )


def batch_of(tok, pairs):
    feats = [encode_example(tok, c, t, 128) for c, t in pairs]
    return DataCollatorForSeq2Seq(tok, padding=True, label_pad_token_id=-100)(feats)


@pytest.mark.parametrize("training", [True, False])
def test_selected_head_gives_the_full_loss_and_gradients(tok, training):
    """The LM head on the completion positions only: the same loss (and gradients) as full logits + completion_loss,
    smoothed while training, plain NLL in evaluation."""
    batch = batch_of(tok, EXAMPLES)
    model = small_gpt2().train(training)
    full = completion_loss(
        model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits,
        batch["labels"],
        0.1 if training else 0.0,
    )
    full.backward()
    want = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    loss_fn = CompletionLoss(model, 0.1)
    with loss_fn.attach(batch["labels"]):
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    assert loss_fn.selected
    n_targets = int(batch["labels"][:, 1:].ne(-100).sum())
    assert out.logits.shape == (n_targets, 50257) and out.loss is None  # no HF loss, no context/padding logits
    got = loss_fn(out, batch["labels"])
    assert torch.isclose(got, full, rtol=1e-5)
    got.backward()
    for n, p in model.named_parameters():
        assert torch.allclose(p.grad, want[n], rtol=1e-4, atol=1e-7), n
    # hooks are gone afterwards: decoding sees full logits
    assert model(input_ids=batch["input_ids"]).logits.shape[:2] == batch["input_ids"].shape


def test_trained_model_reproduces_its_examples(tok, tmp_path):
    """Train through CompletionTrainer (the runner's path: collator, labels, loss) on 3 E2E examples until memorised;
    the paper's beam search (beam 10, lp 0.8, no-repeat 4, end tokens 50256/628) must give each reference back, and
    greedy decoding must agree. Catches a wrong separator, a misplaced EOS or a loss on the wrong tokens."""
    model = small_gpt2(n_embd=64)
    train = datasets.Dataset.from_list([encode_example(tok, c, t, 128) for c, t in EXAMPLES] * 8)
    args = TrainingArguments(
        output_dir=str(tmp_path),
        per_device_train_batch_size=6,
        num_train_epochs=25,
        learning_rate=3e-3,
        warmup_steps=5,
        lr_scheduler_type="linear",
        report_to="none",
        save_strategy="no",
        logging_steps=1000,
        use_cpu=True,
        seed=0,
        disable_tqdm=True,
    )
    trainer = CompletionTrainer(
        model=model,
        args=args,
        train_dataset=train,
        data_collator=DataCollatorForSeq2Seq(tok, padding=True, label_pad_token_id=-100),
        compute_loss_func=CompletionLoss(model, 0.1),
    )
    trainer.train()
    prompts = [prompt_ids(tok, c, 64) for c, _ in EXAMPLES]
    beams = beam_search(model, prompts, BeamSettings())
    for (_, ref), ids, prompt in zip(EXAMPLES, beams, prompts):
        assert ids[-1] == 50256  # ended by the end token it was trained to emit
        assert clean_output(decode_tokens(tok, ids)) == ref
        with torch.no_grad():
            greedy = model.generate(
                torch.tensor([prompt]),
                max_new_tokens=40,
                do_sample=False,
                eos_token_id=[50256, 628],
                pad_token_id=50256,
            )[0, len(prompt) :].tolist()
        assert greedy == ids


@pytest.mark.parametrize("method", ["prefix_layer", "prefix_embed"])
def test_prefix_methods_train_on_generation(tok, tmp_path, method):
    """Prefix tuning inserts positions into the labels in a forward pre-hook: the loss must see those labels (with the
    labels popped before the forward, as Trainer's compute_loss_func path pops them, logits had 5 more positions than
    the labels and the cell crashed)."""
    batch = batch_of(tok, EXAMPLES)
    model = apply_method(small_gpt2(), OmegaConf.create({"name": method, "l_p": 3, "l_i": 2})).train()
    loss_fn = CompletionLoss(model, 0.1)
    args = TrainingArguments(output_dir=str(tmp_path), report_to="none", use_cpu=True)
    trainer = CompletionTrainer(model=model, args=args, compute_loss_func=loss_fn)
    loss = trainer.compute_loss(model, dict(batch))
    assert loss_fn.labels.shape[1] == batch["labels"].shape[1] + 5
    assert loss_fn.labels.ne(-100).sum() == batch["labels"].ne(-100).sum()
    assert torch.isfinite(loss)
    loss.backward()
    trained = model.prefix_tuning.embedding if method == "prefix_embed" else model.prefix_tuning.activations
    assert trained.grad is not None and trained.grad.abs().sum() > 0


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
@pytest.mark.parametrize("train_weight", [False, True])
def test_chunked_head_loss_gives_token_loss_and_its_gradients(smoothing, train_weight):
    """The fast path's fused, chunked LM-head loss (issue 27): token_loss per row, and the same gradients for the
    hidden states and (FT, a tied embedding) the head's weight under per-row weights, with chunks that do not divide
    the rows."""
    torch.manual_seed(0)
    hidden = torch.randn(37, 16, requires_grad=True)
    weight = torch.randn(50, 16, requires_grad=train_weight)
    targets = torch.randint(0, 50, (37,))
    row_weights = torch.rand(37)
    want = token_loss(hidden @ weight.T, targets, smoothing)
    inputs = (hidden, weight) if train_weight else (hidden,)
    want_grads = torch.autograd.grad((want * row_weights).sum(), inputs)
    got = chunked_head_loss(hidden, weight, targets, smoothing, chunk=8)
    assert torch.allclose(got, want, rtol=1e-5, atol=1e-6)
    for g, w in zip(torch.autograd.grad((got * row_weights).sum(), inputs), want_grads):
        assert torch.allclose(g, w, rtol=1e-4, atol=1e-6)
    with torch.no_grad():  # evaluation: the losses alone
        assert torch.allclose(
            chunked_head_loss(hidden, weight, targets, smoothing, chunk=8), want, rtol=1e-5, atol=1e-6
        )


def test_fused_completion_loss_gives_the_selected_head_loss(tok):
    """CompletionLoss(fused=True) hands the head no rows and computes the loss from the kept hidden states: the same
    loss and gradients as the selected-head path, fp32."""
    batch = batch_of(tok, EXAMPLES)
    results = []
    for fused in (False, True):
        model = small_gpt2().train()
        loss_fn = CompletionLoss(model, 0.1, fused=fused)
        assert loss_fn.fused is fused
        with loss_fn.attach(batch["labels"]):
            out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        assert out.logits.shape[0] == (0 if fused else int(batch["labels"][:, 1:].ne(-100).sum()))
        loss = loss_fn(out, batch["labels"])
        loss.backward()
        results.append((loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}))
    (ref, ref_grads), (got, grads) = results
    assert torch.isclose(got, ref, rtol=1e-5)
    for n, g in ref_grads.items():
        assert torch.allclose(grads[n], g, rtol=1e-4, atol=1e-6), n


def test_fast_path_decodes_a_merged_bf16_copy_and_leaves_the_model_as_it_was():
    """train.fast_path in bf16 decodes a copy: LoRA merged in fp32 into the held weights, then every weight in bf16
    (no cast per matrix product); the trained model keeps its own weights and stays unmerged. The reference path
    merges the model itself under autocast."""
    model = apply_method(small_gpt2(), OmegaConf.create({"name": "lora", "r": 2, "alpha": 4, "targets": ["q", "v"]}))
    for name, p in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.5)
    hold_frozen(model, torch.bfloat16)
    before = {n: t.clone() for n, t in model.state_dict().items()}
    attn = model.transformer.h[0].attn.c_attn
    want_q = (attn.w0("q").float() + attn.update("q")).to(torch.bfloat16)
    cfg = OmegaConf.create({"train": {"fast_path": True, "precision": "bf16"}})
    with decoder(cfg, model) as copy:
        assert copy is not model
        assert all(p.dtype == torch.bfloat16 for p in copy.parameters())
        merged_attn = copy.transformer.h[0].attn.c_attn
        assert merged_attn.merged and torch.equal(merged_attn.w0("q"), want_q)
        assert beam_search(copy, [[1, 2, 3]], BeamSettings(max_new_tokens=4, num_beams=2))
    assert not attn.merged
    assert all(torch.equal(t, before[n]) for n, t in model.state_dict().items())
    with decoder(OmegaConf.create({"train": {"fast_path": False, "precision": "bf16"}}), model) as same:
        assert same is model and attn.merged and torch.is_autocast_enabled("cpu")
    assert not attn.merged
