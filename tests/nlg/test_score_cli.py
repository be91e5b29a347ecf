"""python -m repro.score: the E2E challenge's plain-text formats, JSON output, clear errors."""

from __future__ import annotations

import json
import subprocess
import sys

from repro.score import main, read_refs

REFS = "The Eagle is a cheap coffee shop .\nThe Eagle : cheap coffee shop .\n\nBlue Spice is a pub .\n\n"
HYPS = "The Eagle is a cheap coffee shop .\nBlue Spice is a pub .\n"


def test_read_refs_blocks_and_single_block(tmp_path):
    f = tmp_path / "r.txt"
    f.write_text(REFS)
    assert read_refs(str(f)) == [
        ["The Eagle is a cheap coffee shop .", "The Eagle : cheap coffee shop ."],
        ["Blue Spice is a pub ."],
    ]
    f.write_text("a\nb\n")  # no blank line: one reference per instance (measure_scores.py)
    assert read_refs(str(f)) == [["a"], ["b"]]


def test_cli_e2e_json(tmp_path):
    (tmp_path / "r.txt").write_text(REFS)
    (tmp_path / "h.txt").write_text(HYPS)
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "repro.score",
            "e2e",
            "--refs",
            str(tmp_path / "r.txt"),
            "--hyps",
            str(tmp_path / "h.txt"),
            "--format",
            "json",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    scores = json.loads(out.stdout.strip().splitlines()[-1])
    assert list(scores) == ["BLEU", "NIST", "METEOR", "ROUGE_L", "CIDEr"]
    assert 0.99 < scores["BLEU"] <= 1.0 and 0.9 < scores["ROUGE_L"] <= 1.0


def test_cli_errors(tmp_path, capsys):
    (tmp_path / "r.txt").write_text(REFS)
    (tmp_path / "h.txt").write_text(HYPS + "one too many\n")
    assert main(["e2e", "--refs", str(tmp_path / "r.txt"), "--hyps", str(tmp_path / "missing.txt")]) == 2
    assert capsys.readouterr().err == f"error: --hyps={tmp_path / 'missing.txt'}: no such file\n"
    assert main(["e2e", "--refs", str(tmp_path / "r.txt"), "--hyps", str(tmp_path / "h.txt")]) == 2
    assert "3 hypotheses" in capsys.readouterr().err


def test_cli_dart_text(tmp_path, capsys):
    (tmp_path / "r.txt").write_text("a b c d\n\ne f g h\n\n")
    (tmp_path / "h.txt").write_text("a b c d\ne f g h\n")
    assert main(["dart", "--refs", str(tmp_path / "r.txt"), "--hyps", str(tmp_path / "h.txt")]) == 0
    out = capsys.readouterr().out
    assert "BLEU: 1.0000" in out and "TER: 0.0000" in out
