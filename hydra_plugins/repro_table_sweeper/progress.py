"""The sweep's progress report: one line per finished cell, and a summary at the end.

    [3/25] glue_cpu/minilm/lora/rte/seed0: ok, accuracy 61.37, 52 s (sweep 2m40s, ETA 20m00s)
    ...
    table sweeper: 28 jobs in 24m10s: 3 done before (skipped), 24 ok, 1 failed
      failed: glue_cpu/minilm/ft/cola/seed1: Diverged: 10 consecutive optimizer steps with a non-finite loss

k counts the cells launched and finished so far; N is the number the sweep launches: its jobs, less those it leaves out
(done before, or not run: an init_from source not ok, a tuning candidate not chosen), so N can shrink as later waves
are checked. The ETA is the sweep's elapsed time per finished cell times the cells still to finish (cells launched
together, in a batch or a SLURM array, count at the rate they really finish). A cell's own time is its record's
wall_s (set-up, training and scoring).
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

from repro.results import score_text, short_reason


def duration(seconds: float) -> str:
    """12 s, 4m05s, 2h03m."""
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


class Progress:
    def __init__(self, jobs: int) -> None:
        self.jobs = jobs
        self.left_out: Counter = Counter()  # why -> jobs the sweep does not launch
        self.outcomes: Counter = Counter()  # status -> launched jobs that finished so
        self.failures: list[str] = []  # "<cell>: <reason>" of the launched jobs that did not end ok
        self.start = time.monotonic()

    @property
    def finished(self) -> int:
        return sum(self.outcomes.values())

    @property
    def to_launch(self) -> int:
        return self.jobs - sum(self.left_out.values())

    def leave_out(self, why: str, n: int = 1) -> None:
        """n jobs the sweep does not launch (done before, or not run), each for `why`."""
        if n:
            self.left_out[why] += n

    def cell_done(self, cell: str, status: str, record: dict | None, error: str | None = None) -> str:
        """Count one launched cell that finished, and its progress line. `status`: the job's return value (ok,
        failed, skipped, busy) or `error` (the job raised); `record`: the cell's record as written, if any."""
        self.outcomes[status] += 1
        what = [status]
        if status == "error" or (status == "failed" and record):
            reason = short_reason(error if status == "error" else record.get("error"))
            what = [f"{status} ({reason})"]
            self.failures.append(f"{cell}: {reason}")
        elif status == "busy":
            what = ["busy (another job holds its lock)"]
        if record and record.get("status") == "ok" and status in ("ok", "skipped"):
            what.append(score_text(record))
        if record and status in ("ok", "failed") and record.get("wall_s") is not None:
            what.append(duration(record["wall_s"]))
        elapsed = time.monotonic() - self.start
        left = max(self.to_launch - self.finished, 0)
        eta = f", ETA {duration(elapsed / self.finished * left)}" if left else ""
        return f"[{self.finished}/{self.to_launch}] {cell}: {', '.join(what)} (sweep {duration(elapsed)}{eta})"

    def summary(self) -> str:
        """The sweep's last lines: its jobs by outcome, its time, and each failure with its reason."""
        parts = [f"{n} {what}" for what, n in sorted((self.left_out + self.outcomes).items())]
        if not parts:
            return "table sweeper: nothing to launch"
        head = f"table sweeper: {self.jobs} jobs in {duration(time.monotonic() - self.start)}: {', '.join(parts)}"
        return "\n".join([head, *(f"  not ok: {f}" for f in self.failures)])


def cell_label(record_path: Path | None, results_dir: str | None, job: list[str]) -> str:
    """A cell as its record's path under the results folder, without .json (glue_cpu/minilm/lora/rte/seed0); a job
    that does not resolve, as its overrides."""
    if record_path is None:
        return " ".join(job)
    try:
        return str(Path(record_path).relative_to(results_dir).with_suffix(""))
    except ValueError:
        return str(Path(record_path).with_suffix(""))
