"""Today's beam search as it was before issue 27 (repro/decode.py up to commit 3598f84), kept verbatim as the anchor
the fast decoder is measured against (`python -m repro.bench decode`) and tested against (tests/nlg/test_decode.py):
transformers' DynamicCache (grown by torch.cat, reordered by index_select every step), the LM head on every prompt
position, the no-repeat ban and the candidates row by row in Python. Same semantics as repro.decode (gpt2_beam.py,
see its docstring); not used by the runner. It decodes the model as given (BeamSettings.precision is not looked at:
today's bf16 decoding is this under torch.autocast).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from repro.decode import BeamSettings, batches


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
        out.append(seen.get(tuple(tokens[cur_len + 1 - n : cur_len]), []))
    return out


@torch.no_grad()
def reference_beam_batch(
    model, prompts: torch.Tensor, s: BeamSettings, mask: torch.Tensor | None = None
) -> list[list[int]]:
    """Beam search for B prompts (B x L tensor; left-padded when `mask`, the B x L attention mask, is given: then each
    row's positions start at its first real token); returns each input's best generated tokens."""
    B, K = prompts.shape[0], s.num_beams
    eos = set(s.eos_token_ids)
    if mask is None:
        out = model(input_ids=prompts, attention_mask=torch.ones_like(prompts), use_cache=True)
    else:
        out = model(
            input_ids=prompts, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0), use_cache=True
        )
        mask = mask.repeat_interleave(K, dim=0)  # (B K) x L, each input's mask for its K beams
        next_pos = mask.sum(-1, keepdim=True)  # the position of the first generated token
    past = out.past_key_values
    logits = out.logits[:, -1, :].float()
    past.batch_repeat_interleave(K)
    vocab = logits.shape[-1]
    device = logits.device  # every tensor follows the model's outputs (CUDA after training), never the default device
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
            score = (flat[row] / cur_len**s.length_penalty).item()
            b = row // K
            if b not in best_score or best_score[b] < score:
                best_score[b] = score
                best_seq[b] = history[row].tolist()
            flat[row] = -float("inf")

    token_id = None  # the tokens the beams chose at the previous step: the next step's input
    for i in range(s.max_new_tokens):
        if i > 0 and mask is not None:  # beams are reordered within an input: its mask and positions stay valid
            mask = torch.cat([mask, mask.new_ones(B * K, 1)], dim=1)
            out = model(
                input_ids=token_id,
                attention_mask=mask,
                position_ids=next_pos + (i - 1),
                past_key_values=past,
                use_cache=True,
            )
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
            next_scores = logprob  # B x V (one distinct beam per input)
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
            denom = max((i + 2) ** s.length_penalty, s.max_new_tokens**s.length_penalty)
            bound = (beam_scores.max(dim=1).values / denom).tolist()  # the same float32 op as a candidate's score
            if all(best_score[b] >= bound[b] for b in range(B)):
                break
    else:
        add_candidates(only_eos=False)
    return [best_seq[b] for b in range(B)]


def reference_beam_search(model, prompts: list[list[int]], settings: BeamSettings | None = None) -> list[list[int]]:
    """repro.decode.beam_search with today's batch decoder (same grouping and padding)."""
    s = settings or BeamSettings()
    model.eval()
    results: dict[int, list[int]] = {}
    for group, batch, mask in batches(prompts, s, next(model.parameters()).device):
        results.update(zip(group, reference_beam_batch(model, batch, s, mask)))
    return [results[i] for i in range(len(prompts))]
