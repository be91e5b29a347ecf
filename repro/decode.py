"""The paper's beam search (microsoft/LoRA examples/NLG/src/gpt2_beam.py), re-implemented on a transformers causal LM
with its KV cache, and gpt2_decode.py's post-processing.

Why not `model.generate(num_beams=...)`: transformers normalizes a finished beam by the length of the whole sequence
(or, in newer versions, minus the prompt) and stops early by its own heuristic; gpt2_beam.py scores a finished
hypothesis as sum_logprob / (number of generated tokens, the end token included) ** length_penalty, always runs
`eval_len` steps, and keeps the best finished hypothesis over all steps. With a 0.8 length penalty and a long MR
prompt the two choose different outputs.

gpt2_beam.py, as re-implemented here:
- step 0: log(softmax(logits)) of the prompt's last position, top-k over the vocabulary (k = beams);
- step i > 0: no-repeat-ngram ban over the *generated* tokens only (fairseq's rule: the next token may not complete
  an n-gram already generated), log(softmax), scores = beam score + log-prob, top-k over beams x vocabulary;
- after each step every beam whose last token is an end token (50256 `<|endoftext|>` or 628 `\\n\\n`: `--eos_token_id
  628` appends to the default [50256]) becomes a candidate with score beam_score / len ** length_penalty, and its beam
  score is set to -inf; a candidate replaces the input's best only if strictly better (the first one wins ties);
- after the last step every remaining beam is a candidate.
`early_stop=True` ends the loop once no live beam can beat the best candidate any more (log-probs are <= 0, so a live
beam's final score is at most its current score over the largest length-penalty denominator still possible): the
output is the same as running all `max_new_tokens` steps (tested), only faster.

Batching: prompts are grouped by token length, so a batch needs no padding and every input's result equals its
batch-size-1 result (tested).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)

EOS_IDS = (50256, 628)   # <|endoftext|>, "\n\n"


@dataclass
class BeamSettings:
    num_beams: int = 10
    length_penalty: float = 0.8
    no_repeat_ngram_size: int = 4
    eos_token_ids: tuple[int, ...] = EOS_IDS
    max_new_tokens: int = 64
    batch_size: int = 8
    early_stop: bool = True


def banned_tokens(history: torch.Tensor, n: int) -> list[list[int]]:
    """For each row of generated tokens, the tokens that would repeat an n-gram (gpt2_beam._calc_banned_ngram_tokens)."""
    rows, cur_len = history.shape
    if n <= 0 or cur_len + 1 < n:
        return [[] for _ in range(rows)]
    out = []
    for tokens in history.tolist():
        seen: dict[tuple, list[int]] = {}
        for gram in zip(*[tokens[i:] for i in range(n)]):
            seen.setdefault(tuple(gram[:-1]), []).append(gram[-1])
        out.append(seen.get(tuple(tokens[cur_len + 1 - n:cur_len]), []))
    return out


@torch.no_grad()
def _beam_batch(model, prompts: torch.Tensor, s: BeamSettings) -> list[list[int]]:
    """Beam search for B prompts of the same length (B x L tensor); returns each input's best generated tokens."""
    B, K = prompts.shape[0], s.num_beams
    eos = set(s.eos_token_ids)
    out = model(input_ids=prompts, attention_mask=torch.ones_like(prompts), use_cache=True)
    past = out.past_key_values
    logits = out.logits[:, -1, :].float()
    past.batch_repeat_interleave(K)
    vocab = logits.shape[-1]
    device = logits.device   # every tensor follows the model's outputs (CUDA after training), never the default device
    batch_offset = (torch.arange(B, device=device) * K).unsqueeze(-1)
    beam_scores = torch.zeros(B, K, device=device)
    history = None
    best_score: dict[int, float] = {}
    best_seq: dict[int, list[int]] = {}

    def add_candidates(only_eos: bool):
        last = history[:, -1].tolist()
        cur_len = history.shape[-1]
        flat = beam_scores.view(-1)
        for row in range(B * K):
            if only_eos and last[row] not in eos:
                continue
            score = (flat[row] / cur_len ** s.length_penalty).item()
            b = row // K
            if b not in best_score or best_score[b] < score:
                best_score[b] = score
                best_seq[b] = history[row].tolist()
            flat[row] = -float("inf")

    for i in range(s.max_new_tokens):
        if i > 0:
            out = model(input_ids=token_id, past_key_values=past, use_cache=True)
            past = out.past_key_values
            logits = out.logits[:, -1, :].float()
            for row, banned in enumerate(banned_tokens(history, s.no_repeat_ngram_size)):
                if banned:
                    logits[row, banned] = -float("inf")
        logprob = torch.log(F.softmax(logits, dim=-1))
        if i == 0:
            next_scores = logprob                                   # B x V (one distinct beam per input)
        else:
            next_scores = (beam_scores.unsqueeze(-1) + logprob.view(B, K, vocab)).view(B, -1)
        next_scores, next_tokens = torch.topk(next_scores, K, dim=1, largest=True, sorted=True)
        beam_id = next_tokens // vocab
        token_id = (next_tokens % vocab).view(-1, 1)
        beam_idx = (beam_id + batch_offset).view(-1)
        if i > 0:
            past.reorder_cache(beam_idx)
        beam_scores = next_scores.clone()
        history = token_id if history is None else torch.cat([history[beam_idx], token_id], dim=1)
        add_candidates(only_eos=True)
        if s.early_stop and len(best_score) == B and i + 1 < s.max_new_tokens:
            # the largest denominator any future candidate can have (lengths i+2 .. max_new_tokens)
            denom = max((i + 2) ** s.length_penalty, s.max_new_tokens ** s.length_penalty)
            bound = (beam_scores.max(dim=1).values / denom).tolist()   # the same float32 op as a candidate's score
            if all(best_score[b] >= bound[b] for b in range(B)):
                break
    else:
        add_candidates(only_eos=False)
    return [best_seq[b] for b in range(B)]


