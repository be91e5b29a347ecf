"""The LoRA factors committed beside the Section 7 cells' records, so that the report reruns from a clone: checked
against the records, then written.

    export REPRO_RESULTS_DIR=/tmp/s7                     # a scratch tree: the committed records stay as they are
    python -m repro.run +table=rank model=minilm method=lora variant=qv_r8 task=sst2 seed=0 threads=1
    ... the same for variant=qv_r64 and seed=1: the cells `python -m repro.analyze report` reads by default
    unset REPRO_RESULTS_DIR
    python scripts/section7_factors.py /tmp/s7 --check   # compare only
    python scripts/section7_factors.py /tmp/s7           # compare, then write results/rank/.../seed<k>.safetensors

A rerun's factors go beside a committed record only when the rerun's record has the committed one's fingerprint
and exactly its metrics: then they are the factors behind that record's scores. Any cell that differs is named and
nothing is written (exit 1). The records are never rewritten. The file holds the LoRA factors and the checkpoint's
metadata only (repro.analysis.factors.keep_factors: the analysis reads nothing else; the task head is left out).
"""

from __future__ import annotations

import argparse
import json
import sys

from repro import PROJECT_ROOT
from repro.analysis.factors import keep_factors
from repro.analysis.report import cell_weights


def cells(args) -> list[tuple[str, int]]:
    return [(f"{args.family}_r{r}", seed) for r in args.ranks for seed in args.seeds]


def differences(committed: dict, rerun: dict) -> list[str]:
    out = []
    for key in ("status", "fingerprint", "metrics"):
        if committed.get(key) != rerun.get(key):
            out.append(f"{key}: committed {committed.get(key)!r}, rerun {rerun.get(key)!r}")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("rerun_dir", help="the results tree the cells were rerun into (REPRO_RESULTS_DIR of the reruns)")
    ap.add_argument("--results-dir", default=str(PROJECT_ROOT / "results"), help="the committed records")
    ap.add_argument("--check", action="store_true", help="compare only; write nothing")
    ap.add_argument("--table", default="rank")
    ap.add_argument("--model", default="minilm")
    ap.add_argument("--task", default="sst2")
    ap.add_argument("--family", default="qv")
    ap.add_argument("--ranks", type=int, nargs="+", default=[8, 64])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    args = ap.parse_args(argv)

    plan, bad = [], []
    for variant, seed in cells(args):
        where = (args.table, args.model, variant, args.task, seed)
        committed_w, rerun_w = cell_weights(args.results_dir, *where), cell_weights(args.rerun_dir, *where)
        committed_rec, rerun_rec = committed_w.with_suffix(".json"), rerun_w.with_suffix(".json")
        missing = [p for p in (committed_rec, rerun_rec, rerun_w) if not p.exists()]
        if missing:
            bad.append(f"{committed_rec}: missing {', '.join(map(str, missing))}")
            continue
        diff = differences(json.loads(committed_rec.read_text()), json.loads(rerun_rec.read_text()))
        if diff:
            bad.append(f"{committed_rec}: " + "; ".join(diff))
            continue
        metrics = json.loads(rerun_rec.read_text())["metrics"]
        print(f"equal: {committed_rec} (fingerprint and metrics {json.dumps(metrics)})")
        plan.append((rerun_w, committed_w))
    for line in bad:
        print(f"differs: {line}", file=sys.stderr)
    if bad:
        print(
            f"error: {len(bad)} of {len(bad) + len(plan)} cells differ from their records; nothing written",
            file=sys.stderr,
        )
        return 1
    if not args.check:
        for src, dst in plan:
            keep_factors(src, dst)
            print(f"wrote {dst} ({dst.stat().st_size / 1e3:.0f} kB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
