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
from repro.tasks.generation import CompletionLoss, CompletionTrainer, completion_loss

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
