"""Re-score committed generation records from the outputs written beside them, with the current scorer:

    python scripts/rescore.py results/webnlg_cpu/*/*/*/seed*.json --metrics TER_seen TER_unseen TER_all

For each record: its task's scorer (repro.tasks.scorers, as `python -m repro.score`) on the record's decode files
(hyp, ref, seen); the named metrics are replaced in `metrics` and nothing else is changed (the fingerprint, the config
and the other metrics stay); one entry is appended to the record's `rescored` list: which metrics, their previous
values, the code (git commit, dirty or not, versions: repro.records.provenance; pyter3's version) and the date. Metrics not named are
recomputed too and printed beside their recorded values, as a check, but not written.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import sys
import time
from pathlib import Path

from repro.records import provenance, write_json_atomic
from repro.score import score_files


def rescore(path: Path, metrics: list[str], code: dict) -> dict:
    record = json.loads(path.read_text())
    files = (record.get("decode") or {}).get("files") or {}
    if record.get("status") != "ok" or "hyp" not in files:
        raise SystemExit(f"{path}: not an ok generation record with decode files")
    fresh = score_files(record["task"], files["ref"], files["hyp"], files.get("seen"))
    missing = [m for m in metrics if m not in fresh or m not in record["metrics"]]
    if missing:
        raise SystemExit(f"{path}: no metric {missing} (recorded: {sorted(record['metrics'])})")
    for name, value in sorted(fresh.items()):
        old = record["metrics"].get(name)
        mark = "rescored" if name in metrics else ("same" if old is not None and abs(old - value) < 1e-9 else "check")
        print(f"{path}  {name:18s} recorded {old!s:22s} now {value!r:22s} {mark}")
    entry = {
        "metrics": metrics,
        "previous": {m: record["metrics"][m] for m in metrics},
        "code": code,
        "date": time.strftime("%Y-%m-%d", time.gmtime()),
    }
    record["metrics"].update({m: fresh[m] for m in metrics})
    record.setdefault("rescored", []).append(entry)
    write_json_atomic(path, record)
    return record


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("records", nargs="+", type=Path)
    ap.add_argument("--metrics", nargs="+", required=True, help="the metric keys to replace, e.g. TER_all")
    args = ap.parse_args(argv)
    code = {**provenance(), "pyter3": importlib.metadata.version("pyter3")}  # taken before scoring starts
    print(f"code: {code}", flush=True)
    for path in args.records:
        rescore(path, args.metrics, code)
    return 0


if __name__ == "__main__":
    sys.exit(main())
