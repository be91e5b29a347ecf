"""WebNLG and DART metrics as WebNLG/GenerationEval `eval.py -nr 6 -m bleu,meteor,ter` computes them (the command in
microsoft/LoRA's README for Tables 13 and 14), on the files gpt2_decode.py writes with `--tokenize --lower`.

GenerationEval, step by step, and what stands for each step here:
- references: `-nr 6` files; gpt2_decode.py keeps the first 6 references of an input and pads with the first one
  (`references_for_eval`). Duplicates change none of the three metrics.
- BLEU: Moses `multi-bleu-detok.perl` on the files = mteval-v13a tokenization, case-sensitive, no smoothing,
  closest reference length: sacrebleu.corpus_bleu(tokenize='13a', smooth_method='none') (reported as a fraction
  here; multi-bleu prints x100).
- METEOR: the METEOR 1.5 jar (`-l en -norm -r 6`) on nltk.word_tokenize'd text: pycocoevalcap's Meteor (same jar,
  same flags, corpus score from its EVAL line). nltk's punkt model is not available offline, so word_tokenize is
  NLTKWordTokenizer over the whole line (the same tokens on text already split on \\W by gpt2_decode --tokenize).
- TER: eval.py's ter_score on the nltk-tokenized text (`references_tok`, `hypothesis_tok`): the mean over segments of
  the lowest pyter.ter(hyp.split(), ref.split()) over the references, an empty reference scoring 1. pyter (PyPI
  `pyter3==0.3`, the version GenerationEval's requirements.txt pins) is called as the script calls it: its greedy
  block shifts, edits / reference length, case-sensitive, no normalization. sacrebleu's TER (tercom's shift search)
  is another edit path: on our committed WebNLG outputs it is 0.8-1.5 points lower; its corpus aggregate (total
  edits / total reference length) is reported as TER_corpus, for comparison only.
- Known quirk not reproduced: eval.py reads files with .split('\\n'), so the trailing newline adds one empty
  segment (TER 1 for it) to every average; its effect is < 1/N.
"""

from __future__ import annotations

import functools
import re

import pyter

SEEN_CATEGORIES_2017 = (  # microsoft/LoRA examples/NLG/src/format_converting_webnlg.py `seen` (10 categories)
    "Airport",
    "Astronaut",
    "Building",
    "City",
    "ComicsCharacter",
    "Food",
    "Monument",
    "SportsTeam",
    "University",
    "WrittenWork",
)
NUM_REFS = 6  # gpt2_decode.py --ref_num 6


def standard_tokenize(sent: str) -> str:
    """gpt2_decode.py's stardard_tokenize: split around every non-word character, collapse whitespace."""
    return " ".join(" ".join(re.split(r"(\W)", sent)).split())


def decode_postprocess(sent: str, tokenize: bool, lower: bool) -> str:
    """gpt2_decode.py post_process: lowercase first, then tokenize."""
    if lower:
        sent = sent.lower()
    if tokenize:
        sent = standard_tokenize(sent)
    return sent


def references_for_eval(refs: list[str], num_refs: int = NUM_REFS) -> list[str]:
    """The first num_refs references, padded with the first (gpt2_decode.py's reference files)."""
    if not refs:
        raise ValueError("every input needs at least one reference")
    return [refs[i] if i < len(refs) else refs[0] for i in range(num_refs)]


def word_tokenize(text: str) -> str:
    from nltk.tokenize import NLTKWordTokenizer

    return " ".join(NLTKWordTokenizer().tokenize(text))


def _check(hyps, refs):
    if len(hyps) != len(refs):
        raise ValueError(f"{len(hyps)} hypotheses but {len(refs)} reference groups: they must correspond one to one")


def bleu(hyps: list[str], refs: list[list[str]]) -> float:
    """multi-bleu-detok.perl's corpus BLEU, as a fraction."""
    import sacrebleu

    _check(hyps, refs)
    if not hyps:
        return 0.0
    padded = [references_for_eval(r, max(len(r) for r in refs)) for r in refs]
    streams = [list(s) for s in zip(*padded)]
    return sacrebleu.corpus_bleu(hyps, streams, tokenize="13a", smooth_method="none").score / 100.0


def ter(hyps: list[str], refs: list[list[str]]) -> float:
    """GenerationEval's TER (eval.py ter_score): nltk-tokenized text, per segment the lowest pyter TER over the
    references (an empty reference scores 1), the mean over segments."""
    _check(hyps, refs)
    scores = [_best_ter(hyp, tuple(rs)) for hyp, rs in zip(hyps, refs)]
    return sum(scores) / len(scores) if scores else 0.0


@functools.lru_cache(maxsize=8192)  # webnlg_scores scores every segment twice (its split, then all): pyter is slow
def _best_ter(hyp: str, refs: tuple[str, ...]) -> float:
    h = word_tokenize(hyp).split()
    return min(_segment_ter(h, word_tokenize(r).split()) for r in refs)


def _segment_ter(hyp: list[str], ref: list[str]) -> float:
    return pyter.ter(hyp, ref) if ref else 1.0  # eval.py: an empty reference scores 1 (pyter would divide by 0)


def ter_corpus(hyps: list[str], refs: list[list[str]]) -> float:
    from sacrebleu.metrics import TER

    padded = [references_for_eval(r, max(len(r) for r in refs)) for r in refs]
    return TER(case_sensitive=True).corpus_score(hyps, [list(s) for s in zip(*padded)]).score / 100.0


def meteor(hyps: list[str], refs: list[list[str]]) -> float:
    from repro.metrics.e2e import meteor as meteor_jar

    _check(hyps, refs)
    gts = {str(i): [word_tokenize(r) for r in rs] for i, rs in enumerate(refs)}
    res = {str(i): [word_tokenize(h)] for i, h in enumerate(hyps)}
    return meteor_jar(gts, res)


def gem_scores(
    hyps: list[str], refs: list[list[str]], num_refs: int = NUM_REFS, with_meteor: bool = True
) -> dict[str, float]:
    """BLEU, METEOR, TER (+ TER_corpus) on hypotheses/references already post-processed like gpt2_decode.py."""
    _check(hyps, refs)
    refs = [references_for_eval(r, num_refs) for r in refs]
    out = {"BLEU": bleu(hyps, refs)}
    if with_meteor:
        out["METEOR"] = meteor(hyps, refs)
    out["TER"] = ter(hyps, refs)
    out["TER_corpus"] = ter_corpus(hyps, refs)
    return out


def webnlg_scores(
    hyps: list[str], refs: list[list[str]], seen: list[bool], with_meteor: bool = True
) -> dict[str, float]:
    """Table 14: each metric on the seen (S), unseen (U) and all (A) test inputs, keys like BLEU_seen."""
    if len(seen) != len(hyps):
        raise ValueError(f"{len(seen)} seen flags for {len(hyps)} hypotheses")
    out = {}
    for name, keep in (("seen", lambda s: s), ("unseen", lambda s: not s), ("all", lambda s: True)):
        idx = [i for i, s in enumerate(seen) if keep(s)]
        if not idx:
            continue
        scores = gem_scores([hyps[i] for i in idx], [refs[i] for i in idx], with_meteor=with_meteor)
        out.update({f"{k}_{name}": v for k, v in scores.items()})
    return out
