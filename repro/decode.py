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

How it runs (issue 27; the straightforward version it replaces, kept as repro/bench/reference_decode.py, gives the
same outputs on tiny GPT-2 and Llama models, with and without padding, LoRA merged, adapters and prefix tuning, and is
timed against this one by `python -m repro.bench decode`):
- the KV cache (_BeamLayer) is allocated once per batch, time-major, written in place, and reordered by one
  index_select of the generated positions only (the beams of an input share its prompt), where transformers'
  DynamicCache copies the whole cache twice per step (torch.cat, then index_select);
- the prefill computes the LM head on the prompt's last position only;
- the no-repeat ban, the candidates and the early-stop bound are tensor operations over all beams at once (no
  Python loop over rows; one host sync per step), and log(softmax) plus the beam score are taken on each beam's K most
  probable tokens only (an input's K best continuations are among them: log is monotone); the fp32 logits and
  probabilities live in two buffers made once per batch;
- an input leaves the batch as soon as its own early-stop bound is met (the bound only falls and its best score only
  rises, so its output is final): later steps run on fewer rows;
- `precision` bf16 (or fp16) decodes a copy of the model with its weights in that precision (decoding_model), made once
  per beam_search call: bf16 matrix products are several times faster than fp32 on CPUs with AMX / avx512-bf16, and
  no fp32 weight is cast at every call as under autocast. What bf16 changes: weights and activations keep 8 bits of
  mantissa, so log-probabilities move in their third significant digit and bf16 logits tie more often; where two
  hypotheses score that close the output can differ from fp32's (the bench counts how often). fp32 is exact.

End tokens by tokenizer: gpt2_beam.py's 50256 and 628 are GPT-2's `<|endoftext|>` and its single "\n\n" token; for
another tokenizer, `end_token_ids(tokenizer)` gives its own eos and "\n\n" tokens (SmolLM2: `<|im_end|>` = 2 and
1116), and `resolve_end_token_ids` maps the task configs' GPT-2 pair to them. A blank line written as two "\n"
tokens (or as a longer whitespace token) does not end a beam, exactly as in the paper's GPT-2 setup; `clean_output`
cuts the text at the first blank line either way.
"""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass
from functools import partial

import torch
from torch import nn
from transformers.cache_utils import Cache, DynamicLayer

log = logging.getLogger(__name__)

EOS_IDS = (50256, 628)  # <|endoftext|>, "\n\n"
EOS_TEXT = "<|endoftext|>"
HALF = {"bf16": torch.bfloat16, "fp16": torch.float16}


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
        raise CellMismatch(
            f"decode.eos_token_ids={list(configured)}: {bad or 'none'} not in the tokenizer's vocabulary "
            f'of {len(tokenizer)}; its own end tokens (eos, "\\n\\n") are {list(own)}'
        )
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
    pad_batches: bool = False  # left-pad prompts of different lengths into full batches (else: equal-length groups)
    precision: str = "fp32"  # the weights while decoding: fp32 (the model as given) | bf16 | fp16 (a copy in it)


def ban_repeated_ngrams(logits: torch.Tensor, history: torch.Tensor, n: int) -> None:
    """In place: logits[r, t] = -inf for every token t that would complete an n-gram already in row r of `history`
    (the generated tokens; gpt2_beam._calc_banned_ngram_tokens), all rows at once and without a host sync."""
    rows, cur_len = history.shape
    if n <= 0 or cur_len < n:  # no complete n-gram generated yet
        return
    grams = history.unfold(1, n, 1)  # rows x (cur_len - n + 1) x n
    hit = (grams[:, :, :-1] == history[:, None, cur_len - n + 1 :]).all(-1)  # starts with the last n - 1 tokens
    # adding 0 leaves a logit exactly as it is; adding -inf bans it (however often)
    logits.scatter_add_(1, grams[:, :, -1], torch.where(hit, -float("inf"), 0.0).to(logits.dtype))


def top_k_per_row(x: torch.Tensor, k: int, chunk: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """torch.topk(x, k, dim=1) (values, indices; sorted, ties in any order) for rows as long as a vocabulary, several
    times faster on a CPU: a row's k largest values lie in its k chunks (of `chunk` consecutive entries) with the
    largest maxima, so one pass takes the chunk maxima and the top k is then taken among k x chunk entries."""
    rows, width = x.shape
    n = width // chunk
    if n <= k or x.device.type != "cpu":  # (a GPU's topk is fast as it is)
        return torch.topk(x, k, dim=1)
    best = x[:, : n * chunk].unflatten(1, (n, chunk)).amax(-1).topk(k, dim=1).indices  # rows x k chunks
    idx = (best.unsqueeze(-1) * chunk + torch.arange(chunk, device=x.device)).view(rows, -1)
    idx = torch.cat([idx, torch.arange(n * chunk, width, device=x.device).expand(rows, -1)], dim=1)  # the rest
    values, pick = torch.topk(x.gather(1, idx), k, dim=1)
    return values, idx.gather(1, pick)


class _BeamLayer(DynamicLayer):
    """One layer's keys and values during a beam search. The prefill stores them as DynamicLayer does; then
    `batch_repeat_interleave` moves them, repeated for the beams, into two buffers allocated once with room for every
    new token (memory is committed only as positions are written), laid out time-major (positions x rows x heads x
    head_dim) so that the filled part is one contiguous block. New tokens are written in place and attention gets a
    (rows x heads x positions x head_dim) view of the filled part. `reorder_cache` copies the rows it is given by one
    index_select into the other buffer, which becomes the current one: only the generated positions while the rows
    stay the same (the beams of an input share its prompt, already in both buffers), all of them when inputs leave.
    transformers' DynamicCache instead allocates and copies the whole cache twice per step (torch.cat to append a
    token, index_select to reorder)."""

    def __init__(self, room: int):
        super().__init__()
        self.room, self.length, self.prompt, self.buffers = room, 0, 0, None

    def batch_repeat_interleave(self, repeats: int) -> None:
        repeated = [t.repeat_interleave(repeats, dim=0).permute(2, 0, 1, 3) for t in (self.keys, self.values)]
        self.length = self.prompt = repeated[0].shape[0]
        self.buffers, self.spares = (
            [t.new_empty(self.length + self.room, *t.shape[1:]) for t in repeated] for _ in "ab"
        )
        for buf, spare, t in zip(self.buffers, self.spares, repeated):
            buf[: self.length] = spare[: self.length] = t
        self._views()

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if self.buffers is None:  # the prefill
            return super().update(key_states, value_states, *args, **kwargs)
        n = key_states.shape[-2]
        for buf, t in zip(self.buffers, (key_states, value_states)):
            buf[self.length : self.length + n] = t.permute(2, 0, 1, 3)
        self.length += n
        self._views()
        return self.keys, self.values

    def reorder_cache(self, rows: torch.Tensor) -> None:
        """Keep `rows` of the current buffers, in that order (beams reordered within their inputs, finished inputs
        left out)."""
        if len(rows) == self.buffers[0].shape[1]:
            for buf, spare in zip(self.buffers, self.spares):
                torch.index_select(buf[self.prompt : self.length], 1, rows, out=spare[self.prompt : self.length])
            self.buffers, self.spares = self.spares, self.buffers
        else:  # inputs left: both buffers re-laid out for fewer rows, the prompt part copied into the spare too
            old = self.buffers
            self.buffers = [_with_rows(spare, len(rows)) for spare in self.spares]
            for buf, o in zip(self.buffers, old):
                torch.index_select(o[: self.length], 1, rows, out=buf[: self.length])
            self.spares = [_with_rows(o, len(rows)) for o in old]
            for spare, buf in zip(self.spares, self.buffers):
                spare[: self.prompt] = buf[: self.prompt]
        self._views()

    def _views(self) -> None:
        self.keys, self.values = (buf[: self.length].permute(1, 2, 0, 3) for buf in self.buffers)


def _with_rows(buffer: torch.Tensor, rows: int) -> torch.Tensor:
    """The (positions x rows x ...) view of the first part of a contiguous buffer laid out for more rows."""
    return buffer.view(-1)[: buffer.shape[0] * rows * buffer[0, 0].numel()].view(
        buffer.shape[0], rows, *buffer.shape[2:]
    )


def decoding_model(model, precision: str):
    """The model to decode with: the model itself for fp32; for bf16/fp16 a copy whose floating-point parameters are
    in that precision (so that no matrix product casts fp32 weights, as autocast does at every call), its buffers
    (e.g. Llama's rotary frequencies) as they are. Shares nothing it modifies with the model."""
    if precision == "fp32":
        return model
    if precision not in HALF:
        raise ValueError(f"decode precision {precision!r}: expected fp32, bf16 or fp16")
    dtype = HALF[precision]
    if all(p.dtype == dtype for p in model.parameters() if p.is_floating_point()):
        return model  # already prepared (e.g. by the caller, once for many searches)
    memo = {
        id(p): nn.Parameter(p.detach().to(dtype), requires_grad=False)
        for p in model.parameters()
        if p.is_floating_point()
    }
    return copy.deepcopy(model, memo).eval()


@torch.no_grad()
def _beam_batch(model, prompts: torch.Tensor, s: BeamSettings, mask: torch.Tensor | None = None) -> list[list[int]]:
    """Beam search for B prompts (B x L tensor; left-padded when `mask`, the B x L attention mask, is given: then each
    row's positions start at its first real token); returns each input's best generated tokens.

    The batch shrinks as it goes: an input leaves (its rows dropped from the cache and every per-row tensor) as soon
    as early_stop's bound says no live beam of its own can beat its best candidate (the bound only falls and the
    best only rises, so that is final); `live` holds the inputs still searching, A = len(live)."""
    (B, L), K, T = prompts.shape, s.num_beams, s.max_new_tokens
    device = prompts.device  # every tensor follows the model's inputs (CUDA after training), never the default device
    cache = Cache(layer_class_to_replicate=partial(_BeamLayer, T))
    # the LM head on the last position only; as an index, not logits_to_keep=1: that slice is not contiguous, and
    # torch's matmul then multiplies it by B copies of the head's weight (seconds for a large vocabulary)
    last = torch.tensor([-1], device=device)
    if mask is None:
        out = model(
            input_ids=prompts,
            attention_mask=torch.ones_like(prompts),
            past_key_values=cache,
            use_cache=True,
            logits_to_keep=last,
        )
    else:
        out = model(
            input_ids=prompts,
            attention_mask=mask,
            position_ids=(mask.cumsum(-1) - 1).clamp(min=0),
            past_key_values=cache,
            use_cache=True,
            logits_to_keep=last,
        )
        next_pos = mask.sum(-1, keepdim=True).repeat_interleave(K, dim=0)  # the position of the first generated token
        mask = torch.cat([mask.repeat_interleave(K, dim=0), mask.new_ones(B * K, T)], dim=1)  # (B K) x (L + T)
    logits = out.logits[:, -1, :]
    cache.batch_repeat_interleave(K)
    # fp32 logits and probabilities in two buffers made once: a fresh tensor of this size each step costs as much
    # again (the allocator maps new pages and the kernel zeroes them)
    work = [torch.empty(B * K, logits.shape[-1], dtype=torch.float32, device=device) for _ in "lp"]
    eos = torch.tensor(s.eos_token_ids, device=device)
    live = torch.arange(B, device=device)
    beam_scores = torch.zeros(B, K, device=device)
    history = torch.zeros(B * K, 0, dtype=torch.long, device=device)
    best_score = torch.full((B,), -float("inf"), device=device)
    has_best = torch.zeros(B, dtype=torch.bool, device=device)
    best_seq = torch.zeros(B, T, dtype=torch.long, device=device)
    best_len = torch.zeros(B, dtype=torch.long, device=device)

    def add_candidates(cand: torch.Tensor, cur_len: int) -> None:
        """The beams marked in `cand` (A x K) become candidates, scored sum_logprob / cur_len ** length_penalty; per
        input the first of its best candidates replaces its best hypothesis if it has none yet or is strictly
        better (the order gpt2_beam.py takes them in); their beam scores become -inf."""
        nonlocal beam_scores
        score = torch.where(cand, beam_scores / cur_len**s.length_penalty, -float("inf"))
        top = score.max(dim=1).values
        first = (cand & (score == top.unsqueeze(1))).float().argmax(dim=1)
        update = cand.any(dim=1) & (~has_best[live] | (best_score[live] < top))
        best_score[live] = torch.where(update, top, best_score[live])
        has_best[live] |= cand.any(dim=1)
        rows = history[first + torch.arange(len(live), device=device) * K]
        best_seq[live, :cur_len] = torch.where(update.unsqueeze(1), rows, best_seq[live, :cur_len])
        best_len[live] = torch.where(update, cur_len, best_len[live])
        beam_scores = beam_scores.masked_fill(cand, -float("inf"))

    token_id = None  # the tokens the beams chose at the previous step: the next step's input
    for i in range(T):
        A = len(live)
        if i > 0:
            step = {} if mask is None else {"attention_mask": mask[:, : L + i], "position_ids": next_pos + (i - 1)}
            logits = model(input_ids=token_id, past_key_values=cache, use_cache=True, **step).logits[:, -1, :]
        logits = work[0][: len(logits)].copy_(logits)
        if i > 0:
            ban_repeated_ngrams(logits, history, s.no_repeat_ngram_size)
        # gpt2_beam.py: scores = beam score + log(softmax(logits)), top K over beams x vocabulary. log is monotone, so
        # an input's K best continuations are among its beams' K most probable tokens each: log and add on those only
        probs = torch.softmax(logits, dim=-1, out=work[1][: len(logits)])
        probs, tokens = top_k_per_row(probs, K)  # (A K) x K (step 0: B x K, one row per input)
        scores = torch.log(probs) if i == 0 else beam_scores.view(-1, 1) + torch.log(probs)
        beam_scores, pick = torch.topk(scores.view(A, -1), K, dim=1, largest=True, sorted=True)
        offset = torch.arange(A, device=device).unsqueeze(1) * K
        parent = pick // K if i > 0 else torch.zeros_like(pick)  # step 0: each input's one row (repeated K times)
        rows = (parent + offset).view(-1)
        token_id = tokens.view(A, -1).gather(1, pick).view(-1, 1)
        history = torch.cat([history[rows], token_id], dim=1)
        add_candidates(torch.isin(token_id.view(A, K), eos), i + 1)
        if i + 1 == T:
            add_candidates(torch.ones(A, K, dtype=torch.bool, device=device), T)  # every remaining beam
            break
        if s.early_stop:
            # the largest denominator any future candidate can have (lengths i+2 .. max_new_tokens)
            denom = max((i + 2) ** s.length_penalty, T**s.length_penalty)
            bound = beam_scores.max(dim=1).values / denom  # the same float32 op as a candidate's score
            done = has_best[live] & (best_score[live] >= bound)
            if bool(done.all()):
                break
            if bool(done.any()):  # these inputs leave the batch
                keep = (~done).repeat_interleave(K)
                live, beam_scores = live[~done], beam_scores[~done]
                rows, token_id, history = rows[keep], token_id[keep], history[keep]
                if mask is not None:
                    mask, next_pos = mask[keep], next_pos[keep]
        cache.reorder_cache(rows)
    return [seq[:n] for seq, n in zip(best_seq.tolist(), best_len.tolist())]


def batches(prompts: list[list[int]], s: BeamSettings, device):
    """(indices, B x L prompt tensor, B x L attention mask or None) per batch: prompts sorted by length and grouped
    by equal length (or, with `pad_batches`, into full batches, left-padded; the pad id is never looked at, being
    masked: any id in the vocabulary does)."""
    order = sorted(range(len(prompts)), key=lambda i: (len(prompts[i]), i))
    groups, cur = [], []
    for i in order:
        if cur and ((not s.pad_batches and len(prompts[cur[0]]) != len(prompts[i])) or len(cur) >= s.batch_size):
            groups.append(cur)
            cur = []
        cur.append(i)
    if cur:
        groups.append(cur)
    for group in groups:
        width = max(len(prompts[i]) for i in group)
        if all(len(prompts[i]) == width for i in group):
            yield group, torch.tensor([prompts[i] for i in group], dtype=torch.long, device=device), None
        else:
            pads = [width - len(prompts[i]) for i in group]
            yield (
                group,
                torch.tensor([[0] * p + prompts[i] for p, i in zip(pads, group)], dtype=torch.long, device=device),
                torch.tensor([[0] * p + [1] * (width - p) for p in pads], dtype=torch.long, device=device),
            )


def beam_search(
    model, prompts: list[list[int]], settings: BeamSettings | None = None, progress_every: int = 0
) -> list[list[int]]:
    """The generated token ids (end token included, as gpt2_beam.py writes them) for each prompt, in order; decoded by
    `model` itself in fp32, by a copy of it in settings.precision otherwise (pass decoding_model(model, precision) to
    make that copy once for several calls)."""
    s = settings or BeamSettings()
    model.eval()
    decoder = decoding_model(model, s.precision)
    results: dict[int, list[int]] = {}
    start, done = time.time(), 0
    for group, batch, mask in batches(prompts, s, next(model.parameters()).device):
        results.update(zip(group, _beam_batch(decoder, batch, s, mask)))
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
