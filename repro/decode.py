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

Batching: by default prompts are grouped by token length, so a batch needs no padding and every input's result equals
its batch-size-1 result (tested). With `pad_batches`, prompts of different lengths share a batch: sorted by length,
left-padded, the padding masked by the attention mask and every row given its own position ids (0 at its first real
token), so a batch is always full (WebNLG's inputs spread over many lengths); the outputs equal the one-by-one outputs
(tested on tiny GPT-2 and Llama models; padding changes the shapes of the matrix products, so scores can differ in
the last bits of a float).

End tokens by tokenizer: gpt2_beam.py's 50256 and 628 are GPT-2's `<|endoftext|>` and its single "\n\n" token; for
another tokenizer, `end_token_ids(tokenizer)` gives its own eos and "\n\n" tokens (SmolLM2: `<|im_end|>` = 2 and
1116), and `resolve_end_token_ids` maps the task configs' GPT-2 pair to them. A blank line written as two "\n"
tokens (or as a longer whitespace token) does not end a beam, exactly as in the paper's GPT-2 setup; `clean_output`
cuts the text at the first blank line either way.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)

EOS_IDS = (50256, 628)   # <|endoftext|>, "\n\n"
EOS_TEXT = "<|endoftext|>"


def end_token_ids(tokenizer) -> tuple[int, ...]:
    """The tokenizer's own end tokens in gpt2_beam.py's sense: its eos token and its single "\n\n" token, when it
    has one (GPT-2: 50256, 628; SmolLM2: 2, 1116)."""
    blank = tokenizer("\n\n", add_special_tokens=False)["input_ids"]
    return (int(tokenizer.eos_token_id),) + ((int(blank[0]),) if len(blank) == 1 else ())


def resolve_end_token_ids(configured, tokenizer) -> tuple[int, ...]:
    """The ids that end a beam for this tokenizer. The task configs write gpt2_beam.py's [50256, 628]; for a
    tokenizer whose own pair differs they mean its own pair (end_token_ids). Other ids are taken as given, and
    must exist in the vocabulary."""
    from repro.errors import CellMismatch

    configured = tuple(int(i) for i in configured)
    own = end_token_ids(tokenizer)
    if configured == EOS_IDS and own != EOS_IDS:
        return own
    bad = [i for i in configured if not 0 <= i < len(tokenizer)]
    if bad or not configured:
        raise CellMismatch(f"decode.eos_token_ids={list(configured)}: {bad or 'none'} not in the tokenizer's vocabulary "
                           f"of {len(tokenizer)}; its own end tokens (eos, \"\\n\\n\") are {list(own)}")
    return configured


@dataclass
class BeamSettings:
    num_beams: int = 10
    length_penalty: float = 0.8
    no_repeat_ngram_size: int = 4
    eos_token_ids: tuple[int, ...] = EOS_IDS
    max_new_tokens: int = 64
    batch_size: int = 8
    early_stop: bool = True
    pad_batches: bool = False   # left-pad prompts of different lengths into full batches (else: equal-length groups)


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
def _beam_batch(model, prompts: torch.Tensor, s: BeamSettings, mask: torch.Tensor | None = None) -> list[list[int]]:
    """Beam search for B prompts (B x L tensor; left-padded when `mask`, the B x L attention mask, is given: then each
    row's positions start at its first real token); returns each input's best generated tokens."""
    B, K = prompts.shape[0], s.num_beams
    eos = set(s.eos_token_ids)
    if mask is None:
        out = model(input_ids=prompts, attention_mask=torch.ones_like(prompts), use_cache=True)
    else:
        out = model(input_ids=prompts, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0), use_cache=True)
        mask = mask.repeat_interleave(K, dim=0)                   # (B K) x L, each input's mask for its K beams
        next_pos = mask.sum(-1, keepdim=True)                     # the position of the first generated token
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
        if i > 0 and mask is not None:   # beams are reordered within an input: its mask and positions stay valid
            mask = torch.cat([mask, mask.new_ones(B * K, 1)], dim=1)
            out = model(input_ids=token_id, attention_mask=mask, position_ids=next_pos + (i - 1), past_key_values=past,
                        use_cache=True)
        elif i > 0:
            out = model(input_ids=token_id, past_key_values=past, use_cache=True)
        if i > 0:
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
        if cur and ((not s.pad_batches and len(prompts[cur[0]]) != len(prompts[i])) or len(cur) >= s.batch_size):
            groups.append(cur)
            cur = []
        cur.append(i)
    if cur:
        groups.append(cur)
    start, done = time.time(), 0
    pad = 0
    for group in groups:
        width = max(len(prompts[i]) for i in group)
        if all(len(prompts[i]) == width for i in group):
            batch, mask = torch.tensor([prompts[i] for i in group], dtype=torch.long, device=device), None
        else:   # left padding; the pad id is never looked at (masked), any id in the vocabulary does
            batch = torch.tensor([[pad] * (width - len(prompts[i])) + prompts[i] for i in group], dtype=torch.long, device=device)
            mask = torch.tensor([[0] * (width - len(prompts[i])) + [1] * len(prompts[i]) for i in group], dtype=torch.long,
                                device=device)
        for i, seq in zip(group, _beam_batch(model, batch, s, mask)):
            results[i] = seq
        done += len(group)
        if progress_every and (done // progress_every) != ((done - len(group)) // progress_every):
            log.info("decoded %d/%d inputs (%.0f s)", done, len(prompts), time.time() - start)
    return [results[i] for i in range(len(prompts))]


# ------------------------------------------------------------------ gpt2_decode.py post-processing


def clean_output(text: str, eos_text: str = EOS_TEXT) -> str:
    """Cut at the first end token (GPT-2's <|endoftext|>; SmolLM2's <|im_end|>), then at the first blank line, and
    strip (gpt2_decode.py)."""
    return text.split(eos_text)[0].split("\n\n")[0].strip()


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
