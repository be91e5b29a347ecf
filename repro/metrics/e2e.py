"""The E2E NLG Challenge metrics as tuetschek/e2e-metrics `measure_scores.py -p` computes them (the command
microsoft/LoRA's README runs for Table 3): BLEU and NIST from its Python port of mteval-v13a (`metrics/pymteval.py`),
METEOR, ROUGE-L and CIDEr(-D) from the MS-COCO caption evaluation code (pycocoevalcap: Stanford PTBTokenizer, then
the METEOR 1.5 jar, `Rouge`, `Cider`), with the references grouped per MR.

Scales are the script's: BLEU, METEOR and ROUGE-L are fractions in [0, 1] (the paper prints them x100), NIST and
CIDEr as they come.

What is written here and what comes from a library:
- BLEU and NIST are re-implemented from pymteval's definitions: mteval-v13a tokenization, case-insensitive n-grams
  (`case_sensitive=False`), per-segment clipping against the max count over the references, the closest reference
  length (ties: the shorter) for BLEU's brevity penalty; NIST information weights from the n-gram counts of all
  references (0-grams = total reference words), average reference length in the NIST length penalty. One quirk is
  kept on purpose because the official numbers include it: pymteval adds `len(hyp) - (n - 1)` to the n-gram
  count even when negative, so a hypothesis shorter than n tokens *reduces* the n-gram denominator (mteval-v13a.pl
  and sacrebleu count max(0, ...)). For hypotheses of >= 4 tokens BLEU equals sacrebleu's corpus BLEU with
  tokenize='13a', lowercase=True, smooth_method='none' (tested); on single-reference data NIST equals nltk's
  corpus_nist on the same tokens (tested; nltk picks the best single reference, so it differs with several).
- METEOR, ROUGE-L, CIDEr: pycocoevalcap's own classes (what e2e-metrics bundles). rouge-score's `rougeL` is a
  different definition (no PTB tokenization/punctuation removal, F1 rather than coco's F-beta with beta=1.2, and
  max over references of F rather than coco's max-precision/max-recall combination), so it is not used.
"""

from __future__ import annotations

import math
import re
import shutil
from collections import Counter, defaultdict

METRIC_NAMES = ("BLEU", "NIST", "METEOR", "ROUGE_L", "CIDEr")


# ------------------------------------------------------------------ tokenization (mteval-v13a, as pymteval)


def mteval_tokenize(sent: str) -> list[str]:
    """mteval-v13a's basic tokenization (language-independent part + Western punctuation rules)."""
    sent = re.sub(r"<skipped>", "", sent)
    sent = re.sub(r"-\n", "", sent)
    sent = re.sub(r"\n", " ", sent)
    sent = sent.replace("&quot;", '"').replace("&amp;", "&").replace("&lt;", "<").replace("&gt;", ">")
    sent = f" {sent} "
    sent = re.sub(r"([\{-\~\[-\` -\&\(-\+\:-\@\/])", r" \1 ", sent)
    sent = re.sub(r"([^0-9])([\.,])", r"\1 \2 ", sent)
    sent = re.sub(r"([\.,])([^0-9])", r" \1 \2", sent)
    sent = re.sub(r"([0-9])(-)", r"\1 \2 ", sent)
    sent = re.sub(r"\s+", " ", sent).strip()
    return sent.split(" ")  # an empty sentence gives [""]: one empty token, as in pymteval


def _ngrams(tokens: list[str], n: int) -> list[tuple[str, ...]]:
    return list(zip(*[tokens[i:] for i in range(n)]))


def _counts(tokens: list[str], n: int) -> Counter:
    return Counter(_ngrams(tokens, n))


def _merged_max(refs: list[list[str]], n: int) -> dict:
    merged: dict = {}
    for ref in refs:
        for g, c in _counts(ref, n).items():
            merged[g] = max(merged.get(g, 0), c)
    return merged


def _prepare(hyp, refs, case_sensitive: bool):
    hyp_t = hyp if isinstance(hyp, list) else mteval_tokenize(hyp)
    refs_t = [r if isinstance(r, list) else mteval_tokenize(r) for r in refs]
    if not case_sensitive:
        hyp_t = [t.lower() for t in hyp_t]
        refs_t = [[t.lower() for t in r] for r in refs_t]
    return hyp_t, refs_t


def _check(hyps, refs):
    if len(hyps) != len(refs):
        raise ValueError(f"{len(hyps)} hypotheses but {len(refs)} reference groups: they must correspond one to one")
    if any(len(r) == 0 for r in refs):
        raise ValueError("every hypothesis needs at least one reference")


# ------------------------------------------------------------------ BLEU (pymteval.BLEUScore)

TINY, SMALL = 1e-15, 1e-9


def bleu(hyps: list, refs: list[list], max_ngram: int = 4, case_sensitive: bool = False) -> float:
    """Corpus BLEU in [0, 1], as pymteval.BLEUScore (no smoothing beyond 1e-15 to stay defined)."""
    _check(hyps, refs)
    hits, cand_lens, ref_len = [0] * max_ngram, [0] * max_ngram, 0
    for hyp, rs in zip(hyps, refs):
        h, rs = _prepare(hyp, rs, case_sensitive)
        for i in range(max_ngram):
            merged = _merged_max(rs, i + 1)
            hits[i] += sum(min(merged.get(g, 0), c) for g, c in _counts(h, i + 1).items())
            cand_lens[i] += len(h) - i  # pymteval: may be negative for a short hypothesis (kept)
        ref_len += len(min(rs, key=lambda r: (abs(len(r) - len(h)), len(r))))
    bp = 1.0
    if cand_lens[0] <= ref_len:
        bp = math.exp(1.0 - ref_len / (float(cand_lens[0]) if cand_lens[0] else 1e-5))
    log_sum = sum(math.log(max(n_hits, TINY) / max(n_len, SMALL)) for n_hits, n_len in zip(hits, cand_lens))
    return bp * math.exp(log_sum / max_ngram)


