"""Byte-identity check for refactors: every output a user reads, from the committed records, before and after.

    python scripts/check_identity.py snapshot DIR          # write every output of this checkout under DIR
    python scripts/check_identity.py compare BEFORE AFTER  # exit 1, naming each file that differs

A snapshot holds, computed from the committed records under results/ (read-only; outputs go to DIR):
  tables/<t>.{md,csv,tex}     `python -m repro.tables <t>` for every conf/table/*.yaml
  claims.{md,json}            `python -m repro.claims`
  analysis/ablation_*.{md,json}  `python -m repro.analyze ablation rank|which_weights`
  plan/<t>.txt                `python -m repro.plan +table=<t>` (the grid, costs and run/skip per cell: the skip
                              status is the fingerprint check against each committed record)
  params.txt, params_variants.txt   `python -m repro.params [--variants]`
  fingerprints.json           per committed record: its fingerprint as recorded, and as recomputed now by
                              re-resolving the cell from its own command line (table, groups, overrides)
Run `snapshot` on the commit before a refactor (e.g. in `git worktree add`) and on the final commit, then
`compare`. Only entry points (python -m ...) and, for fingerprints, `repro.cell.resolve_cell` +
`repro.records.fingerprint` are used, so the script runs unchanged on both sides.
"""

from __future__ import annotations

import filecmp
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run(args: list[str], out: Path | None = None) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled"}
    env.pop("REPRO_RESULTS_DIR", None)
    proc = subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(proc.stdout + (f"\n[exit {proc.returncode}]\n" if proc.returncode else ""))
    elif proc.returncode:
        raise SystemExit(f"{' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-2000:]}")


def fingerprints() -> dict:
    """{record path: [recorded fingerprint, recomputed fingerprint]} for every committed record."""
    from hydra import compose, initialize_config_dir

    sys.path.insert(0, str(ROOT))
    from repro.cell import resolve_cell
    from repro.records import fingerprint

    out = {}
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        for path in sorted((ROOT / "results").rglob("seed*.json")):
            rec = json.loads(path.read_text())
            overrides = list((rec.get("config") or {}).get("cli_overrides") or [])
            try:
                cfg = compose(config_name="config", overrides=overrides)
                now = fingerprint(resolve_cell(cfg, overrides))
            except Exception as exc:  # noqa: BLE001 - recorded as the outcome, compared like any value
                now = f"{type(exc).__name__}: {exc}"
            out[str(path.relative_to(ROOT))] = [rec.get("fingerprint"), now]
    return out


def snapshot(dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    tables = sorted(p.stem for p in (ROOT / "conf" / "table").glob("*.yaml"))
    for t in tables:
        run(
            ["-m", "repro.tables", t, "--results-dir", "results", "--out-dir", str(dest / "tables")],
            dest / "tables" / f"{t}.stdout",
        )
        run(["-m", "repro.plan", f"+table={t}"], dest / "plan" / f"{t}.txt")
    run(["-m", "repro.claims", "--results-dir", "results", "--out-dir", str(dest)], dest / "claims.stdout")
    for t in ("rank", "which_weights"):
        run(["-m", "repro.analyze", "ablation", t, "--results-dir", "results", "--out-dir", str(dest / "analysis")])
    run(["-m", "repro.params"], dest / "params.txt")
    run(["-m", "repro.params", "--variants"], dest / "params_variants.txt")
    (dest / "fingerprints.json").write_text(json.dumps(fingerprints(), indent=1, sort_keys=True) + "\n")
    # the claims' stdout names the output path (the snapshot folder): not an output of the code under test
    stdout = dest / "claims.stdout"
    stdout.write_text("".join(line for line in stdout.read_text().splitlines(True) if not line.startswith("wrote ")))
    print(f"snapshot: {sum(1 for p in dest.rglob('*') if p.is_file())} files under {dest}")


def compare(a: Path, b: Path) -> int:
    fa = {p.relative_to(a) for p in a.rglob("*") if p.is_file()}
    fb = {p.relative_to(b) for p in b.rglob("*") if p.is_file()}
    bad = [f"only in {a}: {p}" for p in sorted(fa - fb)] + [f"only in {b}: {p}" for p in sorted(fb - fa)]
    bad += [f"differs: {p}" for p in sorted(fa & fb) if not filecmp.cmp(a / p, b / p, shallow=False)]
    fp = json.loads((b / "fingerprints.json").read_text()) if (b / "fingerprints.json").exists() else {}
    bad += [
        f"fingerprint: {k} recorded {v[0]}, now {v[1]}"
        for k, v in sorted(fp.items())
        if v[0] != v[1] and f"fingerprint: {k}" not in _stale_before(a)
    ]
    for line in bad:
        print(line)
    print(f"compare: {len(fa & fb)} files in both, {len(bad)} differences")
    return 1 if bad else 0


def _stale_before(a: Path) -> set[str]:
    """Records whose fingerprint already did not recompute before the change (not the change's doing)."""
    fp = json.loads((a / "fingerprints.json").read_text()) if (a / "fingerprints.json").exists() else {}
    return {f"fingerprint: {k}" for k, v in fp.items() if v[0] != v[1]}


def main(argv: list[str]) -> int:
    if len(argv) == 2 and argv[0] == "snapshot":
        snapshot(Path(argv[1]).resolve())
        return 0
    if len(argv) == 3 and argv[0] == "compare":
        return compare(Path(argv[1]), Path(argv[2]))
    print("usage: check_identity.py snapshot DIR | compare BEFORE AFTER", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
