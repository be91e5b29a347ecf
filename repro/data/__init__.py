"""Raw files or the hub -> tokenized datasets. One loader serves both, so preprocessing is the same either way."""

from __future__ import annotations

from pathlib import Path

from repro.errors import DataFileInvalid


def read_text(path: Path, expected: str, encoding: str = "utf-8") -> str:
    """A local data file's text, decoded strictly; undecodable bytes and an empty file are DataFileInvalid naming
    the file, the line and `expected` (what the file should hold)."""
    raw = Path(path).read_bytes()
    try:
        text = raw.decode(encoding)
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise DataFileInvalid(
            path,
            line,
            f"bytes that are not UTF-8 ({raw[exc.start : exc.end]!r} at byte {exc.start})",
            f"UTF-8 text: {expected}",
        ) from None
    if not text.strip():
        raise DataFileInvalid(path, 1, "the file is empty", expected)
    return text
