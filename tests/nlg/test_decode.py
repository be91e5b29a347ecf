"""The paper's beam search (gpt2_beam.py) against an independent, cache-free, unbatched reference; post-processing."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from repro.decode import BeamSettings, banned_tokens, beam_search, clean_output


def tiny_lm(vocab=12, seed=0):
    torch.manual_seed(seed)
    cfg = GPT2Config(vocab_size=vocab, n_positions=64, n_embd=16, n_layer=2, n_head=2, bos_token_id=0, eos_token_id=1)
    model = GPT2LMHeadModel(cfg).eval()
    with torch.no_grad():   # a peaky distribution, so that end tokens and repeats actually occur
        model.lm_head.weight.mul_(8.0)
    return model


@torch.no_grad()
def reference_beam(model, prompt, s: BeamSettings):
    """gpt2_beam.py written out per hypothesis, recomputing every prefix from scratch (no cache, no batching)."""
    def logprobs(tokens, generated):
        logits = model(torch.tensor([tokens])).logits[0, -1].float()
        n = s.no_repeat_ngram_size
        if n > 0 and len(generated) + 1 >= n:
            prefix = tuple(generated[len(generated) + 1 - n:])
            for j in range(len(generated) - n + 1):
                if tuple(generated[j:j + n - 1]) == prefix:
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
        beams = [(top.values[j].clone(), beams[int(top.indices[j]) // vocab][1] + [int(top.indices[j]) % vocab]) for j in range(K)]
        beams = finish(beams, True)
    finish(beams, False)
    return best_seq


PROMPTS = [[3, 4, 5], [7, 2], [3, 4, 6], [9, 9, 9, 9], [2, 8], [5]]


@pytest.mark.parametrize("lp,n,beams", [(0.8, 4, 4), (0.9, 2, 3), (0.0, 0, 5), (1.5, 3, 2)])
def test_beam_equals_reference(lp, n, beams):
    model = tiny_lm(seed=int(lp * 10) + n)
    s = BeamSettings(num_beams=beams, length_penalty=lp, no_repeat_ngram_size=n, eos_token_ids=(1, 11),
                     max_new_tokens=7, batch_size=4, early_stop=False)
    got = beam_search(model, PROMPTS, s)
    assert got == [reference_beam(model, p, s) for p in PROMPTS]


def test_batching_and_early_stop_do_not_change_outputs():
    model = tiny_lm(seed=3)
    base = BeamSettings(num_beams=4, length_penalty=0.8, no_repeat_ngram_size=4, eos_token_ids=(1, 11), max_new_tokens=12,
                        batch_size=1, early_stop=False)
    one = beam_search(model, PROMPTS, base)
    for bs, early in ((8, False), (1, True), (8, True)):
        s = BeamSettings(**{**base.__dict__, "batch_size": bs, "early_stop": early})
        assert beam_search(model, PROMPTS, s) == one


def test_returned_hypothesis_is_the_best_by_its_own_score():
    """Brute force: with beams >= every continuation that can exist, beam search is exhaustive; its answer must
    maximise sum log p / len ** lp over all sequences ending in an end token or reaching the length limit."""
    vocab, steps = 4, 3
    model = tiny_lm(vocab=vocab, seed=5)
    s = BeamSettings(num_beams=vocab, length_penalty=0.8, no_repeat_ngram_size=0, eos_token_ids=(1,), max_new_tokens=steps,
                     early_stop=False)
    prompt = [2, 3]

    @torch.no_grad()
    def score(seq):
        lp = torch.log_softmax(model(torch.tensor([prompt + seq])).logits[0, len(prompt) - 1:-1], -1)
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
    cands2 = [c for c in candidates if len(c) == 1 and c[0] == 1] + \
             [list(c) for c in itertools.product(range(vocab), repeat=2) if c[0] != 1]
    assert math.isclose(score(got2), max(score(c) for c in cands2), rel_tol=1e-5)


def test_banned_ngrams():
    h = torch.tensor([[5, 6, 7, 5, 6], [1, 2, 3, 4, 5]])
    assert banned_tokens(h, 3) == [[7], []]          # "5 6" was followed by 7
    assert banned_tokens(h[:, :1], 3) == [[], []]     # fewer than n-1 tokens generated: nothing banned
    assert [set(b) for b in banned_tokens(torch.tensor([[4, 4, 4]]), 2)] == [{4}]   # duplicates as in the original


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
    s = BeamSettings(num_beams=4, length_penalty=0.8, no_repeat_ngram_size=2, eos_token_ids=(1, 11), max_new_tokens=8,
                     batch_size=8, early_stop=True)
    expected = beam_search(model, PROMPTS, s)
    with torch.device("meta"):
        got = beam_search(model, PROMPTS, s)
    assert got == expected