def beam_search(model, prompts: list[list[int]], settings: BeamSettings | None = None, progress_every: int = 0) -> list[list[int]]:
    """The generated token ids (end token included, as gpt2_beam.py writes them) for each prompt, in order."""
    s = settings or BeamSettings()
    model.eval()
    device = next(model.parameters()).device
    order = sorted(range(len(prompts)), key=lambda i: (len(prompts[i]), i))
    results: dict[int, list[int]] = {}
    groups, cur = [], []
    for i in order:
        if cur and (len(prompts[cur[0]]) != len(prompts[i]) or len(cur) >= s.batch_size):
            groups.append(cur)
            cur = []
        cur.append(i)
    if cur:
        groups.append(cur)
    start, done = time.time(), 0
    for group in groups:
        batch = torch.tensor([prompts[i] for i in group], dtype=torch.long, device=device)
        for i, seq in zip(group, _beam_batch(model, batch, s)):
            results[i] = seq
        done += len(group)
        if progress_every and (done // progress_every) != ((done - len(group)) // progress_every):
            log.info("decoded %d/%d inputs (%.0f s)", done, len(prompts), time.time() - start)
    return [results[i] for i in range(len(prompts))]


# ------------------------------------------------------------------ gpt2_decode.py post-processing


def clean_output(text: str) -> str:
    """Cut at the first <|endoftext|>, then at the first blank line, and strip (gpt2_decode.py)."""
    return text.split("<|endoftext|>")[0].split("\n\n")[0].strip()


def decode_tokens(tokenizer, ids: list[int]) -> str:
    """Byte-level BPE decode as encoder.py does it: no clean-up of spaces before punctuation (E2E references are
    pre-tokenized, "... Blue Spice ."), special tokens kept so that clean_output can cut at them."""
    return tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)


def group_references(examples: list[dict]) -> list[dict]:
    """One entry per unique context, in first-seen order, with its references (gpt2_decode.py's refer_dict keyed by
    the context string); extra per-example fields (e.g. `seen`) are taken from the first example."""
    grouped: dict[str, dict] = {}
    for ex in examples:
        entry = grouped.get(ex["context"])
        if entry is None:
            entry = grouped[ex["context"]] = {k: v for k, v in ex.items() if k != "completion"} | {"references": []}
        entry["references"].append(clean_output(ex["completion"]))
    return list(grouped.values())
