"""The paper's beam search (gpt2_beam.py): the fast decoder (repro.decode) against an independent, cache-free, unbatched
reference and against today's decoder before issue 27 (repro.bench.reference_decode); post-processing."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from repro.bench.reference_decode import banned_tokens, reference_beam_search
from repro.decode import BeamSettings, ban_repeated_ngrams, beam_search, clean_output, decoding_model, top_k_per_row


def tiny_lm(vocab=12, seed=0):
    torch.manual_seed(seed)
    cfg = GPT2Config(vocab_size=vocab, n_positions=64, n_embd=16, n_layer=2, n_head=2, bos_token_id=0, eos_token_id=1)
    model = GPT2LMHeadModel(cfg).eval()
    with torch.no_grad():  # a peaky distribution, so that end tokens and repeats actually occur
        model.lm_head.weight.mul_(8.0)
    return model


def tiny_llama(vocab=12, seed=0):
    """Llama with grouped-query attention (4 query heads, 2 key/value heads), rotary positions, untied head."""
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=vocab,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=0,
    )
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(8.0)
    return model


@torch.no_grad()
def reference_beam(model, prompt, s: BeamSettings):
    """gpt2_beam.py written out per hypothesis, recomputing every prefix from scratch (no cache, no batching)."""

    def logprobs(tokens, generated):
        logits = model(torch.tensor([tokens])).logits[0, -1].float()
        n = s.no_repeat_ngram_size
        if n > 0 and len(generated) + 1 >= n:
            prefix = tuple(generated[len(generated) + 1 - n :])
            for j in range(len(generated) - n + 1):
                if tuple(generated[j : j + n - 1]) == prefix:
                    logits[generated[j + n - 1]] = -float("inf")
        return torch.log(torch.softmax(logits, -1))

    K = s.num_beams
    lp = logprobs(prompt, [])
    top = torch.topk(lp, K)
    beams = [(top.values[k].clone(), [int(top.indices[k])]) for k in range(K)]
    best, best_seq = None, None

    def finish(beams, only_eos):
        nonlocal best, best_seq
        out = []
        for score, seq in beams:
            if not only_eos or seq[-1] in s.eos_token_ids:
                cand = (score / len(seq) ** s.length_penalty).item()
                if best is None or best < cand:
                    best, best_seq = cand, seq
                out.append((torch.tensor(-float("inf")), seq))
            else:
                out.append((score, seq))
        return out

    beams = finish(beams, True)
    for _ in range(1, s.max_new_tokens):
        cands = []
        for k, (score, seq) in enumerate(beams):
            lp = logprobs(prompt + seq, seq)
            cands.append(score + lp)
        flat = torch.stack(cands).view(-1)
        top = torch.topk(flat, K)
        vocab = lp.shape[0]
        beams = [
            (top.values[j].clone(), beams[int(top.indices[j]) // vocab][1] + [int(top.indices[j]) % vocab])
            for j in range(K)
        ]
        beams = finish(beams, True)
    finish(beams, False)
    return best_seq


PROMPTS = [[3, 4, 5], [7, 2], [3, 4, 6], [9, 9, 9, 9], [2, 8], [5]]


@pytest.mark.parametrize("lp,n,beams", [(0.8, 4, 4), (0.9, 2, 3), (0.0, 0, 5), (1.5, 3, 2)])
def test_beam_equals_reference(lp, n, beams):
    model = tiny_lm(seed=int(lp * 10) + n)
    s = BeamSettings(
        num_beams=beams,
        length_penalty=lp,
        no_repeat_ngram_size=n,
        eos_token_ids=(1, 11),
        max_new_tokens=7,
        batch_size=4,
        early_stop=False,
    )
    got = beam_search(model, PROMPTS, s)
    assert got == [reference_beam(model, p, s) for p in PROMPTS]


def test_batching_and_early_stop_do_not_change_outputs():
    model = tiny_lm(seed=3)
    base = BeamSettings(
        num_beams=4,
        length_penalty=0.8,
        no_repeat_ngram_size=4,
        eos_token_ids=(1, 11),
        max_new_tokens=12,
        batch_size=1,
        early_stop=False,
    )
    one = beam_search(model, PROMPTS, base)
    for bs, early in ((8, False), (1, True), (8, True)):
        s = BeamSettings(**{**base.__dict__, "batch_size": bs, "early_stop": early})
        assert beam_search(model, PROMPTS, s) == one


def test_returned_hypothesis_is_the_best_by_its_own_score():
    """Brute force: with beams >= every continuation that can exist, beam search is exhaustive; its answer must
    maximise sum log p / len ** lp over all sequences ending in an end token or reaching the length limit."""
    vocab, steps = 4, 3
    model = tiny_lm(vocab=vocab, seed=5)
    s = BeamSettings(
        num_beams=vocab,
        length_penalty=0.8,
        no_repeat_ngram_size=0,
        eos_token_ids=(1,),
        max_new_tokens=steps,
        early_stop=False,
    )
    prompt = [2, 3]

    @torch.no_grad()
    def score(seq):
        lp = torch.log_softmax(model(torch.tensor([prompt + seq])).logits[0, len(prompt) - 1 : -1], -1)
        return sum(lp[i, t].item() for i, t in enumerate(seq)) / len(seq) ** 0.8

    import itertools

    candidates = []
    for length in range(1, steps + 1):
        for seq in itertools.product(range(vocab), repeat=length):
            if 1 in seq[:-1]:
                continue
            if seq[-1] == 1 or length == steps:
                candidates.append(list(seq))
    # beam 4 over vocab 4 keeps every 1-token prefix but not every 2-token one: compare scores, not sequences
    got = beam_search(model, [prompt], s)[0]
    best = max(candidates, key=score)
    assert score(got) <= score(best) + 1e-6
    # with 3 live beams after the end token is taken out, length-2 search is exhaustive
    s2 = BeamSettings(**{**s.__dict__, "max_new_tokens": 2, "num_beams": vocab})
    got2 = beam_search(model, [prompt], s2)[0]
    cands2 = [c for c in candidates if len(c) == 1 and c[0] == 1] + [
        list(c) for c in itertools.product(range(vocab), repeat=2) if c[0] != 1
    ]
    assert math.isclose(score(got2), max(score(c) for c in cands2), rel_tol=1e-5)


def test_banned_ngrams():
    h = torch.tensor([[5, 6, 7, 5, 6], [1, 2, 3, 4, 5]])
    assert banned_tokens(h, 3) == [[7], []]  # "5 6" was followed by 7
    assert banned_tokens(h[:, :1], 3) == [[], []]  # fewer than n-1 tokens generated: nothing banned
    assert [set(b) for b in banned_tokens(torch.tensor([[4, 4, 4]]), 2)] == [{4}]  # duplicates as in the original


@pytest.mark.parametrize("n", [0, 1, 2, 3, 4])
def test_vectorized_ban_equals_the_row_by_row_ban(n):
    """ban_repeated_ngrams (all rows at once) bans exactly banned_tokens' tokens (gpt2_beam.py's loop), at every
    length, and leaves every other logit bit for bit as it was."""
    g = torch.Generator().manual_seed(n)
    for length in range(0, 9):
        history = torch.randint(0, 4, (16, length), generator=g)  # 4 tokens: many repeats
        logits = torch.randn(16, 6, generator=g)
        banned = logits.clone()
        ban_repeated_ngrams(banned, history, n)
        for row, tokens in enumerate(banned_tokens(history, n)):
            expect = logits[row].clone()
            expect[tokens] = -float("inf")
            assert torch.equal(banned[row], expect)


def test_top_k_per_row_equals_topk():
    g = torch.Generator().manual_seed(0)
    for width, k, chunk in [(300, 3, 64), (1000, 10, 64), (257, 5, 16), (40, 5, 64), (64, 2, 8)]:
        x = torch.randn(7, width, generator=g)
        x[0, :] = 1.0  # all tied
        x[1, ::7] = 5.0  # ties at the top, across chunks
        values, idx = top_k_per_row(x, k, chunk)
        ref = torch.topk(x, k, dim=1)
        assert torch.equal(values, ref.values)  # the same values, sorted (ties in any order)
        assert torch.equal(x.gather(1, idx), values) and all(len(set(r)) == k for r in idx.tolist())


MODELS = {"gpt2": tiny_lm, "llama": tiny_llama}
CASES = [  # (length_penalty, no_repeat_ngram_size, beams, max_new_tokens, batch_size, early_stop, pad_batches)
    (0.8, 4, 4, 12, 4, True, True),
    (0.9, 2, 3, 9, 8, True, False),
    (0.0, 0, 5, 7, 2, False, True),
    (1.5, 3, 2, 9, 8, False, False),
    (0.8, 1, 3, 10, 8, True, True),
    (-0.5, 2, 4, 8, 3, True, True),
]


@pytest.mark.parametrize("arch", MODELS)
@pytest.mark.parametrize("vocab", [12, 300])  # 300: top_k_per_row's chunked path (a tiny vocabulary: plain topk)
@pytest.mark.parametrize("case", CASES)
def test_fast_decoder_equals_todays_decoder(arch, vocab, case):
    """Issue 27: the fast decoder (preallocated cache reordered in place, vectorized ban and candidates, LM head on
    the last position, per-input early exit) gives today's decoder's outputs, batched and padded, in fp32."""
    lp, n, beams, new, bs, early, pad = case
    model = MODELS[arch](vocab=vocab, seed=beams + n)
    s = BeamSettings(
        num_beams=beams,
        length_penalty=lp,
        no_repeat_ngram_size=n,
        eos_token_ids=(1, 11),
        max_new_tokens=new,
        batch_size=bs,
        early_stop=early,
        pad_batches=pad,
    )
    prompts = PROMPTS + [[4, 4, 2, 7, 3, 9], [10, 3]]
    assert beam_search(model, prompts, s) == reference_beam_search(model, prompts, s)


def test_finished_inputs_leave_the_batch():
    """With early_stop an input whose best candidate no live beam can beat leaves the batch (fewer rows in later
    forward passes), and the outputs stay those of the one-by-one search."""
    model = tiny_llama(vocab=12, seed=0)
    s = BeamSettings(
        num_beams=3,
        length_penalty=0.8,
        no_repeat_ngram_size=2,
        eos_token_ids=(1, 11),
        max_new_tokens=16,
        batch_size=8,
        early_stop=True,
        pad_batches=True,
    )
    rows = []
    hook = model.register_forward_pre_hook(lambda m, a, kw: rows.append(kw["input_ids"].shape[0]), with_kwargs=True)
    got = beam_search(model, PROMPTS, s)
    hook.remove()
    assert rows[1] == 3 * len(PROMPTS) and min(rows[1:]) < rows[1]  # rows[0]: the prefill (one row per input)
    one = BeamSettings(**{**s.__dict__, "batch_size": 1})
    assert got == beam_search(model, PROMPTS, one) == reference_beam_search(model, PROMPTS, s)


@pytest.mark.parametrize("arch", MODELS)
def test_bf16_decoding_copy(arch):
    """precision=bf16 decodes a bf16 copy of the weights (buffers such as Llama's rotary frequencies stay fp32), made
    once per beam_search call and left alone otherwise: the model itself is untouched. A model already in bf16 is
    used as it is. Outputs are not compared with fp32 ones: bf16 rounding changes the log-probabilities."""
    model = MODELS[arch](vocab=300, seed=2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    copy = decoding_model(model, "bf16")
    assert copy is not model and all(p.dtype == torch.bfloat16 for p in copy.parameters())
    assert all(b.dtype == before[name].dtype for name, b in copy.named_buffers() if name in before)
    assert decoding_model(copy, "bf16") is copy and decoding_model(model, "fp32") is model
    s = BeamSettings(
        num_beams=3,
        length_penalty=0.8,
        no_repeat_ngram_size=2,
        eos_token_ids=(1, 11),
        max_new_tokens=8,
        batch_size=4,
        pad_batches=True,
        precision="bf16",
    )
    got = beam_search(model, PROMPTS, s)
    assert got == beam_search(copy, PROMPTS, s) and all(1 <= len(g) <= 8 for g in got)
    assert all(torch.equal(v, before[k]) and v.dtype == before[k].dtype for k, v in model.state_dict().items())
    with pytest.raises(ValueError, match="precision"):
        decoding_model(model, "int8")


def test_clean_output():
    assert clean_output(" Blue Spice is a pub .<|endoftext|>!!!!") == "Blue Spice is a pub ."
    assert clean_output("A pub .\n\nname : x") == "A pub ."
    assert clean_output("<|endoftext|>") == ""
    assert clean_output(" no end token ") == "no end token"


def test_every_tensor_follows_the_model_device():
    """Issue 16 item 4: beam offsets and scores were made on the default device (CPU), so beam search crashed on CUDA
    after training. Here the default device is `meta` while the model stays on the CPU: any tensor the decoder makes
    without naming the model's device lands on meta and mixes devices; the outputs must equal the plain run's."""
    model = tiny_lm(seed=3)
    s = BeamSettings(
        num_beams=4,
        length_penalty=0.8,
        no_repeat_ngram_size=2,
        eos_token_ids=(1, 11),
        max_new_tokens=8,
        batch_size=8,
        early_stop=True,
    )
    expected = beam_search(model, PROMPTS, s)
    with torch.device("meta"):
        got = beam_search(model, PROMPTS, s)
    assert got == expected


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
@pytest.mark.parametrize("name", ["lora", "adapter_h", "prefix_layer", "prefix_embed"])
def test_fast_decoder_with_methods(arch, name):
    """The methods the NLG tables decode with: LoRA merged (as decode_and_score does), an adapter, and prefix tuning
    (its hook widens the attention mask and puts l_p + l_i positions in the cache at the prefill): the fast decoder
    gives today's decoder's outputs in fp32; in bf16 it decodes a copy whose hooks act on the copy's own prefix."""
    from repro.methods import apply_method
    from repro.methods.lora import merged
    from tests.methods.conftest import method, tiny

    overrides = {"l_p": 3, "l_i": 2} if name.startswith("prefix") else {}
    model = apply_method(tiny(arch), method(name, **overrides)).eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # every trained parameter moved off its init, so that the method changes the outputs
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=g) * 0.2)
        model.get_output_embeddings().weight.mul_(6.0)
    s = BeamSettings(
        num_beams=3,
        length_penalty=0.8,
        no_repeat_ngram_size=2,
        eos_token_ids=(1, 11),
        max_new_tokens=10,
        batch_size=4,
        early_stop=True,
        pad_batches=True,
    )
    prompts = [[p + 20 for p in prompt] for prompt in PROMPTS]
    with merged(model):
        assert beam_search(model, prompts, s) == reference_beam_search(model, prompts, s)
        bf16 = decoding_model(model, "bf16")
        got = beam_search(bf16, prompts, BeamSettings(**{**s.__dict__, "precision": "bf16"}))
    assert all(1 <= len(g) <= 10 for g in got)
    if name.startswith("prefix"):
        hooks = list(bf16._forward_pre_hooks.values())
        assert hooks and all(h.args[0] is bf16.prefix_tuning for h in hooks)
        assert next(bf16.prefix_tuning.parameters()).dtype == torch.bfloat16
