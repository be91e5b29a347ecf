"""Score generated text with the official metrics, outside any training run.

    python -m repro.score e2e --refs e2e_ref.txt --hyps e2e_pred.txt [--format json]     (console script: repro-score)
    python -m repro.score webnlg --refs ref.txt --hyps hyp.txt --seen seen.txt
    python -m repro.score dart --refs ref.txt --hyps hyp.txt

Input formats are the E2E challenge's plain text (what gpt2_decode.py and repro.tasks.generation write): the
references of one instance on consecutive lines, instances separated by a blank line; one hypothesis per line, in the
same order. A file with a single block is read as one reference per instance (as measure_scores.py does). For
WebNLG, --seen is a file of 1/0 per instance (seen category or not); without it only the `all` scores are printed.
WebNLG/DART text is scored as given: apply gpt2_decode.py's --tokenize --lower first (repro.tasks.generation does).
Each task's scorer is the runner's (repro.tasks.scorers).

Scales: E2E as measure_scores.py prints them (BLEU, METEOR, ROUGE_L in [0, 1]; NIST, CIDEr as they come);
WebNLG/DART BLEU, METEOR, TER as fractions (the paper prints BLEU x100).
"""

from __future__ import annotations

import json
import sys

from repro.cli import command, parser
from repro.errors import ReproError
from repro.paths import read_text
from repro.tasks.scorers import SCORERS, score


class ScoreInputError(ReproError):
    pass


def read_hyps(path: str, what: str = "--hyps") -> list[str]:
    return [line.strip() for line in read_text(path, what).splitlines()]


def read_refs(path: str) -> list[list[str]]:
    """measure_scores.read_lines(multi_ref=True): blocks separated by blank lines."""
    buf: list[list[str]] = [[]]
    for line in read_text(path, "--refs").splitlines():
        line = line.strip()
        if not line:
            buf.append([])
        else:
            buf[-1].append(line)
    while buf and not buf[-1]:
        buf.pop()
    if len(buf) == 1:  # a single block: one reference per instance
        buf = [[r] for r in buf[0]]
    if any(not b for b in buf):
        raise ScoreInputError(f"{path}: an instance has no reference (two blank lines in a row?)")
    return buf


def score_files(task: str, refs_path: str, hyps_path: str, seen_path: str | None = None) -> dict[str, float]:
    refs, hyps = read_refs(refs_path), read_hyps(hyps_path)
    if len(refs) != len(hyps):
        raise ScoreInputError(
            f"{len(hyps)} hypotheses in {hyps_path} but {len(refs)} reference instances in {refs_path}: "
            "each hypothesis line needs one block of references (blocks end with a blank line)"
        )
    seen = None
    if seen_path and SCORERS[task].by_seen is not None:
        flags = read_hyps(seen_path, "--seen")
        if len(flags) != len(hyps) or any(f not in ("0", "1") for f in flags):
            raise ScoreInputError(f"{seen_path}: need one 0/1 line per hypothesis ({len(hyps)})")
        seen = [f == "1" for f in flags]
    return score(task, hyps, refs, seen)


@command
def main(argv: list[str] | None = None) -> int:
    ap = parser("score", __doc__)
    ap.add_argument("task", choices=list(SCORERS))
    ap.add_argument("--refs", required=True, help="references: one block per instance, blank line between blocks")
    ap.add_argument("--hyps", required=True, help="hypotheses: one per line")
    ap.add_argument("--seen", default=None, help="webnlg only: 1/0 per instance (seen category)")
    ap.add_argument("--format", choices=["text", "json"], default="text")
    args = ap.parse_args(argv)
    try:
        scores = score_files(args.task, args.refs, args.hyps, args.seen)
    except RuntimeError as exc:  # a metric's external tool (METEOR's Java) that cannot run
        raise ScoreInputError(str(exc)) from exc
    if args.format == "json":
        print(json.dumps(scores))
    else:
        print("SCORES:\n==============")
        for k, v in scores.items():
            print(f"{k}: {v:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