# ------------------------------------------------------------------ NIST (pymteval.NISTScore)

NIST_BETA = -math.log(0.5) / math.log(1.5) ** 2  # mteval-v13a.pl


def nist(hyps: list, refs: list[list], max_ngram: int = 5, case_sensitive: bool = False) -> float:
    """Corpus NIST as pymteval.NISTScore: sum over n of (information of the matched n-grams / hypothesis n-grams),
    times exp(-beta * log(min(1, sys_len / avg_ref_len))^2)."""
    _check(hyps, refs)
    ref_ngrams = [defaultdict(int) for _ in range(max_ngram + 1)]
    hit_ngrams = [[] for _ in range(max_ngram)]
    cand_lens = [0] * max_ngram
    avg_ref_len = 0.0
    for hyp, rs in zip(hyps, refs):
        h, rs = _prepare(hyp, rs, case_sensitive)
        for n in range(max_ngram):
            cand_lens[n] += len(h) - n  # as pymteval (may be negative)
            merged = _merged_max(rs, n + 1)
            hit_ngrams[n].append(
                {g: min(c, merged.get(g, 0)) for g, c in _counts(h, n + 1).items() if merged.get(g, 0)}
            )
            for r in rs:
                for g in _ngrams(r, n + 1):
                    ref_ngrams[n + 1][g] += 1
        total = sum(len(r) for r in rs)
        ref_ngrams[0][()] += total
        avg_ref_len += total / float(len(rs))

    def info(g):
        if g not in ref_ngrams[len(g)]:
            return 0.0
        return math.log(ref_ngrams[len(g) - 1][g[:-1]] / float(ref_ngrams[len(g)][g]), 2)

    score = 0.0
    for n in range(max_ngram):
        hit_info = sum(info(g) * c for hits in hit_ngrams[n] for g, c in hits.items())
        score += hit_info / (cand_lens[n] if cand_lens[n] != 0 else 1)
    ratio = cand_lens[0] / float(avg_ref_len) if avg_ref_len else 0.0
    penalty = 1.0 if ratio >= 1 else 0.0 if ratio <= 0 else math.exp(-NIST_BETA * math.log(ratio) ** 2)
    return penalty * score


# ------------------------------------------------------------------ MS-COCO metrics (pycocoevalcap)


def require_java() -> None:
    if shutil.which("java") is None:
        raise RuntimeError(
            "METEOR (meteor-1.5.jar) and the PTB tokenizer need Java (1.8+) on PATH: e.g. "
            "`apt-get install default-jre-headless`. The official scripts fail silently to -1 without it "
            "(microsoft/LoRA #138); this suite refuses instead."
        )


def ptb_tokenize(groups: dict[str, list[str]]) -> dict[str, list[str]]:
    """pycocoevalcap's PTBTokenizer (Stanford CoreNLP 3.4.1 jar, lowercased, punctuation removed)."""
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    require_java()
    return PTBTokenizer().tokenize({k: [{"caption": c} for c in v] for k, v in groups.items()})


def meteor(gts: dict[str, list[str]], res: dict[str, list[str]]) -> float:
    """METEOR 1.5 (`-l en -norm`), corpus score from the jar's EVAL line."""
    from pycocoevalcap.meteor.meteor import Meteor

    require_java()
    scorer = Meteor()
    try:
        score, _ = scorer.compute_score(gts, res)
    finally:
        scorer.meteor_p.stdin.close()
        scorer.meteor_p.kill()
        scorer.meteor_p.wait()
        scorer.meteor_p.stdout.close()
        scorer.meteor_p.stderr.close()
        scorer.lock = _NoLock()  # its __del__ would close the pipe again
    return float(score)


class _NoLock:
    def acquire(self):
        pass

    def release(self):
        pass


def coco_scores(hyps: list[str], refs: list[list[str]]) -> dict[str, float]:
    """METEOR, ROUGE_L, CIDEr as e2e-metrics' run_coco_eval computes them (COCOEvalCap minus BLEU/SPICE)."""
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    _check(hyps, refs)
    gts = ptb_tokenize({f"inst-{i}": list(r) for i, r in enumerate(refs)})
    res = ptb_tokenize({f"inst-{i}": [h] for i, h in enumerate(hyps)})
    out = {"METEOR": meteor(gts, res)}
    out["ROUGE_L"] = float(Rouge().compute_score(gts, res)[0])
    out["CIDEr"] = float(Cider().compute_score(gts, res)[0])
    return out


def e2e_scores(hyps: list[str], refs: list[list[str]]) -> dict[str, float]:
    """The five Table 3 metrics: {"BLEU", "NIST", "METEOR", "ROUGE_L", "CIDEr"}."""
    _check(hyps, refs)
    out = {"BLEU": bleu(hyps, refs), "NIST": nist(hyps, refs)}
    out.update(coco_scores(hyps, refs))
    return {k: out[k] for k in METRIC_NAMES}
